"""SoCo: the method's home (docs/add-a-method.md). Torch-free: `register` names what imports torch by string."""

from __future__ import annotations

from sslcli.method_registry import register_method
from sslcli.methods.soco.spec import SocoSpec, problems, ranges

# GPU: assumed from the papers' reported training times scaled to one GPU (sslcli.study.estimate).
# CPU 15.7 img/s (ResNet-18-C4 width 16): docs/results/README.md, "SoCo 14.5–17.0 img/s" (batch 64, 4 boxes per
# image), the midpoint.


def register() -> None:
    register_method("soco", SocoSpec, "sslcli.methods.soco.method:Soco", problems, ranges,
                    gpu_images_per_s=230.0, cpu_images_per_s=15.7,
                    needs_c4=True, own_crop_scale=True, device_views="sslcli.methods.soco.views:BoxDeviceViews")
