"""The toy plugin's network and loss (imports torch; loaded only when a run builds the method)."""

import torch
import torch.nn.functional as F
from torch import nn

from sslcli import distributed as dist
from sslcli.data.views.crops import CropViews
from sslcli.methods.base import Method, StepInfo
from sslcli.models.backbone import build_backbone
from toy_plugin.views import toy_views


class ToyPlugin(Method):
    def __init__(self, spec):
        super().__init__(spec)
        self.encoder = build_backbone(spec.model.arch, spec.model.width)  # what checkpoints export
        self.head = nn.Linear(self.encoder.out_channels, spec.method.dim)

    def transform(self) -> CropViews:  # runs in the DataLoader workers: {"views": (2, 3, S, S), ...}
        return toy_views(self.spec)

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:
        views = batch["views"]
        b = views.shape[0]
        z = F.normalize(self.head(self.encoder(torch.cat([views[:, 0], views[:, 1]]))), dim=1)
        keys = dist.gather_with_grad(z[b:])  # every rank's second views are the negatives
        logits = self.spec.method.scale * z[:b] @ keys.t()
        labels = torch.arange(b, device=z.device) + dist.rank() * b
        return {"loss": F.cross_entropy(logits, labels)}
