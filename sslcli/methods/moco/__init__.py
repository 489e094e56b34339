"""MoCo-v2 and the Revisiting additions: the method's home (docs/add-a-method.md). Torch-free: `register` names what imports torch by string."""

from __future__ import annotations

from sslcli.method_registry import register_method
from sslcli.methods.moco.spec import MocoSpec, problems, ranges

# GPU: assumed from the papers' reported training times scaled to one GPU (sslcli.study.estimate).
# CPU 231 img/s: planted-revisiting (docs/results/README.md), "MoCo-v2 runs 316–349 s" for 602 steps x batch 128 =
# 77,056 images (77,056 / 333 s); the same page measured "about 250 img/s for MoCo-v2 at batch 128" alone.


def register() -> None:
    register_method("moco", MocoSpec, "sslcli.methods.moco.method:MoCo", problems, ranges,
                    gpu_images_per_s=420.0, cpu_images_per_s=231.0,
                    crop_iou_views="sslcli.methods.moco.views:moco_views",
                    device_views="sslcli.data.views.device_crops:ImageDeviceViews")
