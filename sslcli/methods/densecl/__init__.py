"""DenseCL (Wang et al., CVPR 2021; docs/densecl.md): MoCo-v2 plus a dense InfoNCE between the cells of the two
views' res5 grids. Torch-free: registering the method imports only its spec."""

from __future__ import annotations

from sslcli.method_registry import register_method
from sslcli.methods.densecl.spec import DenseclSpec, problems


def register() -> None:
    register_method("densecl", DenseclSpec, "sslcli.methods.densecl.method:DenseCL", problems, gpu_pipeline=True)
