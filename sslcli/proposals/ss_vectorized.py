"""Selective search (Uijlings et al. 2013) as SoCo configures it, vectorised: the default ``vectorized`` backend.

1. Initial regions: Felzenszwalb–Huttenlocher graph segmentation of the RGB image (k 300, sigma 0.9, min size 100),
   OpenCV's C++ implementation (`cv2.ximgproc.segmentation.createGraphSegmentation`).
2. Region features, all with one `np.bincount` each: size; bounding box (`scipy.ndimage.find_objects`);
   colour = HSV histogram, 25 bins per channel (75-d, L1-normalised); texture = per colour channel, a histogram of
   Gaussian-derivative (sigma 1) responses over 8 orientations × 10 magnitude bins (240-d, L1-normalised).
3. Neighbours: regions that touch (4-connectivity), from the label map's horizontal and vertical pixel pairs.
4. Greedy hierarchical grouping: repeatedly merge the most similar pair of neighbours, with
   s = s_colour + s_texture + s_size + s_fill (histogram intersections; 1 − (a+b)/im; 1 − (bbox − a − b)/im);
   merged features are size-weighted means; a heap with lazy deletion keeps this O(R log R).
5. Boxes of every region ever formed (initial and merged), deduplicated.

Differences from the `selectivesearch` package SoCo used (the ``reference`` backend): the package only treats two
regions as neighbours when a corner of one box lies strictly inside the other (it misses many touching pairs and
links some that do not touch), bins HSV values in 0..1 into a 0..255 range (its colour term is a constant 3) and LBP
codes 0..255 into 0..1 (its texture term is the share of codes 0 and 1 per channel), and segments with skimage's FH
(ours: OpenCV's FH, same parameters, slightly different smoothing and small-region merging). Texture here follows
Uijlings' Gaussian derivatives rather than the package's LBP. docs/regions.md (Performance) measures what each
difference does to box recall. Deterministic: ties are broken by region ids.
"""

from __future__ import annotations

import heapq

import numpy as np

COLOUR_BINS, TEXTURE_ORIENTATIONS, TEXTURE_BINS = 25, 8, 10


def _initial_regions(image: np.ndarray, scale: float, sigma: float, min_size: int) -> np.ndarray:
    import cv2

    seg = cv2.ximgproc.segmentation.createGraphSegmentation(sigma=float(sigma), k=float(scale), min_size=int(min_size))
    return seg.processImage(np.ascontiguousarray(image)).astype(np.int64)


def _histograms(labels: np.ndarray, codes: np.ndarray, n_regions: int, n_bins: int) -> np.ndarray:
    """(R, n_bins) L1-normalised histograms of per-pixel bin codes (C, H, W) over the regions."""
    index = (labels * n_bins)[None] + codes  # (C, H, W) int64
    hist = np.bincount(index.ravel(), minlength=n_regions * n_bins).astype(np.float64)
    hist = hist.reshape(n_regions, n_bins)
    return hist / np.maximum(hist.sum(1, keepdims=True), 1)


