"""MoCo's views: `CropViews` (two crops, multi-crop, CC, A+, IoU-constrained pairs) configured by the run spec; on
``data.pipeline: gpu`` the shared `sslcli.data.views.device_crops.ImageDeviceViews` runs them."""

from __future__ import annotations

from sslcli.data.views.colour import MOCO_V2_COLOUR, view_colours
from sslcli.data.views.crops import CropViews

MOCO_CROP_SCALE = (0.2, 1.0)  # METHODS.md §1


def moco_views(spec) -> CropViews:
    """The view transform of a MoCo run spec: 2 crops, or MC (+ CC), A+ and the §3.1 IoU constraint when enabled."""
    m, data = spec.method, spec.data
    mc = m.multi_crop
    return CropViews(
        large_size=mc.large_size if mc.enabled else data.image_size,
        large_scale=mc.large_scale if mc.enabled else (spec.views.crop_scale or MOCO_CROP_SCALE),
        colours=view_colours(spec.views.colour, (MOCO_V2_COLOUR, MOCO_V2_COLOUR)),
        small_size=mc.small_size, small_scale=mc.small_scale, n_small=mc.n_small if mc.enabled else 0,
        max_iou=m.crop_iou.max_iou, iou_tries=m.crop_iou.max_tries,
        cc_min_overlap=m.constrained.min_overlap if m.constrained.enabled else None,
        cc_tries=m.constrained.max_tries,
        aplus_p=m.aplus.p if m.aplus.enabled else 0.0)
