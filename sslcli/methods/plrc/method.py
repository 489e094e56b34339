"""PLRC (Bai et al., CVPR 2022): MoCo's image InfoNCE on the mean of the point head's cells, a point-level region
contrast between points sampled in a shared pseudo-region of two crops, and a self-distillation of each point's
affinities (and projections) from a momentum teacher on an overlapping crop.

Networks: query encoder = backbone + point head (1×1 convs 2048→2048→128, no BN: the authors' ``fcs``) + distillation
head (1×1 convs 2048→2048→BN→ReLU→2048→BN→ReLU→256, normalised, then a weight-normalised 1×1 → 4096 with its norm
fixed at 1: the authors' ProjHead ``fcs_2``); key encoder and heads = their momentum copies (constant
``method.momentum``). Buffers: ``queue`` (image keys), ``queue_ptr``, ``center`` (the self-distillation's teacher
centre, M² + 4096). The authors' code: PLRC/models/builder.py and resnet.py of github.com/facebookresearch/PLRC;
docs/plrc.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslcli import distributed as dist
from sslcli.losses.contrastive import moco_infonce
from sslcli.losses.plrc import (
    affinity_rows,
    distillation_pairs,
    match_key_points,
    point_features,
    point_region_contrast,
    self_distillation,
    teacher_temperature,
)
from sslcli.methods.base import MomentumMethod, StepInfo
from sslcli.methods.plrc.views import (
    KEY,
    QUERY,
    TEACHER,
    PlrcViews,
    crop_coordinates,
    plrc_views,
    region_labels,
    sample_region_points,
)
from sslcli.models.backbone import build_backbone
from sslcli.models.heads import conv_mlp
from sslcli.models.queue import enqueue_, queue_slots
from sslcli.models.shuffle_bn import shuffled_encode


class DistillHead(nn.Module):
    """The authors' ProjHead on every cell: a 3-layer MLP (BN over all cells) to the bottleneck, normalised along
    the channels (L2, or L1 for the key crop: their ``dy=True``), then a bias-free 1×1 conv whose filters are
    normalised to unit length (``weight_norm`` with the norm fixed at 1)."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(in_dim, hidden_dim, 1), nn.BatchNorm2d(hidden_dim), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden_dim, hidden_dim, 1), nn.BatchNorm2d(hidden_dim),
                                 nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, bottleneck_dim, 1))
        self.last = nn.Parameter(nn.Linear(bottleneck_dim, out_dim, bias=False).weight.detach().clone())

    def bottleneck(self, x: torch.Tensor, p: int = 2) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=1, p=p)

    def project(self, cells: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,dc->ndhw", cells, F.normalize(self.last, dim=1))


def cells_on_grid(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, h, w) → (N, M², C): bilinearly resized to M × M (builder.py: `interpolate(..., mode="bilinear")`),
    row-major cells."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)


class PLRC(MomentumMethod):
    """Query encoder + point and distillation heads; their momentum copies encode the key and teacher crops."""

    momentum_pairs = (("encoder", "key_encoder"), ("point_head", "key_point_head"),
                      ("distill_head", "key_distill_head"))

    def __init__(self, spec):
        super().__init__(spec)
        m = spec.method
        self.encoder = build_backbone(spec.model.arch, spec.model.width, stem=spec.model.stem)
        self.point_head = conv_mlp(self.encoder.out_channels, m.hidden_dim, m.dim, batch_norm=False)
        self.distill_head = DistillHead(self.encoder.out_channels, m.hidden_dim, m.bottleneck_dim, m.distill_dim)
        self.init_momentum_targets()
        self.register_buffer("queue", F.normalize(torch.randn(m.dim, m.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("center", torch.zeros(1, m.mask_size ** 2 + m.distill_dim))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # gathered keys, new centre

    def transform(self) -> PlrcViews:
        """Crop 0 and crop 1 with points, and crop 0's teacher crop (`sslcli.methods.plrc.views`)."""
        return plrc_views(self.spec)

    def momentum(self, step: StepInfo) -> float:
        return self.spec.method.momentum  # constant, as MoCo

    def _key_crop(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The key network on crop 1: its point map and its L1-normalised bottleneck cells (the authors' ``dy``)."""
        grid = self.key_encoder.forward_map(crops)
        return self.key_point_head(grid), self.key_distill_head.bottleneck(grid, p=1)

    def _teacher_crop(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The key network on the teacher crop: its L2-normalised bottleneck cells and their projections."""
        cells = self.key_distill_head.bottleneck(self.key_encoder.forward_map(crops))
        return cells, self.key_distill_head.project(cells)

    @torch.no_grad()
    def encode_keys(self, encode, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``encode`` (`_key_crop` or `_teacher_crop`) of one crop per image, in a shuffled batch when
        ``method.shuffle_bn`` (each crop its own shuffle, as the authors')."""
        return shuffled_encode(encode, crops) if self.spec.method.shuffle_bn else encode(crops)

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """``batch["views"]`` (B, 2, 3, S, S) crop 0 and crop 1, ``batch["small"]`` (B, 1, 3, S, S) the teacher
        crop, with ``boxes``, ``flips``, ``image_size``. loss = im · image + cl · point + ts · distill."""
        m = self.spec.method
        grid = self.encoder.forward_map(batch["views"][:, QUERY])
        query_map = self.point_head(grid)
        query_cells = self.distill_head.bottleneck(grid)
        key_map, key_cells = self.encode_keys(self._key_crop, batch["views"][:, KEY])
        teacher_cells, teacher_projection = self.encode_keys(self._teacher_crop, batch["small"][:, 0])
        query_key = F.normalize(query_map.mean(dim=(2, 3)), dim=1)
        key = F.normalize(key_map.mean(dim=(2, 3)), dim=1)
        loss_image = moco_infonce(query_key, key, self.queue, m.image_temperature)
        loss_point = self.point_loss(batch, query_map, key_map)
        loss_distill, center = self.distill_loss(batch, step, (query_cells, self.distill_head.project(query_cells)),
                                                 (teacher_cells, teacher_projection), key_cells)
        self._pending = (dist.gather_no_grad(key), center)
        return {"loss": m.image_weight * loss_image + m.point_weight * loss_point + m.distill_weight * loss_distill,
                "loss_image": loss_image, "loss_point": loss_point, "loss_distill": loss_distill}

    def point_loss(self, batch: dict, query_map: torch.Tensor, key_map: torch.Tensor) -> torch.Tensor:
        """Points of a shared pseudo-region in crop 0 and crop 1 (drawn here, on the batch's device), their point-head
        features, the key points the authors' matching keeps, and the region contrast between the two sets."""
        m = self.spec.method
        labels = [region_labels(batch["boxes"][:, c], batch["flips"][:, c], batch["image_size"], m.grid,
                                m.mask_size) for c in (QUERY, KEY)]
        query_points, key_points = sample_region_points(labels[0], labels[1], m.grid ** 2, m.points)
        query_features = point_features(query_map, query_points, m.mask_size)
        key_features = point_features(key_map, key_points, m.mask_size)
        key_kept = match_key_points(query_features.detach(), key_features, m.kept_points)
        return point_region_contrast(F.normalize(key_kept, dim=1),
                                     F.normalize(query_features[:, :, :m.kept_points], dim=1),
                                     m.point_temperature, m.point_base_temperature)

    def distill_loss(self, batch: dict, step: StepInfo, student: tuple[torch.Tensor, torch.Tensor],
                     teacher: tuple[torch.Tensor, torch.Tensor], key_cells: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The self-distillation between the cells of crop 0 (student) and of its teacher crop that lie close in
        the image, each row its affinities to crop 1's cells and its projection; and the teacher centre's update."""
        m = self.spec.method
        coords = [crop_coordinates(batch["boxes"][:, c], batch["flips"][:, c], batch["image_size"])
                  for c in (QUERY, TEACHER)]
        image, student_cell, teacher_cell = distillation_pairs(coords[0], coords[1], m.mask_size, m.pair_ratio)
        key = cells_on_grid(key_cells, m.mask_size)
        rows = [affinity_rows(cells_on_grid(cells, m.mask_size), cells_on_grid(projection, m.mask_size), key, image,
                              index, m.affinity_divisor)
                for (cells, projection), index in ((student, student_cell), (teacher, teacher_cell))]
        temperature = teacher_temperature(step.epoch, m.warmup_teacher_temperature, m.teacher_temperature,
                                          m.warmup_teacher_epochs)
        loss = self_distillation(rows[0], rows[1], self.center, m.student_temperature, temperature)
        return loss, self.updated_center(rows[1].detach())

    @torch.no_grad()
    def updated_center(self, teacher_rows: torch.Tensor) -> torch.Tensor:
        """The centre after this step: momentum average with the mean teacher row over every rank's rows
        (SelfDistillation.update_center; its all-reduced sum over this rank's count × world size is the same when
        the ranks have as many rows)."""
        totals = torch.cat([teacher_rows.float().sum(dim=0), teacher_rows.new_tensor([len(teacher_rows)]).float()])
        totals = dist.all_reduce_mean(totals)
        batch_center = (totals[:-1] / totals[-1]).unsqueeze(0)
        momentum = self.spec.method.center_momentum
        return self.center * momentum + batch_center * (1 - momentum)

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        """Momentum update of the key networks, every rank's image keys into the queue, the new teacher centre."""
        super().after_step(step)
        if self._pending is None:
            return
        keys, center = self._pending
        self._pending = None
        size = self.queue.shape[1]
        enqueue_(self.queue, queue_slots(self.queue_ptr, keys.shape[0], size), keys)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)
        self.center.copy_(center)
