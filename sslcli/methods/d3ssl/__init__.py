"""D3SSL: the method's home (docs/add-a-method.md). Torch-free: `register` names what imports torch by string."""

from __future__ import annotations

from sslcli.method_registry import register_method
from sslcli.methods.d3ssl.spec import D3sslSpec, problems, ranges

# GPU: assumed from the papers' reported training times scaled to one GPU (sslcli.study.estimate).
# CPU 14.8 img/s (ResNet-18-C4 width 16): docs/results/README.md, "D3SSL 14.2–15.4 img/s" (batch 64, 4 boxes per
# image), the midpoint.


def register() -> None:
    register_method("d3ssl", D3sslSpec, "sslcli.methods.d3ssl.method:D3ssl", problems, ranges,
                    gpu_images_per_s=220.0, cpu_images_per_s=14.8,
                    needs_c4=True, own_crop_scale=True, device_views="sslcli.methods.d3ssl.views:D3sslDeviceViews")
