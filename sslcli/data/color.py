"""Photometric augmentation shared by every method (METHODS.md §1–3), on float (C, H, W) tensors in [0, 1].

Geometry (crops, flips) lives with each method's view transform because masks and boxes must follow it; colour
never moves pixels, so one module serves MoCo-v2, SimCLR, BYOL, DetCon_S and DetCon_B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ColorAug:
    """One view's photometric pipeline: jitter (p) → grayscale (p) → blur (p) → solarize (p) → normalise."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


# MoCo-v2 (METHODS.md §1): both views identical.
MOCO_V2 = ColorAug()
# SimCLR / DetCon_S (METHODS.md §3): blur always on view 1, never on view 2, no solarize.
SIMCLR = (ColorAug(0.8, 0.8, 0.8, 0.2, blur_p=1.0), ColorAug(0.8, 0.8, 0.8, 0.2, blur_p=0.0))
# BYOL / DetCon_B (METHODS.md §3): blur 1.0 / 0.1, solarize 0 / 0.2.
BYOL = (ColorAug(0.4, 0.4, 0.2, 0.1, blur_p=1.0), ColorAug(0.4, 0.4, 0.2, 0.1, blur_p=0.1, solarize_p=0.2))


PRESETS: dict[str, tuple[ColorAug, ColorAug]] = {"moco-v2": (MOCO_V2, MOCO_V2), "simclr": SIMCLR, "byol": BYOL}


def view_colours(colour, recipe: tuple[ColorAug, ColorAug]) -> tuple[ColorAug, ColorAug]:
    """The two views' colour pipelines for a run spec's ``views.colour``: "recipe" keeps the method's own
    ``recipe``, a preset name picks from `PRESETS`, a list of one or two `ColourSpec`-like models sets them."""
    if colour == "recipe":
        return recipe
    if isinstance(colour, str):
        return PRESETS[colour]
    augs = [ColorAug(**{**c.model_dump(), "blur_sigma": tuple(c.blur_sigma)}) for c in colour]
    return (augs[0], augs[-1])


def blur_kernel_size(image_size: int) -> int:
    """About 10 % of the image side, odd (SimCLR: 23 px at 224)."""
    k = max(3, int(0.1 * image_size))
    return k if k % 2 else k + 1


class GaussianBlur(torch.nn.Module):
    """torchvision's ``v2.GaussianBlur`` (σ ~ U(sigma) per call drawn the same way, same kernel, reflect border) run
    with OpenCV on CPU tensors: torchvision convolves with the full 2-D kernel, ~100 ms for a 23-px kernel on a
    224² image in one thread versus ~0.5 ms here. Other devices fall back to torchvision."""

    def __init__(self, kernel_size: int, sigma: tuple[float, float]):
        super().__init__()
        self.kernel_size, self.sigma = kernel_size, tuple(sigma)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        sigma = torch.empty(1).uniform_(self.sigma[0], self.sigma[1]).item()
        if image.device.type != "cpu" or not image.is_floating_point():
            return v2.functional.gaussian_blur(image, [self.kernel_size] * 2, [sigma, sigma])
        import cv2

        hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        out = cv2.GaussianBlur(hwc, (self.kernel_size, self.kernel_size), sigmaX=sigma, sigmaY=sigma,
                               borderType=cv2.BORDER_REFLECT_101)
        return torch.from_numpy(out.reshape(hwc.shape)).permute(2, 0, 1)


def adjust_hue_opencv(image: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """torchvision's ``adjust_hue`` (RGB → HSV, hue + factor turns, → RGB) for a float (3, H, W) CPU image in
    [0, 1], through OpenCV's float HSV conversions: ~6x faster than torchvision's tensor version (the most expensive
    step of the CPU views, ~25 ms of a 224² crop) and equal to it within 1e-6 (tests/test_transforms.py)."""
    import cv2

    hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy(), dtype=np.float32)
    hsv = cv2.cvtColor(hwc, cv2.COLOR_RGB2HSV)  # float input: H in degrees [0, 360), S and V in [0, 1]
    hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * hue_factor, 360.0)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return torch.from_numpy(np.clip(rgb, 0.0, 1.0, out=rgb)).permute(2, 0, 1)


class ColorJitter(v2.ColorJitter):
    """torchvision's ``v2.ColorJitter`` (same parameters, same random draws) with the hue step run by
    `adjust_hue_opencv` on plain float CPU images; other inputs take torchvision's kernels."""

    def _call_kernel(self, functional, inpt, *args, **kwargs):
        if (functional is v2.functional.adjust_hue and type(inpt) is torch.Tensor and inpt.device.type == "cpu"
                and inpt.dtype == torch.float32 and inpt.ndim == 3 and inpt.shape[0] == 3):
            return adjust_hue_opencv(inpt, **kwargs)
        return super()._call_kernel(functional, inpt, *args, **kwargs)


def color_transform(aug: ColorAug, image_size: int, normalize: bool = True) -> v2.Compose:
    """The torchvision v2 pipeline for ``aug``; input float (C, H, W) in [0, 1]."""
    steps: list[torch.nn.Module] = []
    if aug.jitter_p > 0:
        steps.append(v2.RandomApply([ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)],
                                    p=aug.jitter_p))
    if aug.gray_p > 0:
        steps.append(v2.RandomGrayscale(p=aug.gray_p))
    if aug.blur_p > 0:
        steps.append(v2.RandomApply([GaussianBlur(blur_kernel_size(image_size), sigma=aug.blur_sigma)],
                                    p=aug.blur_p))
    if aug.solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=0.5, p=aug.solarize_p))
    if normalize:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(steps)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of a float (C, H, W) tensor in [0, 1] (evaluation pipelines)."""
    return v2.functional.normalize(image, IMAGENET_MEAN, IMAGENET_STD)
