"""n×n grid masks (DetCon, METHODS.md §3: 1×1 = SimCLR/BYOL, 5×5 the best grid)."""

from __future__ import annotations

import numpy as np

from sslcli.data.readers.sources import ImageSource
from sslcli.data.stores.store import ImageResult


def grid_label_map(height: int, width: int, n: int) -> np.ndarray:
    """(H, W) int32: pixel (y, x) lies in cell (floor(y·n/H), floor(x·n/W)), cell (r, c) labelled r·n + c."""
    rows = (np.arange(height) * n) // height
    cols = (np.arange(width) * n) // width
    return (rows[:, None] * n + cols[None, :]).astype(np.int32)


def compute_grid(source: ImageSource, index: int, n: int) -> ImageResult:
    # Decode anyway: a grid store must not list images that cannot be read in training.
    image = source.load(index)
    h, w = image.shape[:2]
    return ImageResult(str(source.records[index].image_id), masks=grid_label_map(h, w, n)[None], image_size=(h, w))