def _colour_codes(image: np.ndarray) -> np.ndarray:
    """(3, H, W) bin codes in [0, 75): 25 bins per HSV channel (OpenCV's 8-bit HSV: H 0..179, S and V 0..255)."""
    import cv2

    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    codes = np.empty((3, *image.shape[:2]), np.uint8)
    for c, levels in enumerate((180, 256, 256)):  # a lookup table per channel: value -> channel offset + bin
        lut = (c * COLOUR_BINS + np.minimum(np.arange(256) * COLOUR_BINS // levels, COLOUR_BINS - 1)).astype(np.uint8)
        codes[c] = lut[hsv[..., c]]
    return codes


def _texture_codes(image: np.ndarray) -> np.ndarray:
    """(3, H, W) bin codes in [0, 240): per colour channel, the orientation (8) × magnitude (10) bin of the
    Gaussian derivative (sigma 1); magnitudes are normalised by the channel's maximum."""
    import cv2

    smooth = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0)
    codes = []
    per_channel = TEXTURE_ORIENTATIONS * TEXTURE_BINS
    for c in range(3):
        gx = cv2.Sobel(smooth[..., c], cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(smooth[..., c], cv2.CV_32F, 0, 1, ksize=3)
        magnitude, angle = cv2.cartToPolar(gx, gy)  # angle in [0, 2 pi)
        orientation = (angle * (TEXTURE_ORIENTATIONS / (2 * np.pi))).astype(np.int64) % TEXTURE_ORIENTATIONS
        peak = float(magnitude.max())
        level = np.minimum((magnitude * (TEXTURE_BINS / peak)).astype(np.int64), TEXTURE_BINS - 1) if peak > 0 else \
            np.zeros(magnitude.shape, np.int64)
        codes.append(c * per_channel + orientation * TEXTURE_BINS + level)
    return np.stack(codes)


def _neighbour_pairs(labels: np.ndarray) -> np.ndarray:
    """(P, 2) unique pairs a < b of 4-connected touching regions, sorted."""
    n = int(labels.max()) + 1
    keys = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        differ = a != b
        a, b = a[differ], b[differ]
        keys.append(np.minimum(a, b) * n + np.maximum(a, b))
    keys = np.unique(np.concatenate(keys))
    return np.stack([keys // n, keys % n], 1)


# Similarity weights (colour, texture, size, fill). SoCo: all four, once. Uijlings' diversification adds more.
SOCO_STRATEGY = (1.0, 1.0, 1.0, 1.0)
DIVERSE_STRATEGIES = ((1.0, 1.0, 1.0, 1.0), (0.0, 1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 1.0), (0.0, 0.0, 1.0, 0.0))


def _initial_features(image: np.ndarray, scale: float, sigma: float, min_size: int) -> dict[str, np.ndarray]:
    """The initial regions' size (n,), boxes (n, 4), colour (n, 75), texture (n, 240) and touching pairs (P, 2)."""
    from scipy.ndimage import find_objects

    labels = _initial_regions(image, scale, sigma, min_size)
    n = int(labels.max()) + 1
    boxes = np.zeros((n, 4))
    for r, sl in enumerate(find_objects(labels + 1)):
        if sl is not None:
            boxes[r] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return {"size": np.bincount(labels.ravel(), minlength=n).astype(np.float64), "boxes": boxes,
            "colour": _histograms(labels, _colour_codes(image), n, 3 * COLOUR_BINS),
            "texture": _histograms(labels, _texture_codes(image), n, 3 * TEXTURE_ORIENTATIONS * TEXTURE_BINS),
            "pairs": _neighbour_pairs(labels), "image_area": np.array(float(labels.size))}


class _Hierarchy:
    """The regions of one grouping run: features of the n initial regions and room for the n − 1 merges."""

    def __init__(self, features: dict[str, np.ndarray], weights: tuple[float, float, float, float]):
        self.n = len(features["size"])
        total = 2 * self.n - 1  # every merge creates one region
        self.image_area = float(features["image_area"])
        self.weights = weights

        def grown(name: str) -> np.ndarray:
            out = np.zeros((total, *features[name].shape[1:]))
            out[:self.n] = features[name]
            return out

        self.size, self.boxes = grown("size"), grown("boxes")
        self.colour, self.texture = grown("colour"), grown("texture")
        self.neighbours: list[set[int]] = [set() for _ in range(total)]
        for a, b in features["pairs"].tolist():
            self.neighbours[a].add(b)
            self.neighbours[b].add(a)
        self.alive = np.zeros(total, bool)
        self.alive[:self.n] = True
        self.formed = self.n  # regions formed so far (initial + merged); the next merge gets this id

    def similarity(self, a: int | np.ndarray, others: np.ndarray) -> np.ndarray:
        """s(a, o) for each o in ``others``; ``a`` is one region or an array aligned with ``others``."""
        w_colour, w_texture, w_size, w_fill = self.weights
        size, boxes, area = self.size, self.boxes, self.image_area
        s = np.zeros(len(others))
        if w_colour:
            s += w_colour * np.minimum(self.colour[a], self.colour[others]).sum(1)
        if w_texture:
            s += w_texture * np.minimum(self.texture[a], self.texture[others]).sum(1)
        if w_size:
            s += w_size * (1.0 - (size[a] + size[others]) / area)
        if w_fill:
            x0 = np.minimum(boxes[a, 0], boxes[others, 0])
            y0 = np.minimum(boxes[a, 1], boxes[others, 1])
            x1 = np.maximum(boxes[a, 2], boxes[others, 2])
            y1 = np.maximum(boxes[a, 3], boxes[others, 3])
            s += w_fill * (1.0 - ((x1 - x0) * (y1 - y0) - size[a] - size[others]) / area)
        return s

    def merge(self, a: int, b: int) -> int:
        """Merge live regions ``a`` and ``b`` into a new region (size-weighted mean features, union box, union of
        the neighbours); returns its id."""
        t, size = self.formed, self.size
        self.alive[a] = self.alive[b] = False
        size[t] = size[a] + size[b]
        self.colour[t] = (self.colour[a] * size[a] + self.colour[b] * size[b]) / size[t]
        self.texture[t] = (self.texture[a] * size[a] + self.texture[b] * size[b]) / size[t]
        boxes = self.boxes
        boxes[t] = (min(boxes[a, 0], boxes[b, 0]), min(boxes[a, 1], boxes[b, 1]),
                    max(boxes[a, 2], boxes[b, 2]), max(boxes[a, 3], boxes[b, 3]))
        merged = (self.neighbours[a] | self.neighbours[b]) - {a, b}
        for other in merged:
            self.neighbours[other].discard(a)
            self.neighbours[other].discard(b)
            self.neighbours[other].add(t)
        self.neighbours[t] = merged
        self.alive[t] = True
        self.formed += 1
        return t


def _group(features: dict[str, np.ndarray], weights: tuple[float, float, float, float]) -> np.ndarray:
    """Greedy hierarchical grouping under one similarity; (2n − 1, 4) boxes of every region formed."""
    regions = _Hierarchy(features, weights)
    pairs = features["pairs"]
    heap: list[tuple[float, int, int]] = []
    if len(pairs):
        first = regions.similarity(pairs[:, 0], pairs[:, 1])
        heap = [(-s, a, b) for s, (a, b) in zip(first.tolist(), pairs.tolist())]
        heapq.heapify(heap)
    while heap:
        _, a, b = heapq.heappop(heap)
        if not (regions.alive[a] and regions.alive[b]):
            continue  # a stale pair: one side was merged already
        t = regions.merge(a, b)
        if regions.neighbours[t]:
            others = np.array(sorted(regions.neighbours[t]))
            for s, other in zip(regions.similarity(t, others).tolist(), others.tolist()):
                heapq.heappush(heap, (-s, other, t))
    return regions.boxes[:regions.formed]


def selective_search_vectorized(image: np.ndarray, scale: float = 300, sigma: float = 0.9, min_size: int = 100,
                                strategies=(SOCO_STRATEGY,)) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (M, 4) float32 unique boxes x0, y0, x1, y1 (pixel edges) of the whole hierarchy,
    one hierarchy per similarity strategy (weights of colour, texture, size, fill) on the same initial regions."""
    features = _initial_features(image, scale, sigma, min_size)
    boxes = np.concatenate([_group(features, weights) for weights in strategies]).astype(np.float32)
    return np.unique(boxes, axis=0)
