"""BYOL (Grill et al. 2020): online network + predictor regress an EMA target; the base DetCon_B extends."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from sslcli.data.color import BYOL as BYOL_COLORS
from sslcli.data.color import view_colours
from sslcli.data.transforms import CropViews
from sslcli.losses.regression import byol_loss
from sslcli.methods.base import MomentumMethod, StepInfo
from sslcli.models.backbone import build_backbone
from sslcli.models.heads import byol_heads

# BYOL / DetCon crop area range (METHODS.md §3: U[0.08, 1]).
BYOL_CROP_SCALE = (0.08, 1.0)


def byol_views(spec) -> CropViews:
    """Two crops (area U[0.08, 1]) at ``data.image_size`` with the BYOL colour presets of views 1 and 2, bicubic
    resize (METHODS.md §3, DetCon App. A)."""
    return CropViews(spec.data.image_size, spec.views.crop_scale or BYOL_CROP_SCALE,
                     colors=view_colours(spec.views.colour, BYOL_COLORS),
                     interpolation=v2.InterpolationMode.BICUBIC)


class BYOL(MomentumMethod):
    """Online encoder + projector + predictor; target = EMA copy of encoder + projector, τ on BYOL's cosine schedule."""

    momentum_pairs = (("encoder", "target_encoder"), ("projector", "target_projector"))

    def __init__(self, spec):
        super().__init__(spec)
        self.encoder = build_backbone(spec.model.arch, spec.model.width, stem=spec.model.stem)
        self.projector, self.predictor = byol_heads(self.encoder.out_channels, spec.method.hidden_dim,
                                                    spec.method.dim)
        self.init_momentum_targets()

    def transform(self) -> CropViews:
        return byol_views(self.spec)

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """``batch["views"]``: (B, 2, 3, S, S); loss = (2 − 2cos(p1, z2)) + (2 − 2cos(p2, z1)), batch means."""
        views = batch["views"]
        b = views.shape[0]
        x = torch.cat([views[:, 0], views[:, 1]])
        p = self.predictor(self.projector(self.encoder(x)))
        with torch.no_grad():
            z = self.target_projector(self.target_encoder(x))
        return {"loss": byol_loss(p[:b], p[b:], z[:b], z[b:])}
