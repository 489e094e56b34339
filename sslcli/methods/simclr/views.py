"""SimCLR's views: two `CropViews` crops with SimCLR's colour presets; on ``data.pipeline: gpu`` the shared
`sslcli.data.views.device_crops.ImageDeviceViews` runs them."""

from __future__ import annotations

from torchvision.transforms import v2

from sslcli.data.views.colour import SIMCLR_COLOUR
from sslcli.data.views.crops import CropViews, recipe_crop_pair

# SimCLR / DetCon crop area range (METHODS.md §3: U[0.08, 1]).
SIMCLR_CROP_SCALE = (0.08, 1.0)


def simclr_views(spec) -> CropViews:
    """Two crops (area U[0.08, 1]) at ``data.image_size`` with the SIMCLR colour presets of views 1 and 2, bicubic
    resize (METHODS.md §3, DetCon App. A)."""
    return recipe_crop_pair(spec, SIMCLR_CROP_SCALE, SIMCLR_COLOUR, v2.InterpolationMode.BICUBIC)
