"""PixPro (Xie et al., CVPR 2021, "Propagate Yourself"; docs/pixpro.md): pixel-to-propagation consistency between
the cells of two crops that lie close together in the original image. Torch-free: registering imports the spec."""

from __future__ import annotations

from sslcli.method_registry import register_method
from sslcli.methods.pixpro.spec import PixproSpec

# GPU: BYOL's networks and views plus the PPM's (H·W)² similarity per view: assumed BYOL's figure (the paper reports
# no time); no CPU measurement.


def register() -> None:
    register_method("pixpro", PixproSpec, "sslcli.methods.pixpro.method:PixPro",
                    gpu_images_per_s=360.0, crop_iou_views="sslcli.methods.pixpro.views:pixpro_views",
                    device_views="sslcli.data.views.device_crops:ImageDeviceViews")
