"""SimCLR: the method's home (docs/add-a-method.md). Torch-free: `register` names what imports torch by string."""

from __future__ import annotations

from sslcli.method_registry import register_method
from sslcli.methods.simclr.spec import SimclrSpec

# GPU: assumed from the papers' reported training times scaled to one GPU (sslcli.study.estimate).
# CPU 91 img/s: planted-detcon (docs/results/README.md), 301 steps x batch 128 = 38,528 images a run; SimCLR's seeds
# 0-1 took 422 and 427 s (train_wall_s in docs/results/planted-detcon/results.jsonl).


def register() -> None:
    register_method("simclr", SimclrSpec, "sslcli.methods.simclr.method:SimCLR",
                    gpu_images_per_s=380.0, cpu_images_per_s=91.0,
                    crop_iou_views="sslcli.methods.simclr.views:simclr_views",
                    device_views="sslcli.data.views.device_crops:ImageDeviceViews")
