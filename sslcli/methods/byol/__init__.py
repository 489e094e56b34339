"""BYOL: the method's home (docs/add-a-method.md). Torch-free: `register` names what imports torch by string."""

from __future__ import annotations

from sslcli.method_registry import register_method
from sslcli.methods.byol.spec import ByolSpec

# GPU: assumed from the papers' reported training times scaled to one GPU (sslcli.study.estimate).
# No CPU measurement in docs/results: no CPU figure for its runs.


def register() -> None:
    register_method("byol", ByolSpec, "sslcli.methods.byol.method:BYOL",
                    gpu_images_per_s=360.0, crop_iou_views="sslcli.methods.byol.views:byol_views",
                    device_views="sslcli.data.views.device_crops:ImageDeviceViews")
