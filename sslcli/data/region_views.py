"""Views that carry boxes, for SoCo (METHODS.md §4): three views of an image and K proposal boxes mapped into each.

- V1: the whole image resized to S×S (aspect ratio not kept); V2: RandomResizedCrop(S, area ``crop_scale``, aspect
  ratio 3/4–4/3); V3: V2 resized to S/2 (the same pixels, downsampled: SoCo's scale-invariance view). V1 and V2 are
  flipped horizontally with probability ½ each, independently; V3 inherits V2's flip.
- Boxes (x0, y0, x1, y1, continuous pixel coordinates: pixel (i, j) spans [j, j+1) × [i, i+1), the convention of
  torchvision's resize and of RoIAlign with ``aligned=True``) move exactly as the pixels do: V1 scales x by S/W and y
  by S/H; V2 subtracts the crop's corner and scales by S/crop size; V3 halves V2's; a flip maps x to S − x.
- Only proposals overlapping both views are kept (V1 holds the whole image, so: a positive-area intersection with
  the V2 crop). K = ``boxes_per_image`` are sampled among them without replacement; with fewer than K the kept ones
  are all used and the rest padded by resampling them. An image without any such proposal uses the V2 crop itself
  (the region both views see) as its only box, so every image contributes K boxes.
- Jitter, on V1's boxes (the whole-image view, as in the authors' code; V2 and V3 keep the exact proposals),
  independently per box with probability ``jitter_p``: shift the centre by U(±s)·(w, h) and scale w and h by
  1 + U(±s) (s = ``jitter_scale``, w, h the box's size in V1); then every box is clipped to its view. A jitter that
  would leave no area inside V1 is not applied to that box.
- Correspondence is by index: box k of every view comes from the same proposal.

Colour (BYOL's two presets, `sslcli.data.color`) is applied to V1 and V2 after the geometry; it never moves pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import v2

from sslcli.data.color import BYOL, ColorAug, color_transform
from sslcli.data.transforms import crop_resize, image_to_tensor, sample_crop_box

CROP_RATIO = (3 / 4, 4 / 3)  # V2's RandomResizedCrop aspect-ratio range


def sanitize_boxes(boxes: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(M, 4) boxes in image pixels → float32 (M', 4) clipped to the image, keeping those with positive area."""
    out = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)).clone()
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]


def overlapping(boxes: torch.Tensor, crop: tuple[int, int, int, int]) -> torch.Tensor:
    """Boolean (M,): the boxes whose intersection with ``crop`` (x0, y0, x1, y1) has a positive area."""
    x0, y0, x1, y1 = crop
    width = boxes[:, 2].clamp(max=x1) - boxes[:, 0].clamp(min=x0)
    height = boxes[:, 3].clamp(max=y1) - boxes[:, 1].clamp(min=y0)
    return (width > 0) & (height > 0)


def sample_indices(n: int, k: int) -> torch.Tensor:
    """k indices into n ≥ 1 items: a random subset when n ≥ k, else all n followed by k − n resampled ones."""
    if n >= k:
        return torch.randperm(n)[:k]
    return torch.cat([torch.randperm(n), torch.randint(n, (k - n,))])


def map_boxes(boxes: torch.Tensor, origin: tuple[float, float], scale: tuple[float, float], size: int,
              flip: bool) -> torch.Tensor:
    """Image boxes (K, 4) → a view's coordinates: (x − origin)·scale, then x → size − x when flipped. Not clipped."""
    ox, oy = origin
    sx, sy = scale
    out = torch.stack([(boxes[:, 0] - ox) * sx, (boxes[:, 1] - oy) * sy,
                       (boxes[:, 2] - ox) * sx, (boxes[:, 3] - oy) * sy], dim=1)
    if flip:
        out = torch.stack([size - out[:, 2], out[:, 1], size - out[:, 0], out[:, 3]], dim=1)
    return out


def clip_boxes(boxes: torch.Tensor, size: int) -> torch.Tensor:
    return boxes.clamp(0, size)


