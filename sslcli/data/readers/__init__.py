"""Readers: images and their sources, COCO/OpenImages annotations, pretraining subsets, annotated objects."""
