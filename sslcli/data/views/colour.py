"""Colour (photometric) augmentation shared by every method (METHODS.md §1–3), on float (C, H, W) tensors in [0, 1].

The code spells it "colour" throughout; torchvision's own names (``v2.ColorJitter``) keep theirs. The presets carry a
``_COLOUR`` suffix (`SIMCLR_COLOUR`, not ``SIMCLR``) so they never read as the method classes.

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
class ColourAug:
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
MOCO_V2_COLOUR = ColourAug()
# SimCLR / DetCon_S (METHODS.md §3): blur always on view 1, never on view 2, no solarize.
SIMCLR_COLOUR = (ColourAug(0.8, 0.8, 0.8, 0.2, blur_p=1.0), ColourAug(0.8, 0.8, 0.8, 0.2, blur_p=0.0))
# BYOL / DetCon_B (METHODS.md §3): blur 1.0 / 0.1, solarize 0 / 0.2.
BYOL_COLOUR = (ColourAug(0.4, 0.4, 0.2, 0.1, blur_p=1.0), ColourAug(0.4, 0.4, 0.2, 0.1, blur_p=0.1, solarize_p=0.2))


# Columns of the per-crop colour parameter rows (one float row per crop, so batches collate into one tensor).
JITTER_ON, ORDER, FACTORS, GRAY, BLUR_ON, SIGMA, SOLARIZE = 0, slice(1, 5), slice(5, 9), 9, 10, 11, 12
N_COLOUR_PARAMS = 13
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # torchvision ColorJitter's fn_idx numbering


def _uniform(lo: float, hi: float) -> float:
    return float(torch.empty(1).uniform_(lo, hi))


def sample_colour_params(aug: ColourAug) -> torch.Tensor:
    """One crop's colour parameters, drawn as torchvision's transforms draw them (RandomApply p, ColorJitter.get_params:
    a random order of the four adjustments, factors U[max(0, 1−x), 1+x] and hue U[−h, h]; grayscale p; blur p with
    σ ~ U(sigma); solarize p). A step with p = 0 is not drawn at all. The one sampler of both pipelines: `OpenCvColour`
    (CPU) applies the row it draws here, the device views send it to `sslcli.data.views.device_ops.apply_colour`."""
    p = torch.zeros(N_COLOUR_PARAMS)
    p[ORDER] = torch.arange(4, dtype=torch.float32)
    p[FACTORS] = torch.tensor([1.0, 1.0, 1.0, 0.0])
    if aug.jitter_p > 0 and float(torch.rand(1)) < aug.jitter_p:
        p[JITTER_ON] = 1
        p[ORDER] = torch.randperm(4).float()
        p[FACTORS] = torch.tensor([_uniform(max(0.0, 1 - x), 1 + x) if x > 0 else 1.0
                                   for x in (aug.brightness, aug.contrast, aug.saturation)]
                                  + [_uniform(-aug.hue, aug.hue) if aug.hue > 0 else 0.0])
    if aug.gray_p > 0:
        p[GRAY] = float(float(torch.rand(1)) < aug.gray_p)
    if aug.blur_p > 0 and float(torch.rand(1)) < aug.blur_p:
        p[BLUR_ON], p[SIGMA] = 1, _uniform(*aug.blur_sigma)
    if aug.solarize_p > 0:
        p[SOLARIZE] = float(float(torch.rand(1)) < aug.solarize_p)
    return p


PRESETS: dict[str, tuple[ColourAug, ColourAug]] = {"moco-v2": (MOCO_V2_COLOUR, MOCO_V2_COLOUR), "simclr": SIMCLR_COLOUR,
                                               "byol": BYOL_COLOUR}


def view_colours(colour, recipe: tuple[ColourAug, ColourAug]) -> tuple[ColourAug, ColourAug]:
    """The two views' colour pipelines for a run spec's ``views.colour``: "recipe" keeps the method's own
    ``recipe``, a preset name picks from `PRESETS`, a list of one or two `ColourSpec`-like models sets them."""
    if colour == "recipe":
        return recipe
    if isinstance(colour, str):
        return PRESETS[colour]
    augs = [ColourAug(**{**c.model_dump(), "blur_sigma": tuple(c.blur_sigma)}) for c in colour]
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
    rgb = _hue_hwc(np.ascontiguousarray(image.permute(1, 2, 0).numpy(), dtype=np.float32), hue_factor)
    return torch.from_numpy(np.clip(rgb, 0.0, 1.0, out=rgb)).permute(2, 0, 1)


class ColourJitter(v2.ColorJitter):
    """torchvision's ``v2.ColorJitter`` (same parameters, same random draws) with the hue step run by
    `adjust_hue_opencv` on plain float CPU images; other inputs take torchvision's kernels."""

    def _call_kernel(self, functional, inpt, *args, **kwargs):
        if (functional is v2.functional.adjust_hue and type(inpt) is torch.Tensor and inpt.device.type == "cpu"
                and inpt.dtype == torch.float32 and inpt.ndim == 3 and inpt.shape[0] == 3):
            return adjust_hue_opencv(inpt, **kwargs)
        return super()._call_kernel(functional, inpt, *args, **kwargs)


