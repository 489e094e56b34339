"""MoCo-v2's run-spec section and its checks (METHODS.md §1–2).

Torch-free: `sslcli pretrain --schema` and ``--dry-run`` read it without importing torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sslcli.spec import Strict, memory_problems


class MultiCropSpec(Strict):
    """Multi-crop (METHODS.md §2): 2 large crops + n small ones; small crops are queries only."""

    enabled: bool = False
    large_size: int = Field(160, ge=16)
    large_scale: tuple[float, float] = (0.2, 1.0)
    small_size: int = Field(96, ge=8)
    small_scale: tuple[float, float] = (0.05, 0.14)
    n_small: int = Field(4, ge=1, le=16)


class ConstrainedCropSpec(Strict):
    """Constrained multi-crop (CC): a small crop must overlap the key crop by ≥ min_overlap of its own area."""

    enabled: bool = False
    min_overlap: float = Field(0.2, gt=0.0, le=1.0, description="Paper: 0.2; the authors' code uses 0.1.")
    max_tries: int = Field(10, ge=1)


class APlusSpec(Strict):
    """A+ (METHODS.md §2): query crops get Flip → AutoAugment(ImageNet) with probability p instead of the standard."""

    enabled: bool = False
    p: float = Field(0.5, ge=0.0, le=1.0)


class KnnSpec(Strict):
    """kNN-MoCo (METHODS.md §2): a queue of backbone features; neighbours' keys as extra positives."""

    enabled: bool = False
    k: int = Field(20, ge=1)
    weight: float = Field(0.4, ge=0.0, description="λ; 0.8 collapses (paper).")
    warmup_epochs: int = Field(5, ge=0)
    bank_first: bool = Field(False, description="Enable from epoch 0 with the bank updated before the loss.")


class CropIouSpec(Strict):
    """Revisiting §3.1: rejection-sample the second crop until IoU(view1, view2) < max_iou."""

    max_iou: float | None = Field(None, gt=0.0, le=1.0)
    max_tries: int = Field(50, ge=1)

class MocoSpec(Strict):
    """MoCo-v2 and the Revisiting additions (METHODS.md §1–2)."""

    name: Literal["moco"] = "moco"
    dim: int = Field(128, ge=1)
    hidden_dim: int = Field(2048, ge=1)
    queue_size: int = Field(65536, ge=1, description="K; must be divisible by the global batch size.")
    temperature: float = Field(0.2, gt=0.0)
    momentum: float = Field(0.999, ge=0.0, le=1.0, description="0.995 is the Revisiting 'lower momentum' (+m).")
    shuffle_bn: bool = True
    multi_crop: MultiCropSpec = MultiCropSpec()
    constrained: ConstrainedCropSpec = ConstrainedCropSpec()
    aplus: APlusSpec = APlusSpec()
    knn: KnnSpec = KnnSpec()
    crop_iou: CropIouSpec = CropIouSpec()


def resnet_feature_channels(arch: str, width: int) -> int:
    """Channels of res5 (the backbone feature): 8·width, ×4 for the bottleneck ResNets (50 and deeper)."""
    return 8 * width * (1 if arch in ("resnet18", "resnet34") else 4)


def problems(spec) -> list[str]:
    method, problems = spec.method, []
    if method.queue_size % spec.batch_size:
        problems.append(f"method.queue_size: must be divisible by the global batch size {spec.batch_size}")
    columns = method.dim + (resnet_feature_channels(spec.model.arch, spec.model.width) if method.knn.enabled else 0)
    problems.extend(memory_problems("method.queue_size", method.queue_size, columns,
                                     "keys" + (" (and kNN backbone features)" if method.knn.enabled else "")))
    if method.constrained.enabled and not method.multi_crop.enabled:
        problems.append("method.constrained.enabled: constrained multi-crop needs method.multi_crop.enabled: true")
    for name in ("large_scale", "small_scale"):  # crop areas as fractions of the image (a negative one failed in
        lo, hi = getattr(method.multi_crop, name)  # the workers)
        if not (0.0 < lo and 0.0 < hi <= 1.0):
            problems.append(f"method.multi_crop.{name}: [{lo}, {hi}] is not a range of area fractions in (0, 1]")
    if spec.data.pipeline == "gpu" and method.aplus.enabled:
        problems.append("data.pipeline: 'gpu' does not run A+ (AutoAugment); set method.aplus.enabled: false or "
                        "data.pipeline: cpu")
    return problems


def ranges(method: MocoSpec) -> dict[str, tuple[float, float]]:
    return {"method.multi_crop.large_scale": method.multi_crop.large_scale,
            "method.multi_crop.small_scale": method.multi_crop.small_scale}
