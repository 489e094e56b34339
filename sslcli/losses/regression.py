"""BYOL's normalised regression loss (Grill et al. 2020, eq. 2), also the base of DetCon_B and SoCo."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslcli.losses import in_float32


@in_float32
def normalized_regression(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row ‖p̂ − ẑ‖² = 2 − 2·cos(p, z), with p̂, ẑ the L2-normalised rows.

    Args:
        prediction: (..., D) online predictions p (not necessarily normalised).
        target: (..., D) target projections z; treated as constants (detached).

    Returns:
        (...,) one value per row.
    """
    p = F.normalize(prediction, dim=-1)
    z = F.normalize(target.detach(), dim=-1)
    return 2 - 2 * (p * z).sum(dim=-1)


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric BYOL loss: mean over rows of (2 − 2·cos(p1, z2)) + mean of (2 − 2·cos(p2, z1)).

    Args:
        p1, p2: (B, D) online predictions of views 1 and 2.
        z1, z2: (B, D) target projections of views 1 and 2 (no gradient).
    """
    return normalized_regression(p1, z2).mean() + normalized_regression(p2, z1).mean()