def torchvision_colour_transform(aug: ColourAug, image_size: int, normalize: bool = True,
                                jitter: type = ColourJitter) -> v2.Compose:
    """``aug`` as a torchvision v2 pipeline on float (C, H, W) in [0, 1] (``jitter``: v2.ColorJitter gives the
    pipeline before issue 14): the reference `OpenCvColour` reproduces, and its fallback off the CPU."""
    steps: list[torch.nn.Module] = []
    if aug.jitter_p > 0:
        steps.append(v2.RandomApply([jitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)], p=aug.jitter_p))
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


def _jitter_range(x: float, center: float, clip_at_zero: bool) -> tuple[float, float] | None:
    """ColorJitter's range for a strength x (None: the factor is not drawn)."""
    lo, hi = center - x, center + x
    if clip_at_zero:
        lo = max(lo, 0.0)
    return None if lo == hi == center else (lo, hi)


_LUMA = np.array([0.2989, 0.587, 0.114], np.float32)  # torchvision's rgb_to_grayscale weights
# Normalisation (x − mean) / std as a 3 × 4 affine colour matrix for cv2.transform.
_NORMALISE = np.concatenate([np.diag(1 / np.array(IMAGENET_STD)),
                             (-np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD))[:, None]], axis=1).astype(np.float32)


