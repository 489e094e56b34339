"""PLRC's losses (Bai et al., CVPR 2022, "Point-Level Region Contrast for Object Detection Pre-Training"): a MoCo image
loss, a SupCon-style contrast between points sampled in a shared pseudo-region of two crops, and a DINO-style
self-distillation of each point's affinities to the points of another crop.

Pure functions of tensors. Shapes: N images, C channels, P points, an M × M point grid (``mask_size``). Points are
``(x, y)`` positions on a crop's M × M grid, in grid pixels (0 … M − 1). The authors' code (github.com/
facebookresearch/PLRC at 5fbd1cb): PLRC/models/builder.py (`PLRC.forward`, lines 101-367), PLRC/models/plrc_loss.py
(`Memory_Loss.forward_cont`, lines 232-406; `SelfDistillation`, lines 409-464; `NCEAverage`, lines 467-488;
`SupConLoss`, lines 491-555) and PLRC/models/utils.py (`overlap`, lines 72-120; the same arithmetic as PixPro's
`positive_pairs`, which is reused). docs/plrc.md lists where sslcli departs from that code and why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslcli.losses import in_float32
from sslcli.losses.pixpro import positive_pairs

__all__ = ["affinity_rows", "distillation_pairs", "match_key_points", "point_features", "point_region_contrast",
           "self_distillation", "teacher_temperature"]


def point_features(maps: torch.Tensor, points: torch.Tensor, mask_size: int) -> torch.Tensor:
    """(N, C, P) features of ``maps`` (N, C, h, w) at ``points`` (N, P, 2): bilinear samples at the grid position
    scaled as the authors' builder.py:145-149 does (p / (M − 1) · 2 − 1, then `grid_sample` without aligned corners)."""
    grid = points.to(maps.dtype) / (mask_size - 1) * 2 - 1
    return F.grid_sample(maps, grid.unsqueeze(1), align_corners=False)[:, :, 0]


@torch.no_grad()
@in_float32  # a bf16 cosine would tie or swap near-equal points
def match_key_points(query_points: torch.Tensor, key_points: torch.Tensor, kept: int) -> torch.Tensor:
    """The key crop's point features entering the point loss, (N, C, ``kept``), as builder.py:153-181 picks them.

    For key point k, m_k is the query point most similar to it (cosine); the k-th entry is key point m_k (the
    authors' gather indexes the key points with the query point's index), for the first ``kept`` k. Args:
    ``query_points``, ``key_points`` (N, C, P) from `point_features`.
    """
    query = F.normalize(query_points, dim=1)
    key = F.normalize(key_points, dim=1)
    best = (key.transpose(1, 2) @ query).max(dim=2).indices  # (N, P_key): a query point's index per key point
    matched = key_points.gather(2, best.unsqueeze(1).expand(-1, key_points.shape[1], -1))
    return matched[:, :, :kept]


@in_float32
def point_region_contrast(key_points: torch.Tensor, query_points: torch.Tensor, temperature: float = 0.2,
                          base_temperature: float = 0.07) -> torch.Tensor:
    """The point-level region contrast (SupConLoss.compute_cont_loss, plrc_loss.py:498-555): every point is an
    anchor; its positives are all other points of the same image (both crops), its negatives every point of the
    other images of this rank's batch.

    Args:
        key_points, query_points: (N, C, P) L2-normalised point features of the two crops (key: no gradient).
        temperature: τ = 0.2; base_temperature: 0.07 (the loss is scaled by τ / 0.07).

    Returns:
        Scalar: −(τ / τ_b) · mean over the 2·P·N anchors of the mean log-softmax (self excluded) of its positives.
    """
    n, c, _ = key_points.shape
    features = torch.cat([key_points, query_points], dim=2)  # (N, C, 2P)
    rows = features.permute(2, 0, 1).reshape(-1, c)  # point-major: row v·N + n (the authors' cat(unbind(dim=1)))
    logits = rows @ rows.T / temperature
    image = torch.arange(n, device=rows.device).repeat(features.shape[2])
    self_pair = torch.eye(len(rows), dtype=torch.bool, device=rows.device)
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_pair, float("-inf")), dim=1, keepdim=True)
    positive = (image[:, None] == image[None, :]) & ~self_pair
    mean_log_prob = (log_prob * positive).sum(dim=1) / positive.sum(dim=1)
    return -(temperature / base_temperature) * mean_log_prob.mean()


@torch.no_grad()
def distillation_pairs(coords_student: torch.Tensor, coords_teacher: torch.Tensor, mask_size: int,
                       ratio: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (image, student cell, teacher cell) index triples of the cells of two crops' M × M grids that lie closer
    than ``ratio`` × the larger cell diagonal in the original image (utils.overlap with pos_ratio 0.5, then
    `torch.nonzero` as plrc_loss.py:333-339). ``coords_*`` (N, 4): normalised ``(x_left, y_top, x_right, y_bottom)``
    of each crop, x swapped for a mirrored crop."""
    image, student, teacher = torch.nonzero(positive_pairs(coords_student, coords_teacher, mask_size, mask_size,
                                                           ratio), as_tuple=True)
    return image, student, teacher


def affinity_rows(cells: torch.Tensor, projections: torch.Tensor, key_cells: torch.Tensor, image: torch.Tensor,
                  cell: torch.Tensor, divisor: float = 128.0) -> torch.Tensor:
    """One distillation row per pair (plrc_loss.py:341-362): the cell's affinities to every cell of the key crop,
    divided by ``divisor``, then its projection.

    Args:
        cells: (N, M², B) bottleneck features of a crop's cells (L2-normalised before the interpolation to M × M).
        projections: (N, M², D) the same cells' projections (the head's weight-normalised last layer).
        key_cells: (N, M², B) the key crop's bottleneck cells (L1-normalised: the authors' ``dy=True``).
        image, cell: (R,) the pairs' image and cell indices (`distillation_pairs`).

    Returns:
        (R, M² + D) rows ``[cells · key_cellsᵀ / divisor, projection]``.
    """
    affinity = cells @ key_cells.transpose(1, 2)  # (N, M², M²), as the authors compute it before indexing
    return torch.cat([affinity[image, cell] / divisor, projections[image, cell]], dim=-1)


@in_float32
def self_distillation(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
                      student_temperature: float = 0.1, teacher_temperature: float = 0.07) -> torch.Tensor:
    """SelfDistillation.forward (plrc_loss.py:437-452): mean over rows of the cross-entropy between the teacher's
    softmax((t − center) / τ_t) (no gradient) and the student's log-softmax(s / τ_s). ``student``, ``teacher``
    (R, F); ``center`` (1, F)."""
    target = F.softmax((teacher - center) / teacher_temperature, dim=-1).detach()
    return torch.sum(-target * F.log_softmax(student / student_temperature, dim=-1), dim=-1).mean()


def teacher_temperature(epoch: int, warmup_start: float = 0.04, final: float = 0.07, warmup_epochs: int = 30
                        ) -> float:
    """τ_t of an epoch: ``np.linspace(warmup_start, final, warmup_epochs)[epoch]`` during the warm-up, ``final``
    after it (plrc_loss.py:427-434; the authors' table ends at epoch 100, this one holds ``final`` for any run)."""
    if epoch >= warmup_epochs:
        return final
    if warmup_epochs == 1:
        return warmup_start
    return warmup_start + (final - warmup_start) / (warmup_epochs - 1) * epoch
