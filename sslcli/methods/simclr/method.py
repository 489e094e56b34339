"""SimCLR (Chen et al. 2020): NT-Xent over both views of the global batch; the base DetCon_S extends."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslcli import distributed as dist
from sslcli.data.views.crops import CropViews
from sslcli.losses.contrastive import nt_xent
from sslcli.methods.base import Method, StepInfo
from sslcli.methods.simclr.views import simclr_views
from sslcli.models.backbone import build_backbone
from sslcli.models.heads import simclr_projector


class SimCLR(Method):
    """Backbone + projector; views from `CropViews` with the SIMCLR colour presets (blur on view 1 only)."""

    def __init__(self, spec):
        super().__init__(spec)
        self.encoder = build_backbone(spec.model.arch, spec.model.width, stem=spec.model.stem)
        self.projector = simclr_projector(self.encoder.out_channels, spec.method.hidden_dim, spec.method.dim)

    def transform(self) -> CropViews:
        return simclr_views(self.spec)

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """``batch["views"]``: (B, 2, 3, S, S). Both views go through the backbone in one pass (BN over 2B)."""
        views = batch["views"]
        b = views.shape[0]
        z = F.normalize(self.projector(self.encoder(torch.cat([views[:, 0], views[:, 1]]))), dim=1)
        z1, z2 = z[:b], z[b:]
        loss = nt_xent(z1, z2, self.spec.method.temperature, dist.gather_with_grad(z1), dist.gather_with_grad(z2),
                       offset=dist.rank() * b)
        return {"loss": loss}