class OpenCvColour:
    """The pipeline of `torchvision_colour_transform` on one CPU image, computed on an (H, W, 3) float32 array with
    OpenCV and numpy: the same random draws in the same order (RandomApply / RandomGrayscale / RandomSolarize:
    ``torch.rand(1) < p``; ColorJitter: ``randperm(4)`` then one ``uniform_`` per factor; blur σ ``uniform_``; all
    drawn by `sample_colour_params`, the sampler of the device pipeline too), the
    same maths (blends with torchvision's luma, hue through HSV, Gaussian kernel, reflect border), equal to torchvision
    within 5e-5 after normalisation (tests/test_transforms.py). One layout change in and out instead of a permute and
    copy per step and torchvision's per-call dispatch.

    Input: a (3, H, W) uint8 or float [0, 1] CPU tensor; output: (3, H, W) float32. Other inputs (CUDA, batches)
    take the torchvision pipeline.
    """

    def __init__(self, aug: ColourAug, image_size: int, normalize: bool = True):
        self.aug, self.image_size, self.normalize = aug, image_size, normalize
        self.kernel = blur_kernel_size(image_size)
        self.ranges = (_jitter_range(aug.brightness, 1.0, True), _jitter_range(aug.contrast, 1.0, True),
                       _jitter_range(aug.saturation, 1.0, True), _jitter_range(aug.hue, 0.0, False))

    def _torchvision(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype == torch.uint8:
            image = image.float() / 255
        return torchvision_colour_transform(self.aug, self.image_size, self.normalize)(image)

    def _jitter(self, x: np.ndarray, order: list[int], factors: list[float]) -> np.ndarray:
        """ColorJitter's four adjustments in ``order``; one with strength 0 (never drawn) is left out."""
        import cv2

        for op in order:
            if self.ranges[op] is None:
                continue
            f = factors[op]
            if op == BRIGHTNESS:  # x·f
                x = x * np.float32(f)
            elif op == CONTRAST:  # blend with the mean luma
                mean = float(cv2.transform(x, _LUMA[None]).mean(dtype=np.float64))
                x = x * np.float32(f) + np.float32(mean * (1 - f))
            elif op == SATURATION:  # blend with the luma, one 3×3 colour matrix
                x = cv2.transform(x, (f * np.eye(3) + (1 - f) * np.tile(_LUMA, (3, 1))).astype(np.float32))
            else:
                x = _hue_hwc(x, f)
            np.clip(x, 0.0, 1.0, out=x)
        return x

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        import cv2

        if type(image) is not torch.Tensor or image.device.type != "cpu" or image.ndim != 3 or image.shape[0] != 3:
            return self._torchvision(image)
        planes = [np.asarray(c) for c in image.numpy()]  # (H, W) views of the three channels, no copy
        hwc = cv2.merge(planes) if planes[0].flags.c_contiguous else np.ascontiguousarray(image.permute(1, 2, 0))
        x = np.divide(hwc, np.float32(255), dtype=np.float32) if hwc.dtype == np.uint8 else hwc.astype(np.float32)
        params = sample_colour_params(self.aug)  # the draws the device pipeline makes, in the same order
        if params[JITTER_ON]:
            x = self._jitter(x, params[ORDER].long().tolist(), params[FACTORS].tolist())
        if params[GRAY]:
            x = cv2.transform(x, np.tile(_LUMA, (3, 1)))
        if params[BLUR_ON]:
            sigma = float(params[SIGMA])
            x = cv2.GaussianBlur(x, (self.kernel, self.kernel), sigmaX=sigma, sigmaY=sigma,
                                 borderType=cv2.BORDER_REFLECT_101)
        if params[SOLARIZE]:
            np.subtract(np.float32(1), x, out=x, where=x >= 0.5)
        if self.normalize:  # (x − mean) / std as one affine colour map
            x = cv2.transform(x, _NORMALISE)
        return torch.from_numpy(np.stack(cv2.split(x)))



def _hue_hwc(x: np.ndarray, factor: float) -> np.ndarray:
    """`adjust_hue_opencv` on an (H, W, 3) float32 array in [0, 1]: hue + factor turns through OpenCV's float HSV."""
    import cv2

    h, s, v = cv2.split(cv2.cvtColor(x, cv2.COLOR_RGB2HSV))  # float input: H in degrees [0, 360), S, V in [0, 1]
    h += np.float32(360.0 * factor)  # |factor| ≤ 0.5: one wrap brings it back to [0, 360)
    np.subtract(h, np.float32(360), out=h, where=h >= 360)
    np.add(h, np.float32(360), out=h, where=h < 0)
    return cv2.cvtColor(cv2.merge([h, s, v]), cv2.COLOR_HSV2RGB)


def colour_transform(aug: ColourAug, image_size: int, normalize: bool = True) -> OpenCvColour:
    """The photometric pipeline for ``aug`` (jitter → grayscale → blur → solarize → normalise): `OpenCvColour`, i.e.
    `torchvision_colour_transform`'s draws and outputs, cheaper per core."""
    return OpenCvColour(aug, image_size, normalize)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of a float (C, H, W) tensor in [0, 1] (evaluation pipelines)."""
    return v2.functional.normalize(image, IMAGENET_MEAN, IMAGENET_STD)
