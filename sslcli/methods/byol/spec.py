"""BYOL's run-spec section (METHODS.md §3).

Torch-free: `sslcli pretrain --schema` and ``--dry-run`` read it without importing torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sslcli.spec import Strict


class ByolSpec(Strict):
    """BYOL (predictor, EMA target with cosine momentum schedule), the base of DetCon_B."""

    name: Literal["byol"] = "byol"
    dim: int = Field(256, ge=1)
    hidden_dim: int = Field(4096, ge=1)
    base_momentum: float = Field(0.996, ge=0.0, le=1.0, description="τ₀; τ_t = 1 − (1 − τ₀)(cos(πt/T)+1)/2.")
