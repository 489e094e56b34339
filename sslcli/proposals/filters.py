"""SoCo's proposal filter (METHODS.md §4).

Keep boxes with w, h ≥ 32 px, aspect ratio w/h in [1/3, 3] and √(wh)/√(WH) in [0.3, 0.8] (W, H: the image).
Images left with no box fall back to SoCo's ``filter_ratio`` (w, h ≥ 32 and the aspect rule: the scale window is
dropped), then to its ``filter_none`` (w, h ≥ 32 alone), then to the whole image as one box
(SoCo: selective_search/filters.py and filter_ss_proposals_json_post_no_prop.py; the 32 px minimum holds throughout).
Widths here are pixel-edge widths (x1 − x0); SoCo's rect width is max_x − min_x of inclusive pixel indices, one less,
so a box exactly at a limit (32 px wide, say) can be kept here and dropped by SoCo.
"""

from __future__ import annotations

import numpy as np

MIN_SIDE = 32.0
MAX_ASPECT = 3.0
SCALE_RANGE = (0.3, 0.8)


def soco_filter(boxes: np.ndarray, height: int, width: int, min_side: float = MIN_SIDE,
                max_aspect: float = MAX_ASPECT, scale_range: tuple[float, float] = SCALE_RANGE) -> np.ndarray:
    """(M, 4) x0,y0,x1,y1 boxes of an H×W image → the kept (M', 4) float32 boxes, M' ≥ 1, in input order."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    big_enough = (w >= min_side) & (h >= min_side)
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.where(h > 0, w / np.where(h > 0, h, 1), np.inf)
        aspect_ok = (aspect >= 1.0 / max_aspect) & (aspect <= max_aspect)
    rel_scale = np.sqrt(np.clip(w * h, 0, None)) / np.sqrt(float(width) * float(height))
    scale_ok = (rel_scale >= scale_range[0]) & (rel_scale <= scale_range[1])
    for keep in (big_enough & aspect_ok & scale_ok, big_enough & aspect_ok, big_enough):
        if keep.any():
            return boxes[keep]
    return np.array([[0, 0, width, height]], np.float32)
