"""DetCon's run-spec section (METHODS.md §3).

Torch-free: `sslcli pretrain --schema` and ``--dry-run`` read it without importing torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sslcli.spec import Strict


class MaskSourceSpec(Strict):
    """Where DetCon's masks come from (METHODS.md §3)."""

    kind: Literal["store", "grid", "gt"] = "store"
    path: str | None = Field(None, description="Mask store (.h5) from `prepare masks` (FH or MCG).")
    scales: list[int] | None = Field(None, description="FH scales to use from the store; several = one sampled "
                                                       "per image and step. None = every scale in the store.")
    grid: int = Field(5, ge=1, le=32, description="n for n×n grid masks (1×1 = SimCLR/BYOL).")

    @model_validator(mode="after")
    def _path_for_store(self) -> MaskSourceSpec:
        if self.kind == "store" and not self.path:
            raise ValueError("path: required when kind is 'store' (a file from `sslcli prepare masks`)")
        return self


class DetconSpec(Strict):
    """DetCon_S (SimCLR-based) and DetCon_B (BYOL-based) (METHODS.md §3)."""

    name: Literal["detcon"] = "detcon"
    variant: Literal["S", "B"] = "S"
    masks: MaskSourceSpec = MaskSourceSpec(kind="grid")
    num_samples: int = Field(16, ge=1, description="Mask ids sampled per image and view.")
    temperature: float = Field(0.1, gt=0.0)
    dim: int | None = Field(None, description="Default 128 (S) / 256 (B).")
    hidden_dim: int | None = Field(None, description="Default 2048 (S) / 4096 (B).")
    base_momentum: float = Field(0.996, ge=0.0, le=1.0, description="DetCon_B only: 0.996 (1000 ep) / 0.99 (300 ep).")
    crop_sampler: Literal["authors", "torchvision"] = Field(
        "authors", description="authors: DetCon's crop (one draw of area and aspect ratio, window clipped to the "
                               "image); torchvision: RandomResizedCrop (rejects and retries: smaller crops).")
