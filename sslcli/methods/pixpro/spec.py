"""PixPro's run-spec fields (torch-free). Defaults: the authors' released scripts tools/pixpro_base_r50_*ep.sh
(github.com/zdaxie/PixPro), which are the paper's best setting (§4.1, Tables 5-7)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sslcli.spec import Strict


class PixproSpec(Strict):
    """PixPro (docs/pixpro.md): a pixel-propagation module, positives by distance in the original image, a BYOL-style
    momentum encoder, and an optional instance branch."""

    name: Literal["pixpro"] = "pixpro"
    dim: int = Field(256, ge=1, description="Output size of the projector (and of the instance branch).")
    hidden_dim: int = Field(4096, ge=1, description="Hidden size of the projector and predictor (1×1 convs + BN).")
    threshold: float = Field(0.7, gt=0.0, description="T: cells closer than T × the larger cell diagonal (original-"
                                                      "image coordinates) are positives (--pixpro-pos-ratio).")
    sharpness: float = Field(2.0, gt=0.0, description="γ: the PPM's similarity max(cos, clamp)^γ (--pixpro-p).")
    clamp: float = Field(0.0, ge=-1.0, le=1.0, description="Lower clamp of the PPM's cosine (--pixpro-clamp-value).")
    value_layers: Literal[0, 1, 2] = Field(1, description="The PPM's value transform g: 0 identity, 1 a 1×1 conv, "
                                                          "2 conv-BN-ReLU-conv (--pixpro-transform-layer).")
    instance_weight: float = Field(0.0, ge=0.0, description="Weight of the instance branch (BYOL on average-pooled "
                                                            "features; 0 = off, as the released scripts) "
                                                            "(--pixpro-ins-loss-weight).")
    base_momentum: float = Field(0.99, ge=0.0, le=1.0, description="τ₀ of the momentum encoder: τ = 1 − (1 − τ₀)"
                                                                  "(cos(πk/K) + 1)/2 (--pixpro-momentum).")
