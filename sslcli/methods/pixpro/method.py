"""PixPro (Xie et al., CVPR 2021): the pixel-propagation module (PPM) on the online projection of each view's res5
grid, regressed onto the momentum encoder's projection of the other view at the cells that lie close to each other in
the original image; optionally an instance branch (BYOL on pooled features).

Networks: encoder = backbone; projector = 1×1 conv 2048→4096 → BN → ReLU → 256 on every cell (the authors' MLP2d);
value transform g (identity, a 1×1 conv, or conv-BN-ReLU-conv); momentum copies of encoder and projector (BYOL's
cosine schedule from ``method.base_momentum``). With ``instance_weight`` > 0: an instance projector (+ momentum copy)
and predictor, both MLP2d, average-pooled after them. The authors' code: contrast/models/PixPro.py of
github.com/zdaxie/PixPro; docs/pixpro.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslcli.data.views.crops import CropViews
from sslcli.losses.pixpro import instance_consistency, pixel_consistency, pixel_propagation, positive_pairs
from sslcli.methods.base import MomentumMethod, StepInfo
from sslcli.methods.pixpro.views import pixpro_views
from sslcli.models.backbone import build_backbone
from sslcli.models.heads import conv_mlp


def value_transform(layers: int, dim: int) -> nn.Module:
    """The PPM's g: identity (0), a 1×1 conv (1; the released scripts), conv-BN-ReLU-conv of width ``dim`` (2)."""
    if layers == 0:
        return nn.Identity()
    if layers == 1:
        return nn.Conv2d(dim, dim, 1)
    return conv_mlp(dim, dim, dim, batch_norm=True)


def crop_coordinates(boxes: torch.Tensor, flips: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """(B, 4) normalised original-image coordinates (x_left, y_top, x_right, y_bottom) of crops ``boxes`` (B, 4,
    pixels) with x swapped where ``flips`` (B,) (the crop is mirrored); ``image_size`` (B, 2) is (H, W)."""
    height, width = image_size[:, 0:1].to(boxes.dtype), image_size[:, 1:2].to(boxes.dtype)
    coords = boxes / torch.cat([width, height, width, height], dim=1)
    mirrored = coords[:, [2, 1, 0, 3]]
    return torch.where(flips[:, None], mirrored, coords)


class PixPro(MomentumMethod):
    """Online encoder + projector + PPM (+ instance branch); momentum encoder + projector as targets."""

    def __init__(self, spec):
        super().__init__(spec)
        m = spec.method
        self.encoder = build_backbone(spec.model.arch, spec.model.width, stem=spec.model.stem)
        self.projector = conv_mlp(self.encoder.out_channels, m.hidden_dim, m.dim, batch_norm=True)
        self.value = value_transform(m.value_layers, m.dim)
        pairs = [("encoder", "target_encoder"), ("projector", "target_projector")]
        if m.instance_weight > 0:
            self.instance_projector = conv_mlp(self.encoder.out_channels, m.hidden_dim, m.dim, batch_norm=True)
            self.predictor = conv_mlp(m.dim, m.hidden_dim, m.dim, batch_norm=True)
            pairs.append(("instance_projector", "target_instance_projector"))
        self.momentum_pairs = tuple(pairs)
        self.init_momentum_targets()

    def transform(self) -> CropViews:
        """Two crops (area 0.08-1) with BYOL's two colour presets, flip, bilinear resize (the released scripts:
        --aug BYOL --crop 0.08; the crops' boxes, flips and image size give the coordinates)."""
        return pixpro_views(self.spec)

    def propagate(self, projection: torch.Tensor) -> torch.Tensor:
        m = self.spec.method
        return F.normalize(pixel_propagation(projection, self.value(projection), m.sharpness, m.clamp), dim=1)

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """``batch["views"]`` (B, 2, 3, S, S) with ``boxes``, ``flips``, ``image_size``: the symmetric pixel loss
        (+ ``instance_weight`` × the symmetric instance loss). Each view is its own pass (BatchNorm statistics per
        view, as the authors' code)."""
        m, views = self.spec.method, batch["views"]
        grids = [self.encoder.forward_map(views[:, v]) for v in (0, 1)]
        propagated = [self.propagate(self.projector(grid)) for grid in grids]
        with torch.no_grad():
            target_grids = [self.target_encoder.forward_map(views[:, v]) for v in (0, 1)]
            targets = [F.normalize(self.target_projector(grid), dim=1) for grid in target_grids]
        h, w = grids[0].shape[2:]
        coords = [crop_coordinates(batch["boxes"][:, v], batch["flips"][:, v], batch["image_size"]) for v in (0, 1)]
        loss_pixel = sum(pixel_consistency(propagated[a], targets[1 - a],
                                           positive_pairs(coords[a], coords[1 - a], h, w, m.threshold))
                         for a in (0, 1))
        out, loss = {"loss_pixel": loss_pixel}, loss_pixel
        if m.instance_weight > 0:
            out["loss_instance"] = self.instance_loss(grids, target_grids)
            loss = loss + m.instance_weight * out["loss_instance"]
        out["loss"] = loss
        return out

    def instance_loss(self, grids: list[torch.Tensor], target_grids: list[torch.Tensor]) -> torch.Tensor:
        """The instance branch: predictor(instance projector(cells)) average-pooled, against the momentum instance
        projector's pooled output of the other view, both directions."""
        prediction = [F.normalize(self.predictor(self.instance_projector(g)).mean(dim=(2, 3)), dim=1) for g in grids]
        with torch.no_grad():
            target = [F.normalize(self.target_instance_projector(g).mean(dim=(2, 3)), dim=1) for g in target_grids]
        return instance_consistency(prediction[0], target[1]) + instance_consistency(prediction[1], target[0])
