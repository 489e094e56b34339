"""PixPro (Xie et al., CVPR 2021, "Propagate Yourself"; docs/pixpro.md): pixel-to-propagation consistency between
the cells of two crops that lie close together in the original image. Torch-free: registering imports the spec."""

from __future__ import annotations

from sslcli.method_registry import register_method
from sslcli.methods.pixpro.spec import PixproSpec


def register() -> None:
    register_method("pixpro", PixproSpec, "sslcli.methods.pixpro.method:PixPro", gpu_pipeline=True)
