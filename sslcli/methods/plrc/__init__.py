"""PLRC (Bai et al., CVPR 2022, "Point-Level Region Contrast"; docs/plrc.md): a MoCo image loss, a contrast between
points of a shared pseudo-region of two crops, and a self-distillation of point affinities. Torch-free: registering
the method imports only its spec."""

from __future__ import annotations

from sslcli.method_registry import register_method
from sslcli.methods.plrc.spec import PlrcSpec, problems

# GPU: no figure (the paper reports no training time; its M² × M² affinities per crop and three encoded crops make
# MoCo-v2's figure a wrong guess); no CPU measurement.


def register() -> None:
    register_method("plrc", PlrcSpec, "sslcli.methods.plrc.method:PLRC", problems,
                    crop_iou_views="sslcli.methods.plrc.views:plrc_views",
                    device_views="sslcli.methods.plrc.views:plrc_device_views")
