"""DenseCL's views: MoCo-v2's two crops (the authors' config: crop area 0.2-1, MoCo-v2 colour, flip, bilinear); on
``data.pipeline: gpu`` the shared `sslcli.data.views.device_crops.ImageDeviceViews` runs them."""

from __future__ import annotations

from sslcli.data.views.colour import MOCO_V2_COLOUR
from sslcli.data.views.crops import CropViews, recipe_crop_pair

DENSECL_CROP_SCALE = (0.2, 1.0)  # the authors' config: MoCo-v2's RandomResizedCrop(224, scale=(0.2, 1.))


def densecl_views(spec) -> CropViews:
    """The two views of a DenseCL run spec (``views.crop_scale`` and ``views.colour`` override the recipe)."""
    return recipe_crop_pair(spec, DENSECL_CROP_SCALE, (MOCO_V2_COLOUR, MOCO_V2_COLOUR))
