"""Region proposals precomputed per image: FH and grid masks, ground-truth masks, MCG import, selective-search boxes.

Each module exposes pure per-image functions; `runner` runs them over a data set into a region store.
"""
