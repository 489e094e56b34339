"""Image-level view transforms: MoCo-v2 / SimCLR / BYOL pairs, IoU-constrained pairs, multi-crop, CC and A+.

Geometry lives here and colour in `sslcli.data.views.colour`. Every crop is first sampled as a box in original-image pixel
coordinates ``(x0, y0, x1, y1)`` (x1, y1 exclusive) by small pure functions, so the rules are testable on the boxes:
- `sample_crop_box`: torchvision's RandomResizedCrop rule (area fraction ~ U(scale), log-uniform aspect ratio,
  10 attempts, then a central crop with the ratio clamped).
- `sample_pair_with_max_iou` (Revisiting §3.1): view 2 is resampled until IoU(view 1, view 2) < max_iou; after
  ``max_tries`` the documented fallback keeps the candidate with the lowest IoU seen (flagged ``satisfied=False``).
- `sample_constrained_box` (CC, METHODS.md §2): a small crop is resampled (≤ max_tries) until its intersection with the
  key crop covers ≥ min_overlap of its own area; after that one fresh unconstrained sample is drawn.

Crop index 1 is the key ("anchor") for MoCo; crop 0 and the small crops are queries. A+ only ever touches queries.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms import v2

from sslcli.data.readers.images import DCT_REDUCTIONS, EncodedImage
from sslcli.data.views.colour import IMAGENET_MEAN, IMAGENET_STD, ColourAug, colour_transform, view_colours

Box = tuple[int, int, int, int]

KEY_CROP = 1  # MoCo: crop 1 is the key; crop 0 and the small crops are queries (METHODS.md §2).


# ------------------------------------------------------------------------------------------------------ box sampling
def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=generator))


def _randint(lo: int, hi: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=generator))


def sample_crop_box(height: int, width: int, scale: tuple[float, float] = (0.2, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None) -> Box:
    """A RandomResizedCrop box ``(x0, y0, x1, y1)`` inside a ``height`` × ``width`` image."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            y0 = _randint(0, height - h, generator)
            x0 = _randint(0, width - w, generator)
            return (x0, y0, x0 + w, y0 + h)
    # Fallback (torchvision's): the whole image, cropped centrally to the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    y0, x0 = (height - h) // 2, (width - w) // 2
    return (x0, y0, x0 + w, y0 + h)


def box_area(box: Box) -> float:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def box_intersection(a: Box, b: Box) -> float:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def box_iou(a: Box, b: Box) -> float:
    inter = box_intersection(a, b)
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def overlap_fraction(small: Box, key: Box) -> float:
    """Fraction of ``small``'s area covered by ``key`` (the CC criterion)."""
    area = box_area(small)
    return box_intersection(small, key) / area if area > 0 else 0.0


def sample_pair_with_max_iou(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                             max_iou: float, max_tries: int = 50, generator: torch.Generator | None = None
                             ) -> tuple[Box, Box, bool]:
    """Two crop boxes with IoU < ``max_iou`` (Revisiting §3.1), and whether the bound was met.

    View 1 is sampled once; view 2 is resampled up to ``max_tries`` times. Fallback when no candidate meets the bound:
    the candidate with the lowest IoU (``satisfied`` is then False).
    """
    first = sample_crop_box(height, width, scale, ratio, generator)
    best, best_iou = None, math.inf
    for _ in range(max_tries):
        second = sample_crop_box(height, width, scale, ratio, generator)
        iou = box_iou(first, second)
        if iou < max_iou:
            return first, second, True
        if iou < best_iou:
            best, best_iou = second, iou
    return first, best, False  # type: ignore[return-value]


def sample_constrained_box(height: int, width: int, key: Box, scale: tuple[float, float],
                           ratio: tuple[float, float], min_overlap: float, max_tries: int = 10,
                           generator: torch.Generator | None = None) -> tuple[Box, bool]:
    """A small crop covering ≥ ``min_overlap`` of its area with ``key`` (CC), and whether the rule was met.

    Fallback after ``max_tries`` failures (METHODS.md §2: "then unconstrained", as the authors' code): one fresh
    unconstrained sample. Keeping the last failure instead would always return a crop that breaks the rule.
    """
    for _ in range(max_tries):
        box = sample_crop_box(height, width, scale, ratio, generator)
        if overlap_fraction(box, key) >= min_overlap:
            return box, True
    box = sample_crop_box(height, width, scale, ratio, generator)
    return box, overlap_fraction(box, key) >= min_overlap


