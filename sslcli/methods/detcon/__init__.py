"""DetCon_S and DetCon_B: the method's home (docs/add-a-method.md). Torch-free: `register` names what imports torch by string."""

from __future__ import annotations

from sslcli.method_registry import register_method
from sslcli.methods.detcon.spec import DetconSpec

# GPU: assumed from the papers' reported training times scaled to one GPU (sslcli.study.estimate).
# CPU 83 img/s: planted-detcon (docs/results/README.md), 38,528 images a run; DetCon_S with grid / FH / GT masks took
# 387-531 s (mean 463 s; train_wall_s in docs/results/planted-detcon/results.jsonl).


def register() -> None:
    register_method("detcon", DetconSpec, "sslcli.methods.detcon.method:Detcon",
                    gpu_images_per_s=330.0, cpu_images_per_s=83.0,
                    device_views="sslcli.methods.detcon.views:MaskDeviceViews")
