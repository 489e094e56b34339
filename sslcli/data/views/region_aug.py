"""D3SSL's region-level augmentations (METHODS.md §5, D3 §4): RBJ, PRC, PRM and the de-positioning composite.

Conventions (those of `sslcli.data.views.crops`): images are numpy (H, W, 3) uint8 RGB; boxes are float arrays
(K, 4) of ``(x0, y0, x1, y1)`` in the image's pixel coordinates, x1/y1 exclusive; every random draw comes from a
seeded ``np.random.Generator``. Functions are pure: inputs are never modified.

Pixel operations cover the pixels of a box after rounding its edges to the nearest integer (`pixel_boxes`); the rounding
is floor(x + ½), so shifting a box by an integer t shifts its pixels by exactly t.

Readings of the paper where it is not explicit (documented in docs/d3ssl.md):
- PRC: proposals are processed largest to smallest (pixel area). Each gets a cutout inside its box with the box's aspect
  ratio and side fraction s ~ U(side_fraction). Before a cutout is applied, every *other* proposal j is checked: if
  the cutouts of proposals other than j (the earlier ones ∪ this one) would cover more than ``max_cover`` of B_j, this
  cutout is restored (not cut) inside B_j. Since larger proposals go first, this gives the smaller proposal its pixels
  back — the paper's "recovered for smaller proposals"; the same check keeps the cutouts of many small proposals from
  hollowing out a larger one. A proposal's own cutout never counts against it.
  Invariant: for every proposal j, the other proposals' cutouts cover at most max_cover of B_j.
- PRC fill: the paper does not say. Default ``"mean"`` (ImageNet mean colour) is Cutout's zero on normalised input;
  ``"zero"`` (black) and ``"noise"`` (uniform random colours) are options.
- PRM: the rectangle (area s·w·h, s ~ U(scale); aspect w/h log-uniform in ratio) touches the chosen side of the box from
  the outside; along that side it lies within the box's span (centred around it when longer). The side is drawn among
  those with room in the image; its pixels (clipped to the image) are replaced by the background image's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sslcli.data.views.colour import IMAGENET_MEAN

Fill = Literal["mean", "zero", "noise"]
SIDES = ("left", "right", "top", "bottom")
MEAN_COLOUR = np.array([round(255 * c) for c in IMAGENET_MEAN], dtype=np.uint8)


# ------------------------------------------------------------------------------------------------------------ helpers
def _check_image(image: np.ndarray, name: str = "image") -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{name}: expected an (H, W, 3) uint8 array, got {image.dtype} of shape {image.shape}")


def _as_boxes(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected shape (K, 4) as (x0, y0, x1, y1), got {boxes.shape}")
    if np.any(boxes[:, 2] <= boxes[:, 0]) or np.any(boxes[:, 3] <= boxes[:, 1]):
        raise ValueError("boxes: every box needs x1 > x0 and y1 > y0")
    return boxes


def pixel_boxes(boxes, height: int, width: int) -> np.ndarray:
    """(K, 4) int64 pixel extents: edges rounded with floor(x + ½), clipped to the image, at least one pixel wide."""
    boxes = _as_boxes(boxes)
    pix = np.floor(boxes + 0.5).astype(np.int64)
    pix[:, [0, 2]] = pix[:, [0, 2]].clip(0, width)
    pix[:, [1, 3]] = pix[:, [1, 3]].clip(0, height)
    pix[:, 0] = np.minimum(pix[:, 0], width - 1)
    pix[:, 1] = np.minimum(pix[:, 1], height - 1)
    pix[:, 2] = np.maximum(pix[:, 2], pix[:, 0] + 1)
    pix[:, 3] = np.maximum(pix[:, 3], pix[:, 1] + 1)
    return pix


def box_mask(box, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of one pixel box (x0, y0, x1, y1), clipped to the image."""
    mask = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return mask


