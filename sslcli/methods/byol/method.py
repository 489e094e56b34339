"""BYOL (Grill et al. 2020): online network + predictor regress an EMA target; the base DetCon_B extends."""

from __future__ import annotations

import torch

from sslcli.data.views.crops import CropViews
from sslcli.losses.regression import byol_loss
from sslcli.methods.base import MomentumMethod, StepInfo
from sslcli.methods.byol.views import byol_views
from sslcli.models.backbone import build_backbone
from sslcli.models.heads import byol_heads


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
