"""DenseCL (Wang et al., CVPR 2021; docs/densecl.md): MoCo-v2 plus a dense InfoNCE between the cells of the two
views' res5 grids. Torch-free: registering the method imports only its spec."""

from __future__ import annotations

from sslcli.method_registry import register_method
from sslcli.methods.densecl.spec import DenseclSpec, problems

# GPU: MoCo-v2's assumed figure less 1 % (the DenseCL abstract: "only <1% slower" than MoCo-v2); no CPU measurement.


def register() -> None:
    register_method("densecl", DenseclSpec, "sslcli.methods.densecl.method:DenseCL", problems,
                    gpu_images_per_s=415.0, crop_iou_views="sslcli.methods.densecl.views:densecl_views",
                    device_views="sslcli.data.views.device_crops:ImageDeviceViews")
