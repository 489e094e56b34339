"""Probes of frozen features: feature extraction and its cache, linear, kNN, segment retrieval."""
