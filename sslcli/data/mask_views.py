"""Mask-aware views for DetCon (METHODS.md §3): the image and its label map get the same crop and flip.

Geometry: a random crop (area U[0.08, 1] of the image, log-uniform aspect ratio in [3/4, 4/3]) resized to S×S, then a
horizontal flip with probability ½, drawn once and applied to both tensors by torchvision v2 (`tv_tensors.Image` is
resized bicubically, `tv_tensors.Mask` with nearest neighbour, so mask ids are never blended). Two crop samplers:
``authors`` (the default for DetCon): DetCon's own procedure (`get_random_crop_window` in the authors'
``utils/tf_image_ops.py``): draw the area and the aspect ratio once, w = round(√(area·r)), h = round(√(area/r)), clip
w to the image width and h to its height, place the window uniformly; no rejection, no retry. ``torchvision``:
`RandomResizedCrop`, which rejects windows that do not fit and retries (up to 10 times, then a central crop), so its
crops are smaller on average (mean area 0.435 vs 0.519 of a 480×640 image, docs/detcon.md). Colour follows afterwards and never moves
pixels: DetCon_S uses SimCLR's pair of presets, DetCon_B BYOL's (`sslcli.data.color`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from sslcli.data.color import BYOL, SIMCLR, ColorAug, color_transform

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
# DetCon_S adopts SimCLR's colour pipeline, DetCon_B BYOL's (DetCon App. A.1).
COLOR_PRESETS: dict[str, tuple[ColorAug, ColorAug]] = {"S": SIMCLR, "B": BYOL}


CROP_SAMPLERS = ("authors", "torchvision")


def clipped_window(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
                   ) -> tuple[int, int, int, int]:
    """DetCon's crop window (see module doc) as (top, left, height, width)."""
    target_area = height * width * torch.empty(1).uniform_(*scale).item()
    aspect = math.exp(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1])).item())
    w = min(max(round(math.sqrt(target_area * aspect)), 1), width)
    h = min(max(round(math.sqrt(target_area / aspect)), 1), height)
    top = int(torch.randint(0, height - h + 1, ()))
    left = int(torch.randint(0, width - w + 1, ()))
    return top, left, h, w


class ClippedRandomCrop(v2.RandomResizedCrop):
    """DetCon's crop window: one draw of area and aspect ratio, the window clipped to the image (see module doc).

    Only the window differs from `RandomResizedCrop` (same resize, same kernels for images and masks). Draws come
    from torch's global generator, which the engine seeds per worker.
    """

    def make_params(self, flat_inputs: list) -> dict:
        top, left, h, w = clipped_window(*v2.query_size(flat_inputs), self.scale, self.ratio)
        return dict(top=top, left=left, height=h, width=w)


def crop_and_flip(size: int, scale: tuple[float, float] = CROP_SCALE, ratio: tuple[float, float] = CROP_RATIO,
                  interpolation: v2.InterpolationMode = v2.InterpolationMode.BICUBIC,
                  sampler: str = "torchvision") -> v2.Compose:
    """The shared geometry: one random crop + flip applied identically to every tv_tensor passed in one call.

    ``interpolation`` applies to images only; masks are always resized with nearest neighbour. ``sampler``: how the
    crop window is drawn, ``authors`` (DetCon's single draw, clipped) or ``torchvision`` (RandomResizedCrop).
    """
    if sampler not in CROP_SAMPLERS:
        raise ValueError(f"crop sampler {sampler!r}: expected one of {', '.join(CROP_SAMPLERS)}")
    crop = ClippedRandomCrop if sampler == "authors" else v2.RandomResizedCrop
    return v2.Compose([
        crop(size, scale=scale, ratio=ratio, interpolation=interpolation, antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
    ])


def to_tv_tensors(image: np.ndarray, label_map: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """(H, W, 3) uint8 RGB and (H, W) integer label map → Image (3, H, W) uint8 and Mask (H, W) int64."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected (H, W, 3) RGB, got shape {image.shape}")
    if label_map.shape != image.shape[:2]:
        raise ValueError(f"label map of shape {label_map.shape} does not match the image {image.shape[:2]}")
    image_t = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    mask_t = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(label_map).astype(np.int64, copy=False)))
    return image_t, mask_t


@dataclass
class MaskViewPair:
    """Two views of an image with their label maps, for DetCon_S (``variant="S"``) or DetCon_B (``"B"``).

    Calling it on (image (H, W, 3) uint8, label_map (H, W) int) returns
    ``(view1, mask1, view2, mask2)``: views (3, S, S) float32 normalised, masks (S, S) int64 with the original ids.
    Picklable: the torchvision pipelines are built lazily in each DataLoader worker.
    """

    size: int
    variant: str = "S"
    scale: tuple[float, float] = CROP_SCALE
    ratio: tuple[float, float] = CROP_RATIO
    crop_sampler: str = "authors"
    colors: tuple[ColorAug, ColorAug] | None = None  # None: the variant's preset (SIMCLR for S, BYOL for B)

    def __post_init__(self):
        if self.variant not in COLOR_PRESETS:
            raise ValueError(f"variant {self.variant!r}: expected one of {', '.join(COLOR_PRESETS)}")
        if self.crop_sampler not in CROP_SAMPLERS:
            raise ValueError(f"crop sampler {self.crop_sampler!r}: expected one of {', '.join(CROP_SAMPLERS)}")
        self._pipelines = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_pipelines"} | {"_pipelines": None}

    def _build(self):
        geometry = crop_and_flip(self.size, self.scale, self.ratio, sampler=self.crop_sampler)
        colors = [color_transform(aug, self.size) for aug in self.colors or COLOR_PRESETS[self.variant]]
        self._pipelines = (geometry, colors)
        return self._pipelines

    @property
    def geometry(self) -> v2.Compose:
        """The crop + flip applied to each view (call it on tv_tensors: an Image, a Mask or both)."""
        return (self._pipelines or self._build())[0]

    def __call__(self, image: np.ndarray, label_map: np.ndarray):
        geometry, colors = self._pipelines or self._build()
        image_t, mask_t = to_tv_tensors(image, label_map)
        out = []
        for color in colors:
            view, mask = geometry(image_t, mask_t)
            view = color(view.as_subclass(torch.Tensor))  # uint8 in: the colour step scales it to [0, 1]
            out += [view, mask.as_subclass(torch.Tensor)]
        return tuple(out)
