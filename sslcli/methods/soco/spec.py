"""SoCo's run-spec section and its checks (METHODS.md §4; docs/soco.md).

Torch-free: `sslcli pretrain --schema` and ``--dry-run`` read it without importing torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sslcli.spec import Strict


class SocoSpec(Strict):
    """SoCo, the region-level baseline (METHODS.md §4; docs/soco.md)."""

    name: Literal["soco"] = "soco"
    view_pairs: Literal["soco", "all"] = Field("soco", description="soco: V1↔V2 and V1↔V3 (SoCo); all: + V2↔V3.")
    boxes: str = Field(..., description="Box store (.h5) from `prepare boxes`.")
    boxes_per_image: int = Field(4, ge=1)
    roi_size: int = Field(14, ge=1)
    jitter_p: float = Field(0.5, ge=0.0, le=1.0)
    jitter_scale: float = Field(0.1, ge=0.0)
    crop_scale: tuple[float, float] = (0.6, 1.0)
    recipe: Literal["paper", "c4-code", "fpn-code"] = Field(
        "paper", description="Views (docs/soco.md): paper (SoCo's text: V3 = V2 downsampled, centre jitter on V1), "
                             "c4-code (the released C4 recipe: V1, V2, cutout in V2's boxes, no jitter), fpn-code "
                             "(the released FPN recipe: V3 its own S/2 crop, boxes per pair, corner jitter, cutout).")
    padding: Literal["authors", "slots"] = Field(
        "authors", description="Fewer than K boxes: authors (each view pads with its own copies; every copy of a "
                               "box is a positive of every copy in the other view) or slots (one padding, slot k "
                               "pairs with slot k).")
    cutout_p: float = Field(0.5, ge=0.0, le=1.0, description="Code recipes: cutout probability per box.")
    cutout_scale: tuple[float, float] = Field((0.1, 0.3), description="Code recipes: cutout area / box area.")
    dim: int = 256
    hidden_dim: int = 4096
    base_momentum: float = Field(0.99, ge=0.0, le=1.0)


def problems(spec) -> list[str]:
    method, problems = spec.method, []
    if not 0.0 <= method.cutout_scale[0] <= method.cutout_scale[1] <= 1.0:
        problems.append(f"method.cutout_scale: {list(method.cutout_scale)} is not a range of box-area fractions "
                        "in [0, 1]")
    if method.view_pairs == "all" and method.recipe != "paper":
        problems.append(f"method.view_pairs: 'all' (V2↔V3) needs recipe 'paper'; the {method.recipe} recipe "
                        "pairs V1 with each other view only")
    return problems


def ranges(method: SocoSpec) -> dict[str, tuple[float, float]]:
    return {"method.crop_scale": method.crop_scale}
