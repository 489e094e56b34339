"""DetCon's views (METHODS.md §3): the image and its label map get the same crop and flip, on the CPU
(`DetconTransform`) and on the device (`MaskDeviceViews`, ``data.pipeline: gpu``).

Geometry: a random crop (area U[0.08, 1] of the image, log-uniform aspect ratio in [3/4, 4/3]) resized to S×S, then a
horizontal flip with probability ½, drawn once and applied to both tensors by torchvision v2 (`tv_tensors.Image` is
resized bicubically, `tv_tensors.Mask` with nearest neighbour, so mask ids are never blended). Two crop samplers:
``authors`` (the default for DetCon): DetCon's own procedure (`get_random_crop_window` in the authors'
``utils/tf_image_ops.py``): draw the area and the aspect ratio once, w = round(√(area·r)), h = round(√(area/r)), clip
w to the image width and h to its height, place the window uniformly; no rejection, no retry. ``torchvision``:
`RandomResizedCrop`, which rejects windows that do not fit and retries (up to 10 times, then a central crop), so its
crops are smaller on average (mean area 0.435 vs 0.519 of a 480×640 image, docs/detcon.md). Colour follows afterwards and never moves
pixels: DetCon_S uses SimCLR's pair of presets, DetCon_B BYOL's (`sslcli.data.views.colour`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from sslcli.data.readers.images import EncodedImage
from sslcli.data.views.colour import BYOL_COLOUR, SIMCLR_COLOUR, ColourAug, colour_transform, sample_colour_params
from sslcli.data.views.crops import sample_crop_box
from sslcli.data.views.device_ops import (
    DeviceViews,
    coloured_crops,
    decode_fields,
    encoded_fields,
)
from sslcli.data.views.label_maps import MaskSource

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
# DetCon_S adopts SimCLR's colour pipeline, DetCon_B BYOL's (DetCon App. A.1).
COLOUR_PRESETS: dict[str, tuple[ColourAug, ColourAug]] = {"S": SIMCLR_COLOUR, "B": BYOL_COLOUR}


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
    colours: tuple[ColourAug, ColourAug] | None = None  # None: the variant's preset (SIMCLR for S, BYOL for B)

    def __post_init__(self):
        if self.variant not in COLOUR_PRESETS:
            raise ValueError(f"variant {self.variant!r}: expected one of {', '.join(COLOUR_PRESETS)}")
        if self.crop_sampler not in CROP_SAMPLERS:
            raise ValueError(f"crop sampler {self.crop_sampler!r}: expected one of {', '.join(CROP_SAMPLERS)}")
        self._pipelines = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_pipelines"} | {"_pipelines": None}

    def _build(self):
        geometry = crop_and_flip(self.size, self.scale, self.ratio, sampler=self.crop_sampler)
        colours = [colour_transform(aug, self.size) for aug in self.colours or COLOUR_PRESETS[self.variant]]
        self._pipelines = (geometry, colours)
        return self._pipelines

    @property
    def geometry(self) -> v2.Compose:
        """The crop + flip applied to each view (call it on tv_tensors: an Image, a Mask or both)."""
        return (self._pipelines or self._build())[0]

    def __call__(self, image: np.ndarray, label_map: np.ndarray):
        geometry, colours = self._pipelines or self._build()
        image_t, mask_t = to_tv_tensors(image, label_map)
        out = []
        for colour in colours:
            view, mask = geometry(image_t, mask_t)
            view = colour(view.as_subclass(torch.Tensor))  # uint8 in: the colour step scales it to [0, 1]
            out += [view, mask.as_subclass(torch.Tensor)]
        return tuple(out)


def label_grid(label_map: torch.Tensor, n: int) -> torch.Tensor:
    """(S, S) integer label map → (n, n) int64 ids: the most frequent id of each cell, ties to the smallest.

    Cells are `torch.nn.functional.adaptive_avg_pool2d`'s windows [⌊i·S/n⌋, ⌈(i+1)·S/n⌉): the argmax over ids of the
    average-pooled one-hot masks (a one-hot mask's average over a window is its pixel count / window area, so the
    argmax is the most frequent id, ties going to the first one-hot channel, the smallest id). One implementation
    serves both pipelines: this is `label_grids` on a batch of one, the function the device views call.
    """
    return label_grids(label_map[None], n)[0]


class DetconTransform:
    """Sample dict → ``{"views": (2, 3, S, S) float, "masks": (2, n, n) int64}``; picklable (runs in workers).

    The image's label map comes from a `MaskSource`; each view's map is brought onto the encoder's res5 grid by
    `label_grid`."""

    def __init__(self, masks: MaskSource, views: MaskViewPair, grid_side: int):
        """``grid_side``: the side of the encoder's res5 map for ``views.size`` px views (`map_side`)."""
        self.masks, self.views, self.grid_side = masks, views, grid_side

    def __call__(self, sample: dict) -> dict:
        label_map = self.masks.label_map(sample)
        view1, mask1, view2, mask2 = self.views(np.asarray(sample["image"]), label_map)
        grids = torch.stack([label_grid(mask1, self.grid_side), label_grid(mask2, self.grid_side)])
        return {"views": torch.stack([view1, view2]), "masks": grids}


