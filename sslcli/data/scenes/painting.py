"""What both scene generators paint with: the shapes and their rasteriser, the bundled backgrounds, and the scene
and object records. `synthetic` (the default preset) and `planted` each import this module; neither imports the
other's painting code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

MIN_VISIBLE_PIXELS = 24  # an object with fewer visible pixels is not annotated (a sliver, not an object)
MIN_VISIBLE_FRACTION = 0.2  # ... nor one whose visible part is under this fraction of its in-frame area


# ---------------------------------------------------------------------------------------------------------------
# Shapes: lists of (polygon, value) in unit coordinates (radius ~1), painted in order (value 0 cuts a hole).

def _circle(radius: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)


def _regular(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


_ARM = 0.32  # half-width of the cross's arms
SHAPES: dict[str, list[tuple[np.ndarray, int]]] = {
    "disc": [(_circle(), 1)],
    "square": [(np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]), 1)],
    "triangle": [(_regular(3), 1)],
    "star": [(_star(), 1)],
    "ring": [(_circle(), 1), (_circle(0.55), 0)],
    "cross": [(np.array([[-_ARM, -1], [_ARM, -1], [_ARM, -_ARM], [1, -_ARM], [1, _ARM], [_ARM, _ARM], [_ARM, 1],
                         [-_ARM, 1], [-_ARM, _ARM], [-1, _ARM], [-1, -_ARM], [-_ARM, -_ARM]]), 1)],
    "ellipse": [(_circle() * [1.0, 0.55], 1)],
    "hexagon": [(_regular(6, phase=0.0), 1)],
    "diamond": [(np.array([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]]), 1)],
    "crescent": [(_circle(), 1), (_circle(0.85, cx=0.45), 0)],
}


# ---------------------------------------------------------------------------------------------------------------
# Backgrounds: images shipped inside the scikit-image wheel (these load offline; the others need pooch).

BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "brick",
               "grass", "gravel", "camera", "moon", "coins", "clock", "cell")


@functools.cache
def background_image(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grey images are replicated to three channels (and tinted later)."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop of a bundled image, resized to (height, width), flipped and colour-shifted: (H, W, 3) float32."""
    source = background_image(BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
    sh, sw = source.shape[:2]
    aspect = width / height
    scale = rng.uniform(0.25, 1.0)  # fraction of the source area
    ch = int(min(sh, np.sqrt(scale * sh * sw / aspect)))
    cw = int(min(sw, ch * aspect))
    ch = int(min(ch, cw / aspect)) or 1
    y0, x0 = rng.integers(sh - ch + 1), rng.integers(sw - cw + 1)
    crop = cv2.resize(source[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain = rng.uniform(0.6, 1.15, size=3)  # per-channel: also tints grey textures
    offset = rng.uniform(-25, 25, size=3)
    return np.clip(crop.astype(np.float32) * gain + offset, 0, 255)


# ---------------------------------------------------------------------------------------------------------------
# Scenes.

@dataclass
class SceneObject:
    """One painted object. ``full_mask`` is its whole in-frame shape, ``visible`` what later objects left uncovered."""

    category_id: int
    full_mask: np.ndarray  # (H, W) bool
    visible: np.ndarray  # (H, W) bool, a subset of full_mask

    @property
    def annotated(self) -> bool:
        area = int(self.visible.sum())
        return area >= MIN_VISIBLE_PIXELS and area >= MIN_VISIBLE_FRACTION * int(self.full_mask.sum())


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    objects: list[SceneObject]  # in painting order (back to front), annotated or not


def shape_mask(shape: str, height: int, width: int, centre: np.ndarray, radius: float, stretch: np.ndarray,
                angle: float) -> np.ndarray:
    """Rasterise a shape placed at ``centre`` (x, y) with ``radius``, ``stretch`` (sx, sy) and ``angle``: (H, W) bool."""
    canvas = np.zeros((height, width), np.uint8)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s], [s, c]])
    shift = 4  # sub-pixel vertices: cv2 takes fixed-point coordinates with `shift` fractional bits
    for polygon, value in SHAPES[shape]:
        points = (polygon * stretch * radius) @ rotation.T + centre
        cv2.fillPoly(canvas, [np.round(points * (1 << shift)).astype(np.int32)], int(value), cv2.LINE_8, shift)
    return canvas.astype(bool)


@functools.cache
def size_factor(shape: str) -> float:
    """Radius multiplier that gives ``shape`` the area of the unit disc, so that all classes share one area
    distribution (measured by rasterising the shape at radius 100)."""
    area = shape_mask(shape, 256, 256, np.array([128.0, 128.0]), 100.0, np.ones(2), 0.0).sum() / 100.0**2
    return float(np.sqrt(np.pi / area))
