"""Analyses of what features encode: coupling, positional bias, O-KNN, crop IoU, ABO (D3SSL §3, §5.3)."""
