"""D3SSL's views (METHODS.md §5; docs/d3ssl.md): `D3sslViews` on the CPU, `D3sslDeviceViews` on the device.

`D3sslViews` (behind a `sslcli.data.views.stored_boxes.StoredBoxViews`) takes SoCo's paper geometry and colour from
the shared `RegionViews`, then, with one seeded numpy generator per sample: RBJ, PRC's holes (+ fill colours), PRM's
masks and the de-positioning draw (shift t, m̂, b̂), from `sslcli.data.views.region_aug`.
`D3sslDeviceViews` (``data.pipeline: gpu``) makes the same draws in the worker with the same generator, in the same
order (the two share every sampler); the device fills the holes and shifts x2 by t for x3's foreground.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sslcli.data.readers.images import EncodedImage
from sslcli.data.views.colour import BYOL_COLOUR, IMAGENET_MEAN, IMAGENET_STD, ColourAug, sample_colour_params
from sslcli.data.views.device_ops import (
    DeviceViews,
    coloured_crops,
    decode_fields,
    downsample_views,
    encoded_fields,
)
from sslcli.data.views.region_aug import (
    depositioning_composite,
    fill_values,
    restricted_box_jitter,
    sample_prc_cutouts,
    sample_prm_rects,
)
from sslcli.data.views.regions import RegionViews
from sslcli.data.views.stored_boxes import image_boxes
from sslcli.errors import InputError


def _normalised(colours: np.ndarray) -> torch.Tensor:
    """uint8 colours (3,) or (n, 3) → (3, 1) or (3, n) float, normalised as the views are."""
    values = torch.as_tensor(colours, dtype=torch.float32).reshape(-1, 3) / 255
    return ((values - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).T


@dataclass
class D3sslViews:
    """(image (H, W, 3) uint8, boxes (M, 4)) → the sample dict `D3ssl.forward` reads (module docstring); picklable.

    Keys: "view1", "view2": (3, S, S) float (view1 already PRC'd); "view2s": (3, S/2, S/2) (PRC'd); "prm1" (S, S),
    "prm2s" (S/2, S/2) bool: PRM's background pixels (all False without de-coupling); "boxes": (3, K, 4) float of
    x1, x2, x2s after RBJ; with de-positioning also the parts of the de-positioned view x3: "depositioned_foreground"
    (3, S, S) (x2 shifted by t), "depositioned_mask" (S, S) bool (m̂, where x3 shows that foreground) and
    "depositioned_boxes" (K, 4) (b̂ = x2's boxes + t).
    """

    size: int
    boxes_per_image: int = 4
    crop_scale: tuple[float, float] = (0.4, 1.0)
    prc_side_fraction: tuple[float, float] = (0.2, 0.5)
    prc_max_cover: float = 0.5
    prc_fill: str = "mean"
    prm_scale: tuple[float, float] = (0.2, 0.6)
    prm_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rbj_scale: tuple[float, float] = (0.9, 1.0)
    rbj_shift: float = 0.1
    decoupling: bool = True
    depositioning: bool = True
    colours: tuple[ColourAug, ColourAug] = BYOL_COLOUR

    def __post_init__(self):
        self.regions = RegionViews(self.size, self.boxes_per_image, tuple(self.crop_scale), jitter_p=0.0,
                                   colours=self.colours)

    def _jitter(self, boxes: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        jittered = restricted_box_jitter(boxes.numpy(), rng, tuple(self.rbj_scale), self.rbj_shift)
        return torch.from_numpy(jittered).float()

    def _cut(self, view: torch.Tensor, boxes: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """PRC on a normalised (3, h, w) view: the holes get the fill colour, normalised like the view."""
        hole = torch.from_numpy(sample_prc_cutouts(boxes.numpy(), view.shape[1], view.shape[2], rng,
                                                   tuple(self.prc_side_fraction), self.prc_max_cover).mask)
        out = view.clone()
        out[:, hole] = _normalised(fill_values(self.prc_fill, int(hole.sum()), rng))  # type: ignore[arg-type]
        return out

    def _prm_mask(self, boxes: torch.Tensor, side: int, rng: np.random.Generator) -> torch.Tensor:
        if not self.decoupling:
            return torch.zeros(side, side, dtype=torch.bool)
        return torch.from_numpy(sample_prm_rects(boxes.numpy(), side, side, rng, tuple(self.prm_scale),
                                                 tuple(self.prm_ratio)).mask)

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(int(torch.randint(2**62, ())))  # from torch's RNG: the engine seeds workers
        views = self.regions(image, boxes)
        view1, view2, view2s = views["view1"], views["view2"], views["view3"]  # SoCo's V3: x2 at (S/2)²
        b1, b2, b2s = (self._jitter(b, rng) for b in views["boxes"])
        if self.decoupling:
            view1, view2s = self._cut(view1, b1, rng), self._cut(view2s, b2s, rng)
        out = {"view1": view1, "view2": view2, "view2s": view2s, "boxes": torch.stack([b1, b2, b2s]),
               "prm1": self._prm_mask(b1, self.size, rng), "prm2s": self._prm_mask(b2s, view2s.shape[1], rng)}
        if self.depositioning:
            # Only the draw (t, m̂, b̂) is used: the pixels are composed from the coloured float views, here and in
            # the method (which owns the background), so the composite gets blank uint8 stand-ins.
            blank = np.zeros((self.size, self.size, 3), np.uint8)
            composite = depositioning_composite(blank, b2.numpy(), blank, rng, tuple(self.prc_side_fraction),
                                                self.prc_max_cover)
            tx, ty = composite.shift
            shifted = torch.roll(view2, shifts=(ty, tx), dims=(1, 2))  # pixel p holds x2's pixel p − t
            out["depositioned_foreground"] = shifted
            out["depositioned_mask"] = torch.from_numpy(composite.mask)
            out["depositioned_boxes"] = torch.from_numpy(composite.boxes).float()
        return out


# ----------------------------------------------------------------------------------- device views (data.pipeline: gpu)
def normalised_colours(fill: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, h, w) colours → float, normalised as the views are."""
    mean = torch.tensor(IMAGENET_MEAN, device=fill.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=fill.device).view(1, 3, 1, 1)
    return (fill.float() / 255 - mean) / std


def shift_views(views: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``torch.roll(views[n], (ty, tx), (1, 2))`` for every n with its own (tx, ty) = ``shifts[n]``: one gather."""
    count, _, h, w = views.shape
    s = shifts.to(views.device).long()
    ys = (torch.arange(h, device=views.device)[None] - s[:, 1:2]).remainder(h)  # (N, h): pixel p holds p − t
    xs = (torch.arange(w, device=views.device)[None] - s[:, 0:1]).remainder(w)
    n = torch.arange(count, device=views.device)[:, None, None]
    return views.permute(0, 2, 3, 1)[n, ys[:, :, None], xs[:, None, :]].permute(0, 3, 1, 2)


class D3sslDeviceViews(DeviceViews):
    """D3SSL's views (`D3sslViews` in a `StoredBoxViews`) on the device: ``apply`` returns the
    keys `D3sslViews` writes (view1, view2, view2s, boxes, prm1, prm2s and, with de-positioning, depositioned_foreground,
    depositioned_mask, depositioned_boxes)."""

    def __init__(self, transform):
        self.store, self.d3 = transform.store, transform.views
        self.regions = self.d3.regions
        if self.regions.recipe != "paper":
            raise InputError("data.pipeline: 'gpu' runs D3SSL on SoCo's paper geometry only")

    def region_stores(self) -> list:
        return [self.store]

    def _holes(self, boxes: torch.Tensor, side: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """PRC on a side² view (`D3sslViews._cut`'s draws): the hole mask and a uint8 (3, side, side) image holding
        the fill colour of every hole pixel."""
        d3 = self.d3
        hole = sample_prc_cutouts(boxes.numpy(), side, side, rng, tuple(d3.prc_side_fraction), d3.prc_max_cover).mask
        fill = np.zeros((side, side, 3), np.uint8)
        fill[hole] = fill_values(d3.prc_fill, int(hole.sum()), rng)  # type: ignore[arg-type]
        return torch.from_numpy(hole), torch.from_numpy(fill).permute(2, 0, 1)

    def _prm(self, boxes: torch.Tensor, side: int, rng: np.random.Generator) -> torch.Tensor:
        d3 = self.d3
        return torch.from_numpy(sample_prm_rects(boxes.numpy(), side, side, rng, tuple(d3.prm_scale),
                                                 tuple(d3.prm_ratio)).mask)

    def __call__(self, sample: dict) -> dict:
        image: EncodedImage = sample["image"]
        d3, s = self.d3, self.regions.size
        small = self.regions.small_size
        rng = np.random.default_rng(int(torch.randint(2**62, ())))  # first, as D3sslViews: the same numpy draws
        g = self.regions.sample_geometry(image.height, image.width,
                                         image_boxes(self.store, sample.get("image_id"), image.height, image.width))
        colour = torch.stack([sample_colour_params(a) for a in self.regions.colours])
        b1, b2, b2s = (torch.from_numpy(restricted_box_jitter(b.numpy(), rng, tuple(d3.rbj_scale), d3.rbj_shift))
                       .float() for b in g.boxes)
        out = encoded_fields(image) | {"crops": torch.tensor(g.crops, dtype=torch.float32),
                                       "flips": torch.tensor(g.flips), "colour": colour,
                                       "boxes": torch.stack([b1, b2, b2s])}
        if d3.decoupling:
            out["hole1"], out["fill1"] = self._holes(b1, s, rng)
            out["hole2s"], out["fill2s"] = self._holes(b2s, small, rng)
            out["prm1"], out["prm2s"] = self._prm(b1, s, rng), self._prm(b2s, small, rng)
        else:
            out["prm1"] = torch.zeros(s, s, dtype=torch.bool)
            out["prm2s"] = torch.zeros(small, small, dtype=torch.bool)
        if d3.depositioning:
            blank = np.zeros((s, s, 3), np.uint8)  # only the draw (t, m̂, b̂) is used, as in D3sslViews
            composite = depositioning_composite(blank, b2.numpy(), blank, rng, tuple(d3.prc_side_fraction),
                                                d3.prc_max_cover)
            out["shift"] = torch.tensor(composite.shift)
            out["depositioned_mask"] = torch.from_numpy(composite.mask)
            out["depositioned_boxes"] = torch.from_numpy(composite.boxes).float()
        return out

    def apply(self, batch: dict, device: torch.device) -> dict:
        images = decode_fields(batch, device)
        s = self.regions.size
        view1, view2 = (coloured_crops(images, batch["crops"][:, j], s, batch["flips"][:, j], batch["colour"][:, j],
                                       bicubic=False) for j in range(2))
        view2s = downsample_views(view2, self.regions.small_size)
        if "hole1" in batch:
            hole1, hole2s = batch["hole1"].to(device)[:, None], batch["hole2s"].to(device)[:, None]
            view1 = torch.where(hole1, normalised_colours(batch["fill1"].to(device)), view1)
            view2s = torch.where(hole2s, normalised_colours(batch["fill2s"].to(device)), view2s)
        out = {"view1": view1, "view2": view2, "view2s": view2s, "boxes": batch["boxes"].to(device),
               "prm1": batch["prm1"].to(device), "prm2s": batch["prm2s"].to(device)}
        if "shift" in batch:
            out |= {"depositioned_foreground": shift_views(view2, batch["shift"]),
                    "depositioned_mask": batch["depositioned_mask"].to(device),
                    "depositioned_boxes": batch["depositioned_boxes"].to(device)}
        return out
