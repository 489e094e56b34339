"""DenseCL's run-spec fields (torch-free). Defaults: the authors' configs/selfsup/densecl/densecl_coco_800ep.py
(github.com/WXinlong/DenseCL), which are the paper's (§4.1)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sslcli.spec import Strict


class DenseclSpec(Strict):
    """DenseCL (docs/densecl.md): MoCo-v2's global InfoNCE and a dense InfoNCE over res5 cells matched by
    backbone-feature similarity, weighted (1 − λ) and λ."""

    name: Literal["densecl"] = "densecl"
    dim: int = Field(128, ge=1, description="Output size of both projection heads (feat_dim).")
    hidden_dim: int = Field(2048, ge=1, description="Hidden size of both heads (global: linear, dense: 1×1 conv).")
    queue_size: int = Field(65536, ge=1, description="K of each queue (global and dense); divisible by the global "
                                                     "batch size.")
    temperature: float = Field(0.2, gt=0.0, description="τ of both InfoNCE terms.")
    momentum: float = Field(0.999, ge=0.0, le=1.0, description="Constant momentum of the key encoder and heads.")
    dense_weight: float = Field(0.5, ge=0.0, le=1.0, description="λ: loss = (1 − λ)·global + λ·dense (loss_lambda).")
    grid: int | None = Field(None, ge=1, description="Pool res5 to grid × grid cells before the dense head "
                                                     "(num_grid); None: every res5 cell (7×7 at 224 px).")
    shuffle_bn: bool = Field(True, description="Encode the key crops in a shuffled batch (MoCo's shuffle-BN).")


def problems(spec) -> list[str]:
    """Both queues advance by the global batch at every step, so the batch must divide them (as MoCo's)."""
    if spec.method.queue_size % spec.batch_size:
        return [f"method.queue_size: must be divisible by the global batch size {spec.batch_size}"]
    return []
