"""D3SSL's run-spec section and its checks (METHODS.md §5; docs/d3ssl.md).

Torch-free: `sslcli pretrain --schema` and ``--dry-run`` read it without importing torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sslcli.spec import Strict, memory_problems


class PrcSpec(Strict):
    side_fraction: tuple[float, float] = (0.2, 0.5)
    max_cover: float = Field(0.5, gt=0.0, le=1.0)
    fill: Literal["mean", "zero", "noise"] = Field("mean", description="What fills a cutout (the paper does not "
                                                                      "say): ImageNet mean colour, black or noise.")


class PrmSpec(Strict):
    scale: tuple[float, float] = (0.2, 0.6)
    ratio: tuple[float, float] = (0.75, 4 / 3)


class RbjSpec(Strict):
    scale: tuple[float, float] = (0.9, 1.0)
    shift: float = 0.1


class D3sslSpec(Strict):
    """D3SSL (METHODS.md §5; docs/d3ssl.md)."""

    name: Literal["d3ssl"] = "d3ssl"
    boxes: str = Field(..., description="Box store (.h5) from `prepare boxes`.")
    boxes_per_image: int = Field(4, ge=1)
    roi_size: int = Field(14, ge=1)
    temperature: float = Field(0.2, gt=0.0)
    bank_size: int = Field(65536, ge=1)
    crop_scale: tuple[float, float] = (0.4, 1.0)
    prc: PrcSpec = PrcSpec()
    prm: PrmSpec = PrmSpec()
    rbj: RbjSpec = RbjSpec()
    decoupling: bool = True
    depositioning: bool = True
    dim: int = 256
    hidden_dim: int = 4096
    base_momentum: float = Field(0.99, ge=0.0, le=1.0)


def problems(spec) -> list[str]:
    method, problems = spec.method, []
    if method.bank_size % spec.batch_size:
        problems.append(f"method.bank_size: must be divisible by the global batch size {spec.batch_size}")
    problems.extend(memory_problems("method.bank_size", method.bank_size, method.dim, "region features"))
    return problems


def ranges(method: D3sslSpec) -> dict[str, tuple[float, float]]:
    return {"method.crop_scale": method.crop_scale, "method.prc.side_fraction": method.prc.side_fraction,
            "method.prm.scale": method.prm.scale, "method.rbj.scale": method.rbj.scale}
