"""Felzenszwalb–Huttenlocher label maps, one per scale (DetCon, METHODS.md §3: sigma 0.8, min_size = scale)."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import felzenszwalb

from sslcli.data.readers.sources import ImageSource
from sslcli.data.stores.store import ImageResult

DEFAULT_SIGMA = 0.8


def fh_label_maps(image: np.ndarray, scales: list[int] | tuple[int, ...], sigma: float = DEFAULT_SIGMA,
                  min_sizes: list[int] | None = None) -> np.ndarray:
    """(S, H, W) int32 FH label maps of an (H, W, 3) uint8 image, one per scale; min size = scale unless given.

    Exactly ``skimage.segmentation.felzenszwalb(image, scale=s, sigma=sigma, min_size=c)`` per scale.
    """
    min_sizes = list(scales) if min_sizes is None else min_sizes
    maps = [felzenszwalb(image, scale=float(s), sigma=sigma, min_size=int(c)) for s, c in zip(scales, min_sizes)]
    return np.stack(maps).astype(np.int32)


def compute_fh(source: ImageSource, index: int, scales: tuple[int, ...], sigma: float) -> ImageResult:
    image = source.load(index)
    return ImageResult(str(source.records[index].image_id), masks=fh_label_maps(image, scales, sigma),
                       image_size=image.shape[:2])
