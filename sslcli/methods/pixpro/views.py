"""PixPro's views: two crops (area 0.08-1) with BYOL's two colour presets, flip, bilinear resize (the released
scripts: --aug BYOL --crop 0.08); the crops' boxes, flips and image size give the cells' coordinates. On
``data.pipeline: gpu`` the shared `sslcli.data.views.device_crops.ImageDeviceViews` runs them."""

from __future__ import annotations

from sslcli.data.views.colour import BYOL_COLOUR
from sslcli.data.views.crops import CropViews, recipe_crop_pair

PIXPRO_CROP_SCALE = (0.08, 1.0)  # the released scripts: --crop 0.08


def pixpro_views(spec) -> CropViews:
    """The two views of a PixPro run spec (``views.crop_scale`` and ``views.colour`` override the recipe)."""
    return recipe_crop_pair(spec, PIXPRO_CROP_SCALE, BYOL_COLOUR)