def jitter_boxes(boxes: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """Each box, with probability p: centre shifted by U(±scale)·(w, h), w and h multiplied by 1 + U(±scale)."""
    k = len(boxes)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    shift = (torch.rand(k, 2) * 2 - 1) * scale
    resize = 1 + (torch.rand(k, 2) * 2 - 1) * scale
    apply = torch.rand(k) < p
    cx, cy = cx + shift[:, 0] * w, cy + shift[:, 1] * h
    w, h = w * resize[:, 0], h * resize[:, 1]
    jittered = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    return torch.where(apply[:, None], jittered, boxes)


def place_boxes(boxes: torch.Tensor, size: int, jitter_p: float, jitter_scale: float) -> torch.Tensor:
    """Boxes in a view's coordinates → jittered (where drawn) and clipped to the size×size view.

    A jittered box left without area inside the view falls back to its un-jittered, clipped self.
    """
    plain = clip_boxes(boxes, size)
    if jitter_p <= 0 or jitter_scale <= 0:
        return plain
    jittered = clip_boxes(jitter_boxes(boxes, jitter_p, jitter_scale), size)
    empty = (jittered[:, 2] <= jittered[:, 0]) | (jittered[:, 3] <= jittered[:, 1])
    return torch.where(empty[:, None], plain, jittered)


def downsample(view: torch.Tensor, size: int) -> torch.Tensor:
    """V3 from V2: (3, S, S) → (3, size, size), bilinear and antialiased (uint8 or float)."""
    return v2.functional.resize(view, [size, size], antialias=True)


@dataclass
class RegionViews:
    """SoCo's three views with K boxes each (see the module docstring); picklable.

    Calling it on (image (H, W, 3) uint8 RGB, boxes (M, 4) x0, y0, x1, y1 in image pixels) returns a dict:
    "view1", "view2": (3, S, S) and "view3": (3, S/2, S/2) float32, colour-augmented and normalised; "boxes":
    (3, K, 4) float32, row v in view v's pixels. Fixed shapes, so `default_collate` stacks them.
    """

    size: int
    boxes_per_image: int = 4
    crop_scale: tuple[float, float] = (0.6, 1.0)
    jitter_p: float = 0.5
    jitter_scale: float = 0.1
    colors: tuple[ColorAug, ColorAug] = BYOL

    def __post_init__(self):
        self._colors = tuple(color_transform(aug, self.size) for aug in self.colors)

    @property
    def small_size(self) -> int:
        return self.size // 2

    def geometry(self, image: np.ndarray, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(V1, V2) as (3, S, S) uint8 and the boxes (3, K, 4) of V1, V2, V3; V3's pixels are `downsample`(V2)."""
        pixels = image_to_tensor(image)
        height, width = image.shape[:2]
        s = self.size
        crop = sample_crop_box(height, width, tuple(self.crop_scale), CROP_RATIO)
        flip1, flip2 = bool(torch.rand(()) < 0.5), bool(torch.rand(()) < 0.5)
        view1 = crop_resize(pixels, (0, 0, width, height), s, flip1)
        view2 = crop_resize(pixels, crop, s, flip2)

        candidates = sanitize_boxes(boxes, height, width)
        candidates = candidates[overlapping(candidates, crop)]
        if len(candidates) == 0:  # no proposal both views see: the region they share
            candidates = torch.tensor([crop], dtype=torch.float32)
        chosen = candidates[sample_indices(len(candidates), self.boxes_per_image)]

        x0, y0, x1, y1 = crop
        in_view1 = map_boxes(chosen, (0, 0), (s / width, s / height), s, flip1)
        in_view2 = map_boxes(chosen, (x0, y0), (s / (x1 - x0), s / (y1 - y0)), s, flip2)
        half = self.small_size / s
        in_view3 = map_boxes(in_view2, (0, 0), (half, half), self.small_size, False)
        # Jitter on V1's boxes only, as the authors' code: V2 and V3 keep the exact proposals.
        placed = [place_boxes(in_view1, s, self.jitter_p, self.jitter_scale),
                  clip_boxes(in_view2, s), clip_boxes(in_view3, self.small_size)]
        return view1, view2, torch.stack(placed)

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> dict[str, torch.Tensor]:
        view1, view2, placed = self.geometry(image, boxes)
        color1, color2 = self._colors
        view1 = color1(v2.functional.to_dtype(view1, torch.float32, scale=True))
        view2 = color2(v2.functional.to_dtype(view2, torch.float32, scale=True))
        return {"view1": view1, "view2": view2, "view3": downsample(view2, self.small_size), "boxes": placed}