# ------------------------------------------------------------------------------------------------------------- RBJ
def restricted_box_jitter(boxes, rng: np.random.Generator, scale: tuple[float, float] = (0.9, 1.0),
                          shift: float = 0.1) -> np.ndarray:
    """RBJ: jitter each box, then intersect it with the original so it never grows (D3 §4).

    Width and height are scaled independently by U(scale); the centre moves by U(−shift, shift)·(w, h).

    Args:
        boxes: (K, 4) float boxes (x0, y0, x1, y1).
    Returns:
        (K, 4) float64 boxes inside the originals. Each side keeps at least ((1 + scale[0]) / 2 − shift) of its length
        (0.85 with the defaults: a 0.9 box shifted by 0.1 loses 0.05 more to the intersection).
    """
    boxes = _as_boxes(boxes)
    k = len(boxes)
    size = boxes[:, 2:] - boxes[:, :2]  # (K, 2) = (w, h)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    new_size = size * rng.uniform(scale[0], scale[1], size=(k, 2))
    new_centre = centre + size * rng.uniform(-shift, shift, size=(k, 2))
    lo = np.maximum(new_centre - new_size / 2, boxes[:, :2])
    hi = np.minimum(new_centre + new_size / 2, boxes[:, 2:])
    return np.concatenate([lo, hi], axis=1)


# ------------------------------------------------------------------------------------------------------------- PRC
@dataclass(frozen=True)
class Cutouts:
    """PRC's draw: ``rects`` (K, 4) int64, the cutout sampled for each proposal (input order, before restoration);
    ``pieces`` (K, H, W) bool, what is left of each cutout after restoration."""

    rects: np.ndarray
    pieces: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: every pixel cut out."""
        return self.pieces.any(axis=0)


def sample_prc_cutouts(boxes, height: int, width: int, rng: np.random.Generator,
                       side_fraction: tuple[float, float] = (0.2, 0.5), max_cover: float = 0.5) -> Cutouts:
    """Draw PRC's cutouts for ``boxes`` in a ``height`` × ``width`` image (rule in the module docstring)."""
    pix = pixel_boxes(boxes, height, width)
    k = len(pix)
    areas = (pix[:, 2] - pix[:, 0]) * (pix[:, 3] - pix[:, 1])
    order = np.argsort(-areas, kind="stable")  # largest first
    regions = [box_mask(b, height, width) for b in pix]
    pieces = np.zeros((k, height, width), dtype=bool)
    rects = np.zeros((k, 4), dtype=np.int64)
    for i in order:
        x0, y0, x1, y1 = pix[i]
        w, h = x1 - x0, y1 - y0
        s = rng.uniform(*side_fraction)
        cw, ch = min(w, max(1, round(s * w))), min(h, max(1, round(s * h)))  # same s on both sides: aspect kept
        cx0 = x0 + int(rng.integers(0, w - cw + 1))
        cy0 = y0 + int(rng.integers(0, h - ch + 1))
        rects[i] = (cx0, cy0, cx0 + cw, cy0 + ch)
        cutout = box_mask(rects[i], height, width)
        for j in order:
            if j == i:
                continue
            by_others = np.delete(pieces, j, axis=0).any(axis=0) | cutout
            if np.count_nonzero(by_others & regions[j]) > max_cover * areas[j]:
                cutout &= ~regions[j]  # restore this cutout inside proposal j
        pieces[i] = cutout
    return Cutouts(rects=rects, pieces=pieces)


def fill_values(fill: Fill, count: int, rng: np.random.Generator) -> np.ndarray:
    if fill == "mean":
        return MEAN_COLOUR
    if fill == "zero":
        return np.zeros(3, dtype=np.uint8)
    if fill == "noise":
        return rng.integers(0, 256, size=(count, 3), dtype=np.uint8)
    raise ValueError(f"fill: expected one of mean, zero, noise, got {fill!r}")


# ------------------------------------------------------------------------------------------------------------- PRM
@dataclass(frozen=True)
class MaskRects:
    """PRM's draw: ``rects`` (K, 4) int64 rectangles before clipping to the image; ``sides`` (K,) index into SIDES,
    −1 where the box fills the image (no rectangle); ``mask`` (H, W) bool, the pixels replaced by the background."""

    rects: np.ndarray
    sides: np.ndarray
    mask: np.ndarray


def _span_start(lo: int, hi: int, length: int, rng: np.random.Generator) -> int:
    """Start of a segment of ``length`` facing [lo, hi): inside it when it fits, else covering it."""
    a, b = (lo, hi - length) if length <= hi - lo else (hi - length, lo)
    return int(rng.integers(a, b + 1))


