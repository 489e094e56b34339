"""SoCo's device views (``data.pipeline: gpu``; its CPU views are the shared `sslcli.data.views.regions.RegionViews`
behind a `sslcli.data.views.stored_boxes.StoredBoxViews`).

As for the crop methods, workers read the file's bytes and draw every random parameter with the CPU path's own code
under the per-sample seeded RNG: the boxes are pure geometry (`RegionViews.sample_geometry`: crop, flips, proposals
chosen, jittered, mapped into each view, padded), then the cutout squares of the code recipes (`cutout_rects`). The
device cuts V1 (the whole image), V2 (and fpn-code's V3) with the batched ops of `sslcli.data.views.device_ops`,
makes paper's V3 by resizing the coloured V2 (antialiased bilinear, as `downsample`) and zeroes the cutouts.
"""

from __future__ import annotations

import torch

from sslcli.data.readers.images import EncodedImage
from sslcli.data.views.colour import sample_colour_params
from sslcli.data.views.device_ops import (
    DeviceViews,
    coloured_crops,
    decode_fields,
    downsample_views,
    encoded_fields,
)
from sslcli.data.views.regions import cutout_rects
from sslcli.data.views.stored_boxes import image_boxes


def zero_rects(views: torch.Tensor, rects: torch.Tensor) -> torch.Tensor:
    """(N, C, s, s) views with the (N, K, 4) rectangles (x0, y0, x1, y1; empty ones change nothing) set to 0."""
    side = views.shape[-1]
    r = rects.to(views.device)
    pos = torch.arange(side, device=views.device)
    inside_x = (pos >= r[..., 0:1]) & (pos < r[..., 2:3])  # (N, K, s)
    inside_y = (pos >= r[..., 1:2]) & (pos < r[..., 3:4])
    hole = (inside_y[..., :, None] & inside_x[..., None, :]).any(dim=1)  # (N, s, s)
    return views.masked_fill(hole[:, None], 0.0)


class BoxDeviceViews(DeviceViews):
    """SoCo's views (`sslcli.data.views.stored_boxes.StoredBoxViews`: a box store and a `RegionViews`) on the device: ``apply``
    returns the CPU path's ``view1``, ``view2`` (, ``view3``), ``boxes`` (N, P, K, 4) and ``box_ids`` (N, P, K)."""

    def __init__(self, transform):
        self.store, self.views = transform.store, transform.views
        v = self.views
        self.view_colours = [v.colours[0], v.colours[1]] + ([v.colours[1]] if v.recipe == "fpn-code" else [])

    def region_stores(self) -> list:
        return [self.store]

    def __call__(self, sample: dict) -> dict:
        image: EncodedImage = sample["image"]
        v = self.views
        g = v.sample_geometry(image.height, image.width, image_boxes(self.store, sample.get("image_id"), image.height, image.width))
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
