"""The device views of the crop methods (moco, simclr, byol and plugins whose transform is a `CropViews`): workers
draw the crop boxes with `CropViews.sample_boxes` (the CPU path's own sampler), the flips and the colour parameters;
the device cuts, resizes and colours the batch with `sslcli.data.views.device_ops`. A method registers
``"sslcli.data.views.device_crops:ImageDeviceViews"`` as its ``device_views`` hook.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import InterpolationMode

from sslcli.data.readers.images import EncodedImage
from sslcli.data.views.colour import sample_colour_params
from sslcli.data.views.crops import CropViews
from sslcli.data.views.device_ops import (
    DeviceViews,
    coloured_crops,
    decode_fields,
    encoded_fields,
)
from sslcli.errors import InputError


class ImageDeviceViews(DeviceViews):
    """The views of a `CropViews` (moco: two crops, multi-crop, CC, IoU-constrained pairs; simclr; byol)."""

    def __init__(self, views: CropViews):
        if views.aplus_p > 0:
            raise InputError("data.pipeline: 'gpu' does not run A+ (AutoAugment); set method.aplus.enabled: false "
                             "or data.pipeline: cpu")
        self.views = views
        self.sizes = views.sizes()
        self.crop_colours = [views.colours[i] if i < 2 else views.colours[0] for i in range(len(self.sizes))]

    # --------------------------------------------------------------------------------------- worker side
    def __call__(self, sample: dict) -> dict:
        image: EncodedImage = sample["image"]
        boxes = self.views.sample_boxes(image.height, image.width)
        flips = torch.tensor([self.views.draw_flip() for _ in boxes])
        colour = torch.stack([sample_colour_params(aug) for aug in self.crop_colours])
        return encoded_fields(image) | {"boxes": torch.tensor(boxes, dtype=torch.float32), "flips": flips,
                                        "colour": colour, "index": sample["index"]}

    # --------------------------------------------------------------------------------------- device side
    def apply(self, batch: dict, device: torch.device) -> dict:
        """A collated batch of `__call__` outputs → ``{"views", "boxes", "flips", "image_size", "index"[, "small"]}``
        on ``device`` (the CPU path's keys)."""
        images = decode_fields(batch, device)
        bicubic = self.views.interpolation == InterpolationMode.BICUBIC
        crops = [coloured_crops(images, batch["boxes"][:, j], size, batch["flips"][:, j], batch["colour"][:, j],
                                bicubic) for j, size in enumerate(self.sizes)]
        out = {"views": torch.stack(crops[:2], dim=1), "boxes": batch["boxes"].to(device),
               "flips": batch["flips"].to(device), "image_size": batch["size"].to(device),
               "index": batch["index"].to(device)}
        if len(crops) > 2:
            out["small"] = torch.stack(crops[2:], dim=1)
        return out
