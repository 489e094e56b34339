"""Selective-search box proposals with SoCo's settings (FH scale 300, sigma 0.9, min size 100; colour + texture +
size + fill similarities), through one of three backends:

- ``vectorized`` (default, fast): our vectorised hierarchical grouping on OpenCV's FH segmentation; see
  `sslcli.proposals.ss_vectorized` for the algorithm and how it differs from the package. ``strategies="diverse"``
  (default) pools SoCo's grouping (colour + texture + size + fill) with Uijlings' diversification on the same
  segmentation (texture + size + fill, fill only, size only): more boxes and higher recall than the reference, raw
  and after SoCo's filter, at > 5x its speed (docs/regions.md); ``"soco"`` groups once, as SoCo.
- ``opencv``: OpenCV ximgproc's C++ selective search, configured like SoCo: one graph segmentation
  (k 300, sigma 0.9, min size 100) and one strategy combining colour, texture, size and fill with equal weights.
  Differences from SoCo's package: the segmentation and the colour histograms use the HSV image (OpenCV's single
  strategy; the package segments RGB), texture uses Gaussian-derivative histograms (Uijlings et al.) instead of LBP,
  and neighbours are true region adjacencies (the package only merges regions whose boxes overlap at a corner).
- ``reference``: the ``selectivesearch`` package that SoCo used (pure Python, slow), for comparison.

Boxes are returned as (M, 4) float32 x0, y0, x1, y1 pixel edges (x1 = last column + 1), deduplicated and sorted,
so the result does not depend on the backends' internal (sometimes randomised) ranking.
"""

from __future__ import annotations

import numpy as np

from sslcli.data.readers.sources import ImageSource
from sslcli.data.stores.store import ImageResult
from sslcli.proposals.filters import soco_filter
from sslcli.proposals.ss_vectorized import DIVERSE_STRATEGIES, SOCO_STRATEGY, selective_search_vectorized

SCALE, SIGMA, MIN_SIZE = 300, 0.9, 100
BACKENDS = ("vectorized", "opencv", "reference")
DEFAULT_BACKEND = "vectorized"
# `prepare boxes`' default grouping: higher recall than SoCo's single similarity at >= 5x the reference's speed
# (docs/regions.md, Performance); "soco" reproduces SoCo's grouping.
DEFAULT_STRATEGIES = "diverse"
STRATEGIES = {"soco": (SOCO_STRATEGY,), "diverse": DIVERSE_STRATEGIES}  # vectorized backend only


def _unique_boxes(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.unique(boxes, axis=0) if len(boxes) else boxes


def selective_search_opencv(image: np.ndarray, scale: float = SCALE, sigma: float = SIGMA,
                            min_size: int = MIN_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (M, 4) float32 unique boxes from OpenCV's selective search (see module notes)."""
    import cv2

    seg = cv2.ximgproc.segmentation
    search = seg.createSelectiveSearchSegmentation()
    search.addImage(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    search.addGraphSegmentation(seg.createGraphSegmentation(sigma=float(sigma), k=float(scale), min_size=int(min_size)))
    search.addStrategy(seg.createSelectiveSearchSegmentationStrategyMultiple(
        seg.createSelectiveSearchSegmentationStrategyColor(), seg.createSelectiveSearchSegmentationStrategyFill(),
        seg.createSelectiveSearchSegmentationStrategySize(), seg.createSelectiveSearchSegmentationStrategyTexture()))
    rects = np.asarray(search.process(), np.float32).reshape(-1, 4)  # x, y, w, h (w, h in pixels)
    rects[:, 2:] += rects[:, :2]
    return _unique_boxes(rects)


def selective_search_reference(image: np.ndarray, scale: float = SCALE, sigma: float = SIGMA,
                               min_size: int = MIN_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (M, 4) float32 unique boxes from the ``selectivesearch`` package (SoCo's call)."""
    import warnings

    import selectivesearch

    with warnings.catch_warnings():  # the package feeds LBP a float image and skimage warns every call
        warnings.simplefilter("ignore", UserWarning)
        _, regions = selectivesearch.selective_search(image, scale=scale, sigma=sigma, min_size=min_size)
    # The package's rect is (min_x, min_y, max_x - min_x, max_y - min_y): inclusive pixel extents.
    rects = np.array([r["rect"] for r in regions], np.float32).reshape(-1, 4)
    rects[:, 2:] += rects[:, :2] + 1
    return _unique_boxes(rects)


def default_strategies(backend: str) -> str:
    """The grouping a backend runs when none is named: ``diverse`` for ours, SoCo's single one for the others."""
    return DEFAULT_STRATEGIES if backend == "vectorized" else "soco"


def selective_search(image: np.ndarray, backend: str = DEFAULT_BACKEND, strategies: str | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (M, 4) float32 unique boxes x0, y0, x1, y1 with SoCo's segmentation parameters."""
    strategies = default_strategies(backend) if strategies is None else strategies
    if strategies != "soco" and backend != "vectorized":
        raise ValueError(f"strategies {strategies!r} needs the vectorized backend")
    if backend == "vectorized":
        return selective_search_vectorized(image, SCALE, SIGMA, MIN_SIZE, STRATEGIES[strategies])
    if backend == "opencv":
        return selective_search_opencv(image)
    if backend == "reference":
        return selective_search_reference(image)
    raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")


def compute_boxes(source: ImageSource, index: int, backend: str, box_filter: str,
                  strategies: str | None = None) -> ImageResult:
    image = source.load(index)
    h, w = image.shape[:2]
    boxes = selective_search(image, backend, strategies)
    if box_filter == "soco":
        boxes = soco_filter(boxes, h, w)
    return ImageResult(str(source.records[index].image_id), boxes=boxes, image_size=(h, w))
