"""PLRC (Bai et al., CVPR 2022, "Point-Level Region Contrast"; docs/plrc.md): a MoCo image loss, a contrast between
points of a shared pseudo-region of two crops, and a self-distillation of point affinities. Torch-free: registering
the method imports only its spec."""

from __future__ import annotations

from sslcli.method_registry import register_method
from sslcli.methods.plrc.spec import PlrcSpec, problems

# GPU: assumed from MoCo-v2's figure (420) scaled by the FLOPs per image (the paper reports no training time):
# MoCo-v2 ≈ 16 GFLOPs (ResNet-50 at 224: 4.1 forward, 8.2 backward, 4.1 key forward); PLRC ≈ 46: the backbone on
# three crops (20.5), the heads on 49 cells of each (≈ 5 with the backward) and the student's and teacher's
# 3136 × 3136 × 256 affinities (≈ 20 with the student's backward): 420 × 16 / 46 ≈ 150. No CPU measurement.
GPU_IMAGES_PER_S = 150.0


def register() -> None:
    register_method("plrc", PlrcSpec, "sslcli.methods.plrc.method:PLRC", problems,
                    gpu_images_per_s=GPU_IMAGES_PER_S, crop_iou_views="sslcli.methods.plrc.views:plrc_views",
                    device_views="sslcli.data.views.device_crops:ImageDeviceViews")
