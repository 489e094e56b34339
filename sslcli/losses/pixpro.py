"""PixPro's pixel-propagation module (PPM) arithmetic and its losses (Xie et al., CVPR 2021, "Propagate Yourself").

Pure functions of tensors. Shapes: N images, C channels, an H × W feature grid. Coordinates are a crop's corners in
the original image, normalised by the image's width and height, ``(x_left, y_top, x_right, y_bottom)``; a mirrored
crop swaps its two x values (the authors' RandomHorizontalFlipCoord), so its cell centres run right to left. The
authors' code: contrast/models/PixPro.py (github.com/zdaxie/PixPro): `regression_loss` (lines 44-89),
`PixPro.featprop` (lines 178-202) and `PixPro.regression_loss` (lines 204-205).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslcli.losses import in_float32


def pixel_propagation(features: torch.Tensor, values: torch.Tensor, sharpness: float = 2.0,
                      clamp: float = 0.0) -> torch.Tensor:
    """The PPM's propagation: every cell becomes the sum of all cells' normalised values weighted by
    s(i, j) = max(cos(x_i, x_j), clamp)^γ (PixPro eq. 3-4; γ = ``sharpness`` = 2, the released scripts'
    ``--pixpro-p``).

    Args:
        features: (N, C, H, W) projections x (the similarity is computed on them).
        values: (N, C, H, W) the value transform's output g(x) (identity, a 1×1 conv or a 2-layer MLP).

    Returns:
        (N, C, H, W) propagated features (not normalised).
    """
    n, c, h, w = features.shape
    values = F.normalize(values, dim=1).reshape(n, c, -1)
    cells = F.normalize(features, dim=1).reshape(n, c, -1)
    similarity = (cells.transpose(1, 2) @ cells).clamp(min=clamp)  # (N, HW, HW)
    if sharpness < 1.0:  # a fractional power of 0 has an infinite gradient (the authors' guard)
        similarity = similarity + 1e-6
    return (values @ similarity.pow(sharpness).transpose(1, 2)).reshape(n, c, h, w)


def cell_centres(coords: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (N, H·W) x and y of the cells of an H × W grid laid over each crop ``coords`` (N, 4), row-major."""
    bin_w = (coords[:, 2] - coords[:, 0]) / width
    bin_h = (coords[:, 3] - coords[:, 1]) / height
    col = torch.arange(width, dtype=coords.dtype, device=coords.device) + 0.5
    row = torch.arange(height, dtype=coords.dtype, device=coords.device) + 0.5
    x = coords[:, 0, None, None] + bin_w[:, None, None] * col[None, None, :]  # (N, 1, W)
    y = coords[:, 1, None, None] + bin_h[:, None, None] * row[None, :, None]  # (N, H, 1)
    return x.expand(-1, height, -1).reshape(len(coords), -1), y.expand(-1, -1, width).reshape(len(coords), -1)


@torch.no_grad()
def positive_pairs(coords_a: torch.Tensor, coords_b: torch.Tensor, height: int, width: int,
                   threshold: float = 0.7) -> torch.Tensor:
    """(N, HW_a, HW_b) float mask: 1 where cell i of view a and cell j of view b lie closer than ``threshold`` times
    the larger of the two views' cell diagonals, measured in original-image coordinates (PixPro eq. 1; T = 0.7)."""
    ax, ay = cell_centres(coords_a, height, width)
    bx, by = cell_centres(coords_b, height, width)
    diag_a = torch.hypot((coords_a[:, 2] - coords_a[:, 0]) / width, (coords_a[:, 3] - coords_a[:, 1]) / height)
    diag_b = torch.hypot((coords_b[:, 2] - coords_b[:, 0]) / width, (coords_b[:, 3] - coords_b[:, 1]) / height)
    scale = torch.maximum(diag_a, diag_b)[:, None, None]
    distance = torch.hypot(ax[:, :, None] - bx[:, None, :], ay[:, :, None] - by[:, None, :]) / scale
    return (distance < threshold).to(coords_a.dtype)


@in_float32
def pixel_consistency(propagated: torch.Tensor, target: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """PixPro's pixel-to-propagation consistency for one direction: −2 · mean over images of the mean cosine over the
    positive pairs (an image without positive pairs contributes 0, the authors' ``+ 1e-6``).

    Args:
        propagated: (N, C, H, W) normalised PPM outputs of view a (online).
        target: (N, C, H, W) normalised projections of view b (momentum encoder).
        positives: (N, HW, HW) `positive_pairs` of (a, b).
    """
    n, c = propagated.shape[:2]
    cosine = propagated.reshape(n, c, -1).transpose(1, 2) @ target.reshape(n, c, -1)  # (N, HW_a, HW_b)
    per_image = (cosine * positives).sum(dim=(1, 2)) / (positives.sum(dim=(1, 2)) + 1e-6)
    return -2.0 * per_image.mean()


@in_float32
def instance_consistency(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The instance branch's BYOL term for one direction: −2 · mean cosine of (N, D) normalised rows."""
    return -2.0 * (prediction * target).sum(dim=1).mean()
