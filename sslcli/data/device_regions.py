"""``data.pipeline: gpu`` for the region-level methods: DetCon's label maps and SoCo's / D3SSL's boxes follow the pixels.

As for the image-level views (`sslcli.data.device_views`), workers read the file's bytes and draw every random
parameter with the CPU path's own samplers under the per-sample seeded RNG; the device decodes the batch and cuts,
resizes, flips and colours it with the batched ops of `sslcli.data.device_views`.
- DetCon (`MaskDeviceViews`): workers send the label map as stored (its dtype, full size), the two crop windows
  (``method.crop_sampler``: DetCon's clipped window or RandomResizedCrop), flips and colours. On the device each view's
  label map is cut, resized with nearest neighbour and flipped by one gather over all maps of the batch
  (`crop_label_maps`: torch's ``nearest`` indices, as torchvision resizes a Mask), then brought to the res5 grid by a
  batched mode per cell (`label_grids`: the most frequent id of each adaptive-pooling window, ties to the smallest id:
  the CPU path's ``label_grid``).
- SoCo (`BoxDeviceViews`): the boxes are pure geometry, so workers compute them with the CPU path's own code
  (`RegionViews.sample_geometry`: crop, flips, proposals chosen, jittered, mapped into each view, padded) and the
  cutout squares of the code recipes (`cutout_rects`); the device cuts V1 (the whole image), V2 (and fpn-code's V3),
  makes paper's V3 by resizing the coloured V2 (antialiased bilinear, as `downsample`) and zeroes the cutouts.
- D3SSL (`D3sslDeviceViews`): SoCo's paper geometry, then with the same seeded numpy generator and in the same order
  as `D3sslViews`: RBJ, PRC's holes (+ fill colours), PRM's masks and the de-positioning draw (shift t, m̂, b̂), all
  on boxes and masks, in the worker; the device fills the holes, and shifts x2 by t for x3's foreground.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sslcli.data.color import IMAGENET_MEAN, IMAGENET_STD
from sslcli.data.device_views import (
    DeviceViews,
    coloured_crops,
    decode_fields,
    encoded_fields,
    sample_colour_params,
)
from sslcli.data.mask_views import COLOR_PRESETS, clipped_window
from sslcli.data.readers.images import EncodedImage
from sslcli.data.region_aug import (
    _fill_values,
    depositioning_composite,
    restricted_box_jitter,
    sample_prc_cutouts,
    sample_prm_rects,
)
from sslcli.data.region_views import cutout_rects
from sslcli.data.transforms import sample_crop_box
from sslcli.errors import InputError


# ------------------------------------------------------------------------------------------------------ label maps
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
    """DetCon's views (`sslcli.methods.detcon.DetconTransform`: a MaskSource and a `MaskViewPair`) on the device:
    ``apply`` returns ``{"views": (N, 2, 3, S, S), "masks": (N, 2, n, n) int64}`` like the CPU path."""

    def __init__(self, transform):
        self.masks, self.pair, self.grid_side = transform.masks, transform.views, transform.grid_side
        self.colours = COLOR_PRESETS[self.pair.variant]

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


# ------------------------------------------------------------------------------------------------------------ boxes
def stored_boxes(store, image_id, image: EncodedImage) -> np.ndarray:
    """The image's proposals from a box store, checked against the header's size (as `StoredBoxViews`)."""
    try:
        boxes = store.boxes(image_id)
        stored_size = store.image_size(image_id)
    except KeyError:
        raise InputError(f"image {image_id!r} is not in box store {store.path}: was it made from this data set "
                         "and split?") from None
    if tuple(stored_size) != (image.height, image.width):
        raise InputError(f"image {image_id!r}: boxes in {store.path} were computed on a {stored_size[1]}×"
                         f"{stored_size[0]} image, but it is {image.width}×{image.height}")
    return boxes


def zero_rects(views: torch.Tensor, rects: torch.Tensor) -> torch.Tensor:
    """(N, C, s, s) views with the (N, K, 4) rectangles (x0, y0, x1, y1; empty ones change nothing) set to 0."""
    side = views.shape[-1]
    r = rects.to(views.device)
    pos = torch.arange(side, device=views.device)
    inside_x = (pos >= r[..., 0:1]) & (pos < r[..., 2:3])  # (N, K, s)
    inside_y = (pos >= r[..., 1:2]) & (pos < r[..., 3:4])
    hole = (inside_y[..., :, None] & inside_x[..., None, :]).any(dim=1)  # (N, s, s)
    return views.masked_fill(hole[:, None], 0.0)


def downsample_views(views: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, S, S) float → (N, 3, size, size), bilinear and antialiased (`region_views.downsample`, batched)."""
    return F.interpolate(views, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class BoxDeviceViews(DeviceViews):
    """SoCo's views (`sslcli.data.stored_boxes.StoredBoxViews`: a box store and a `RegionViews`) on the device: ``apply``
    returns the CPU path's ``view1``, ``view2`` (, ``view3``), ``boxes`` (N, P, K, 4) and ``box_ids`` (N, P, K)."""

    def __init__(self, transform):
        self.store, self.views = transform.store, transform.views
        v = self.views
        self.view_colours = [v.colors[0], v.colors[1]] + ([v.colors[1]] if v.recipe == "fpn-code" else [])

    def __call__(self, sample: dict) -> dict:
        image: EncodedImage = sample["image"]
        v = self.views
        g = v.sample_geometry(image.height, image.width, stored_boxes(self.store, sample.get("image_id"), image))
        out = encoded_fields(image) | {"crops": torch.tensor(g.crops, dtype=torch.float32),
                                       "flips": torch.tensor(g.flips),
                                       "colour": torch.stack([sample_colour_params(a) for a in self.view_colours]),
                                       "boxes": g.boxes, "box_ids": g.ids}
        if v.recipe != "paper":  # cutout in V2's boxes (and V3's), drawn after colour as on the CPU path
            sets = (1, 3) if v.recipe == "fpn-code" else (1,)
            out["cutout"] = torch.stack([cutout_rects(g.boxes[p], v.cutout_p, tuple(v.cutout_scale), g.sizes[i + 1])
                                         for i, p in enumerate(sets)])
        return out

    def apply(self, batch: dict, device: torch.device) -> dict:
        images = decode_fields(batch, device)
        v = self.views
        sizes = [v.size, v.size, v.small_size][:batch["crops"].shape[1]]
        views = [coloured_crops(images, batch["crops"][:, j], size, batch["flips"][:, j], batch["colour"][:, j],
                                bicubic=False) for j, size in enumerate(sizes)]
        out = {"view1": views[0], "view2": views[1]}
        if v.recipe == "paper":
            out["view3"] = downsample_views(views[1], v.small_size)
        elif v.recipe == "fpn-code":
            out["view3"] = views[2]
        if "cutout" in batch:
            out["view2"] = zero_rects(out["view2"], batch["cutout"][:, 0])
            if v.recipe == "fpn-code":
                out["view3"] = zero_rects(out["view3"], batch["cutout"][:, 1])
        return out | {"boxes": batch["boxes"].to(device), "box_ids": batch["box_ids"].to(device)}


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
    """D3SSL's views (`sslcli.methods.d3ssl.D3sslViews` in a `StoredBoxViews`) on the device: ``apply`` returns the
    keys `D3sslViews` writes (view1, view2, view2s, boxes, prm1, prm2s and, with de-positioning, depositioned_foreground,
    depositioned_mask, depositioned_boxes)."""

    def __init__(self, transform):
        self.store, self.d3 = transform.store, transform.views
        self.regions = self.d3.regions
        if self.regions.recipe != "paper":
            raise InputError("data.pipeline: 'gpu' runs D3SSL on SoCo's paper geometry only")

    def _holes(self, boxes: torch.Tensor, side: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """PRC on a side² view (`D3sslViews._cut`'s draws): the hole mask and a uint8 (3, side, side) image holding
        the fill colour of every hole pixel."""
        d3 = self.d3
        hole = sample_prc_cutouts(boxes.numpy(), side, side, rng, tuple(d3.prc_side_fraction), d3.prc_max_cover).mask
        fill = np.zeros((side, side, 3), np.uint8)
        fill[hole] = _fill_values(d3.prc_fill, int(hole.sum()), rng)  # type: ignore[arg-type]
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
                                         stored_boxes(self.store, sample.get("image_id"), image))
        colour = torch.stack([sample_colour_params(a) for a in self.regions.colors])
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
            out |= {"depositioned_foreground": shift_views(view2, batch["shift"]), "depositioned_mask": batch["depositioned_mask"].to(device),
                    "depositioned_boxes": batch["depositioned_boxes"].to(device)}
        return out
