"""A method from outside sslcli: the smallest complete plugin (docs/add-a-method.md).

This module is what the entry point loads, so it stays torch-free (`sslcli pretrain --schema` and `--dry-run` read the
spec without importing torch); the method class, its views and device views are named by "module:attribute" strings
and imported when a run or an analysis needs them.
"""

from typing import Literal

from pydantic import Field

from sslcli.method_registry import register_method
from sslcli.spec import Strict


class ToyPluginSpec(Strict):
    """Toy plugin: an InfoNCE between two crops with a fixed logit scale."""

    name: Literal["toy-plugin"] = "toy-plugin"
    dim: int = Field(32, ge=1, description="Output size of the linear head.")
    scale: float = Field(10.0, gt=0.0, description="Logit scale (1 / temperature).")


def problems(spec) -> list[str]:
    """Cross-field rules, as `path: message` lines (spec is the whole validated run spec)."""
    if spec.batch_size < 2:
        return [f"batch_size: toy-plugin contrasts the images of a batch; {spec.batch_size} has no negatives"]
    return []


# Its facts (sslcli.method_registry): an assumed GPU rate of its own, no measured CPU rate (the study estimate says
# "unknown"), its crop pair for `analyze crop-iou --spec` and its device views for `data.pipeline: gpu`.
GPU_IMAGES_PER_S = 500.0


def register() -> None:
    register_method("toy-plugin", ToyPluginSpec, "toy_plugin.method:ToyPlugin", problems,
                    gpu_images_per_s=GPU_IMAGES_PER_S, crop_iou_views="toy_plugin.views:toy_views",
                    device_views="toy_plugin.views:toy_device_views")
