"""Data: readers, subsets, the region store, synthetic scenes, view transforms."""
