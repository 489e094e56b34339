"""SimCLR's run-spec section (METHODS.md §3).

Torch-free: `sslcli pretrain --schema` and ``--dry-run`` read it without importing torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sslcli.spec import Strict


class SimclrSpec(Strict):
    """SimCLR (NT-Xent), the base of DetCon_S."""

    name: Literal["simclr"] = "simclr"
    dim: int = Field(128, ge=1)
    hidden_dim: int = Field(2048, ge=1)
    temperature: float = Field(0.1, gt=0.0)