# ------------------------------------------------------------------------------------------ reduced-size decoding
def draft_reduction(image: EncodedImage, boxes: list[Box], sizes: list[int]) -> int:
    """The largest DCT reduction (8, 4, 2, else 1) at which every crop box keeps ≥ its output size in pixels.

    The boxes are sampled on the full-size image first, so reducing never changes which crops are drawn, and no crop
    is upsampled from fewer pixels than a full decode would give it.
    """
    if not image.is_jpeg:
        return 1
    for reduction in DCT_REDUCTIONS:
        rh, rw = image.reduced_size(reduction)
        sy, sx = rh / image.height, rw / image.width
        if all(min((b[2] - b[0]) * sx, (b[3] - b[1]) * sy) >= size for b, size in zip(boxes, sizes, strict=True)):
            return reduction
    return 1


def scale_box(box: Box, sx: float, sy: float, height: int, width: int) -> Box:
    """``box`` mapped into an image resized by (sx, sy), edges rounded to the nearest pixel, ≥ 1 pixel wide."""
    x0, y0 = min(round(box[0] * sx), width - 1), min(round(box[1] * sy), height - 1)
    return (x0, y0, max(x0 + 1, min(round(box[2] * sx), width)), max(y0 + 1, min(round(box[3] * sy), height)))


# ------------------------------------------------------------------------------------------------------ pixel views
def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array → (3, H, W) uint8 tensor."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def crop_resize(image: torch.Tensor, box: Box, size: int, flip: bool = False,
                interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR) -> torch.Tensor:
    """Cut ``box`` from a (3, H, W) uint8 image, resize to (3, size, size) (antialiased), optionally flip."""
    x0, y0, x1, y1 = box
    out = v2.functional.resize(image[:, y0:y1, x0:x1], [size, size], interpolation, antialias=True)
    return out.flip(-1) if flip else out