# ----------------------------------------------------------------------------------- device views (data.pipeline: gpu)
def crop_label_maps(maps: list[torch.Tensor], boxes: torch.Tensor, size: int, flips: torch.Tensor,
                    device: torch.device) -> torch.Tensor:
    """(N, size, size) int64: window ``boxes[n]`` (x0, y0, x1, y1) of label map ``maps[n]`` (H_n, W_n), resized with
    torch's ``nearest`` rule (source index ⌊i·in/out⌋ in float32, capped at in − 1) and mirrored where ``flips[n]``;
    one gather over the maps of the batch laid end to end."""
    sizes = torch.tensor([m.numel() for m in maps])
    widths = torch.tensor([m.shape[1] for m in maps])
    offsets = torch.cumsum(sizes, 0) - sizes
    flat = torch.cat([m.reshape(-1).long() for m in maps]).to(device, non_blocking=True)
    b = boxes.long()
    i = torch.arange(size, dtype=torch.float32)

    def indices(start, length):  # (N, size) source indices, as upsample_nearest computes them
        scale = length.float() / size
        return start[:, None] + torch.minimum((i[None] * scale[:, None]).floor().long(), length[:, None] - 1)

    ys = indices(b[:, 1], b[:, 3] - b[:, 1])
    xs = indices(b[:, 0], b[:, 2] - b[:, 0])
    xs = torch.where(flips.bool()[:, None], xs.flip(1), xs)
    index = offsets[:, None, None] + ys[:, :, None] * widths[:, None, None] + xs[:, None, :]
    return flat[index.to(device, non_blocking=True)]


def label_grids(maps: torch.Tensor, n: int) -> torch.Tensor:
    """(N, S, S) label maps → (N, n, n) int64: the most frequent id in each of adaptive_avg_pool2d's windows
    [⌊i·S/n⌋, ⌈(i+1)·S/n⌉), ties to the smallest id (DetCon's ``label_grid``, batched: sort each window, count runs)."""
    count, side = maps.shape[0], maps.shape[-1]
    starts = torch.tensor([i * side // n for i in range(n)])
    ends = torch.tensor([-(-(i + 1) * side // n) for i in range(n)])
    length = int((ends - starts).max())
    offset = torch.arange(length)
    idx = (starts[:, None] + offset).clamp(max=side - 1).to(maps.device)  # (n, L)
    valid = (starts[:, None] + offset < ends[:, None]).to(maps.device)
    cells = maps.long()[:, idx[:, :, None, None], idx[None, None, :, :]]  # (N, n, L, n, L)
    cells = cells.permute(0, 1, 3, 2, 4).reshape(count, n * n, length * length)
    inside = (valid[:, None, :, None] & valid[None, :, None, :]).reshape(n * n, -1)  # (cell y, cell x, ly, lx)
    sentinel = torch.iinfo(torch.int64).max  # padding of the shorter windows: sorts last, never counted
    values, _ = torch.where(inside, cells, torch.full_like(cells, sentinel)).sort(dim=-1)
    new_run = torch.ones_like(values, dtype=torch.bool)
    new_run[..., 1:] = values[..., 1:] != values[..., :-1]
    run = new_run.long().cumsum(-1) - 1
    run_length = torch.zeros_like(values).scatter_add_(-1, run, torch.ones_like(values)).gather(-1, run)
    run_length = torch.where(values == sentinel, torch.full_like(run_length, -1), run_length)
    best = run_length.argmax(dim=-1, keepdim=True)  # the first longest run: the smallest id among ties
    return values.gather(-1, best).view(count, n, n)


class MaskDeviceViews(DeviceViews):
    """DetCon's views (`DetconTransform`: a MaskSource and a `MaskViewPair`) on the device:
    ``apply`` returns ``{"views": (N, 2, 3, S, S), "masks": (N, 2, n, n) int64}`` like the CPU path."""

    def __init__(self, transform):
        self.masks, self.pair, self.grid_side = transform.masks, transform.views, transform.grid_side
        self.colours = COLOUR_PRESETS[self.pair.variant]

    def _window(self, height: int, width: int) -> tuple[int, int, int, int]:
        """A crop box (x0, y0, x1, y1) drawn by the view pair's sampler."""
        if self.pair.crop_sampler == "authors":
            top, left, h, w = clipped_window(height, width, self.pair.scale, self.pair.ratio)
            return left, top, left + w, top + h
        return sample_crop_box(height, width, tuple(self.pair.scale), tuple(self.pair.ratio))

    def __call__(self, sample: dict) -> dict:
        image: EncodedImage = sample["image"]
        # The mask source reads only the image's shape: a stand-in with the header's size, no pixels.
        shape_only = np.broadcast_to(np.zeros((), np.uint8), (image.height, image.width, 3))
        label_map = np.ascontiguousarray(self.masks.label_map({**sample, "image": shape_only}))
        boxes, flips, colour = [], [], []
        for aug in self.colours:  # the CPU path's order: view 1's crop, flip, colour, then view 2's
            boxes.append(self._window(image.height, image.width))
            flips.append(float(torch.rand(1)) < 0.5)
            colour.append(sample_colour_params(aug))
        return encoded_fields(image) | {"label_map": torch.from_numpy(label_map),
                                        "boxes": torch.tensor(boxes, dtype=torch.float32),
                                        "flips": torch.tensor(flips), "colour": torch.stack(colour)}

    def region_stores(self) -> list:
        return [self.masks.store()] if self.masks.kind == "store" else []

    def apply(self, batch: dict, device: torch.device) -> dict:
        images = decode_fields(batch, device)
        size = self.pair.size
        views, masks = [], []
        for j in range(2):
            boxes, flips = batch["boxes"][:, j], batch["flips"][:, j]
            views.append(coloured_crops(images, boxes, size, flips, batch["colour"][:, j], bicubic=True))
            masks.append(label_grids(crop_label_maps(batch["label_map"], boxes, size, flips, device),
                                     self.grid_side))
        return {"views": torch.stack(views, dim=1), "masks": torch.stack(masks, dim=1)}