def sample_prm_rects(boxes, height: int, width: int, rng: np.random.Generator,
                     scale: tuple[float, float] = (0.2, 0.6), ratio: tuple[float, float] = (3 / 4, 4 / 3)
                     ) -> MaskRects:
    """Draw PRM's rectangles for ``boxes`` in a ``height`` × ``width`` image (rule in the module docstring)."""
    pix = pixel_boxes(boxes, height, width)
    rects = np.zeros((len(pix), 4), dtype=np.int64)
    sides = np.full(len(pix), -1, dtype=np.int64)
    mask = np.zeros((height, width), dtype=bool)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for i, (x0, y0, x1, y1) in enumerate(pix):
        area = rng.uniform(*scale) * (x1 - x0) * (y1 - y0)
        aspect = math.exp(rng.uniform(*log_ratio))
        rw, rh = max(1, round(math.sqrt(area * aspect))), max(1, round(math.sqrt(area / aspect)))
        room = [x0 > 0, x1 < width, y0 > 0, y1 < height]
        candidates = [s for s in range(4) if room[s]]
        if not candidates:
            continue
        side = candidates[int(rng.integers(len(candidates)))]
        if side in (0, 1):  # left / right: the rectangle's height faces the box's y-span
            ry0 = _span_start(y0, y1, rh, rng)
            rx0 = x0 - rw if side == 0 else x1
            rects[i] = (rx0, ry0, rx0 + rw, ry0 + rh)
        else:  # top / bottom
            rx0 = _span_start(x0, x1, rw, rng)
            ry0 = y0 - rh if side == 2 else y1
            rects[i] = (rx0, ry0, rx0 + rw, ry0 + rh)
        sides[i] = side
        mask |= box_mask(rects[i], height, width)
    return MaskRects(rects=rects, sides=sides, mask=mask)


# ---------------------------------------------------------------------------------------------------- de-positioning
@dataclass(frozen=True)
class Composite:
    """The de-positioned view x3 (H, W, 3) uint8; ``boxes`` b̂ = b + t (K, 4) float; ``shift`` t = (tx, ty) ints;
    ``mask`` m̂ (H, W) bool, the pixels copied from the source (shifted union of boxes minus PRC's holes);
    ``cutouts`` PRC's draw on the shifted boxes."""

    image: np.ndarray
    boxes: np.ndarray
    shift: tuple[int, int]
    mask: np.ndarray
    cutouts: Cutouts


def depositioning_composite(image: np.ndarray, boxes, background: np.ndarray, rng: np.random.Generator,
                            side_fraction: tuple[float, float] = (0.2, 0.5), max_cover: float = 0.5) -> Composite:
    """De-positioning (D3 §4, Eq. 6–8): move every proposal by one shift t onto another image.

    t is an integer drawn uniformly among the shifts that keep every box inside the image; m = ∪ B(b_i); m̂ = m + t
    cut again by PRC(m̂, b̂) so the C5 block also sees background inside the RoIs; x3 = background with the source's
    pixels under m pasted at m̂.

    Args:
        image: (H, W, 3) uint8 source view (x2); boxes: (K, 4) float boxes inside it.
        background: (H, W, 3) uint8 background image of the same shape.
    """
    _check_image(image)
    _check_image(background, "background")
    if background.shape != image.shape:
        raise ValueError(f"background: shape {background.shape} differs from the image's {image.shape}")
    height, width = image.shape[:2]
    boxes = _as_boxes(boxes)
    if boxes[:, :2].min() < 0 or boxes[:, 2].max() > width or boxes[:, 3].max() > height:
        raise ValueError(f"boxes: expected boxes inside the {width}×{height} image")
    tx = int(rng.integers(math.ceil(-boxes[:, 0].min()), math.floor(width - boxes[:, 2].max()) + 1))
    ty = int(rng.integers(math.ceil(-boxes[:, 1].min()), math.floor(height - boxes[:, 3].max()) + 1))
    shifted = boxes + np.array([tx, ty, tx, ty], dtype=np.float64)
    moved = np.zeros((height, width), dtype=bool)
    for b in pixel_boxes(shifted, height, width):
        moved |= box_mask(b, height, width)
    cutouts = sample_prc_cutouts(shifted, height, width, rng, side_fraction, max_cover)
    moved &= ~cutouts.mask
    # A box with no area at the image's edge still covers one pixel (pixel_boxes), whose source may lie outside the
    # image after the shift: such pixels have nothing to paste and keep the background.
    ys, xs = np.nonzero(moved)
    inside = (ys - ty >= 0) & (ys - ty < height) & (xs - tx >= 0) & (xs - tx < width)
    moved[ys[~inside], xs[~inside]] = False
    ys, xs = ys[inside], xs[inside]
    out = background.copy()
    out[ys, xs] = image[ys - ty, xs - tx]
    return Composite(image=out, boxes=shifted, shift=(tx, ty), mask=moved, cutouts=cutouts)