class CropViews:
    """The views of one image for the image-level methods: two large crops (+ ``n_small`` small crops).

    Args:
        large_size, large_scale: side and area-fraction range of crops 0 and 1 (MoCo-v2 224 / (0.2, 1); MC 160).
        colours: photometric pipelines of crop 0 and crop 1 (`sslcli.data.views.colour` presets); small crops use crop 0's.
        small_size, small_scale, n_small: multi-crop small crops (MC: 96 px, (0.05, 0.14), 4).
        ratio: aspect-ratio range (3/4, 4/3); flip_p: horizontal-flip probability (0.5).
        max_iou, iou_tries: Revisiting §3.1 IoU-constrained pair (None = unconstrained).
        cc_min_overlap, cc_tries: constrained multi-crop (None = unconstrained small crops).
        aplus_p: A+ probability for each query crop (crop 0 and small crops; never crop 1): Flip → AutoAugment(ImageNet)
            instead of the standard colour pipeline.
        interpolation: resize of every crop: bilinear (MoCo-v2, torchvision's RandomResizedCrop default) or bicubic
            (SimCLR, BYOL and DetCon).

    ``sample["image"]`` is an (H, W, 3) uint8 array or an `EncodedImage` (``accepts_encoded``): then the boxes are
    sampled on the header's size and the JPEG is decoded at the largest reduction that leaves every crop ≥ its output
    size (`draft_reduction`); the random draws are the same as for the decoded array.
    Calling it on ``{"image": (H, W, 3) uint8, "index": i}`` returns ``{"views": (2, 3, L, L) float,
    "boxes": (2 + n_small, 4) float, "flips": (2 + n_small,) bool (crop mirrored), "image_size": (2,) int (H, W of
    the image the boxes are in), "index": i}`` plus ``"small": (n_small, 3, S, S)`` when n_small > 0 (PixPro reads
    the boxes, flips and image size as its crops' original-image coordinates).
    """

    accepts_encoded = True  # the engine passes EncodedImage samples (reduced-size decoding)

    def __init__(self, large_size: int, large_scale: tuple[float, float], colours: tuple[ColourAug, ColourAug],
                 small_size: int = 96, small_scale: tuple[float, float] = (0.05, 0.14), n_small: int = 0,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5, max_iou: float | None = None,
                 iou_tries: int = 50, cc_min_overlap: float | None = None, cc_tries: int = 10, aplus_p: float = 0.0,
                 interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR):
        self.large_size, self.large_scale = large_size, tuple(large_scale)
        self.small_size, self.small_scale, self.n_small = small_size, tuple(small_scale), n_small
        self.ratio, self.flip_p = tuple(ratio), flip_p
        self.max_iou, self.iou_tries = max_iou, iou_tries
        self.cc_min_overlap, self.cc_tries = cc_min_overlap, cc_tries
        self.aplus_p, self.interpolation = aplus_p, interpolation
        self.colours = tuple(colours)
        self.large_colours = (colour_transform(colours[0], large_size), colour_transform(colours[1], large_size))
        self.small_colour = colour_transform(colours[0], small_size) if n_small else None
        self.autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET) if aplus_p > 0 else None

    def sample_boxes(self, height: int, width: int, generator: torch.Generator | None = None) -> list[Box]:
        """Crop boxes in image coordinates: [crop 0, crop 1 (key), small crops...]."""
        if self.max_iou is not None:
            first, second, _ = sample_pair_with_max_iou(height, width, self.large_scale, self.ratio, self.max_iou,
                                                        self.iou_tries, generator)
        else:
            first = sample_crop_box(height, width, self.large_scale, self.ratio, generator)
            second = sample_crop_box(height, width, self.large_scale, self.ratio, generator)
        boxes = [first, second]
        for _ in range(self.n_small):
            if self.cc_min_overlap is not None:
                box, _ = sample_constrained_box(height, width, second, self.small_scale, self.ratio,
                                                self.cc_min_overlap, self.cc_tries, generator)
            else:
                box = sample_crop_box(height, width, self.small_scale, self.ratio, generator)
            boxes.append(box)
        return boxes

    def draw_flip(self) -> bool:
        """Whether a crop is mirrored (p = ``flip_p``): the one flip draw of the CPU views and the device views."""
        return float(torch.rand(1)) < self.flip_p

    def _colour(self, crop: torch.Tensor, index: int) -> torch.Tensor:
        """Photometric part for crop ``index`` of a (3, S, S) uint8 crop → normalised float."""
        if index != KEY_CROP and self.autoaugment is not None and float(torch.rand(1)) < self.aplus_p:
            # A+ branch: AutoAugment works on uint8; the flip was already drawn with the geometry.
            out = self.autoaugment(crop).float() / 255
            return v2.functional.normalize(out, IMAGENET_MEAN, IMAGENET_STD)
        pipeline = self.large_colours[index] if index < 2 else self.small_colour
        return pipeline(crop)  # type: ignore[misc]  # a uint8 crop: OpenCvColour scales it to [0, 1] itself

    def sizes(self) -> list[int]:
        """Output side of each crop, in `sample_boxes` order."""
        return [self.large_size] * 2 + [self.small_size] * self.n_small

    def __call__(self, sample: dict) -> dict:
        image, sizes = sample["image"], self.sizes()
        if isinstance(image, EncodedImage):
            boxes = self.sample_boxes(image.height, image.width)
            pixels = image_to_tensor(image.decode(draft_reduction(image, boxes, sizes)))
            rh, rw = pixels.shape[1:]
            cut = [scale_box(b, rw / image.width, rh / image.height, rh, rw) for b in boxes]
        else:
            pixels = image_to_tensor(image)
            boxes = cut = self.sample_boxes(*pixels.shape[1:])
        crops, flips = [], []
        for i, (box, size) in enumerate(zip(cut, sizes, strict=True)):
            flips.append(self.draw_flip())
            crop = crop_resize(pixels, box, size, flips[-1], self.interpolation)
            crops.append(self._colour(crop, i))
        height, width = (image.height, image.width) if isinstance(image, EncodedImage) else pixels.shape[1:]
        out = {"views": torch.stack(crops[:2]), "boxes": torch.tensor(boxes, dtype=torch.float32),
               "flips": torch.tensor(flips), "image_size": torch.tensor([height, width]), "index": sample["index"]}
        if self.n_small:
            out["small"] = torch.stack(crops[2:])
        return out


def recipe_crop_pair(spec, crop_scale: tuple[float, float], colours: tuple[ColourAug, ColourAug],
                     interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR) -> CropViews:
    """A method's two-crop recipe (crop area range, colour presets of views 1 and 2, resize) at ``data.image_size``,
    under the run spec's view overrides (``views.crop_scale``, ``views.colour``): SimCLR, BYOL, DenseCL, PixPro."""
    return CropViews(spec.data.image_size, spec.views.crop_scale or crop_scale,
                     colours=view_colours(spec.views.colour, colours), interpolation=interpolation)
