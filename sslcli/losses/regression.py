"""BYOL's normalised regression loss (Grill et al. 2020, eq. 2), also the base of DetCon_B, and SoCo's box loss."""

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


@in_float32
def corresponding_regression(prediction: torch.Tensor, target: torch.Tensor, prediction_ids: torch.Tensor,
                             target_ids: torch.Tensor) -> torch.Tensor:
    """SoCo's box loss with its correspondence matrix (the authors' ``regression_loss_bboxs``), plus 2.

    Per image, C_ij = [id of prediction box i = id of target box j] and the loss is
    2 − 2·Σ_ij C_ij cos(p_i, z_j) / Σ_ij C_ij: every copy of a box is a positive of every copy of it in the other
    view. With distinct ids in the same order (C = I) it is the mean of `normalized_regression` over the boxes.

    Args:
        prediction: (B·K, D) online predictions, image-major. target: (B·K, D) target projections (detached).
        prediction_ids, target_ids: (B, K) integer ids of the boxes.

    Returns:
        Scalar: the mean over the B images.
    """
    batch, k = prediction_ids.shape
    p = F.normalize(prediction, dim=-1).view(batch, k, -1)
    z = F.normalize(target.detach(), dim=-1).view(batch, k, -1)
    corr = (prediction_ids[:, :, None] == target_ids[:, None, :]).to(p.dtype)       # (B, K, K)
    similarity = (p @ z.transpose(1, 2) * corr).sum((1, 2)) / corr.sum((1, 2))   # Σ C ≥ 1: both views hold every id
    return (2 - 2 * similarity).mean()


def soco_loss(predictions: list[torch.Tensor], targets: list[torch.Tensor], pairs: tuple[tuple[int, int], ...],
              ids: list[torch.Tensor] | None = None,
              set_views: tuple[int, ...] | None = None) -> dict[str, torch.Tensor]:
    """SoCo's loss (METHODS.md §4): Σ over pairs (a, b) of box sets of the loss a → b plus the loss b → a.

    Without ``ids``, box k of every set is the same box: mean_k(2 − 2cos(p_a,k, z_b,k)). With ``ids``, the
    authors' correspondence (`corresponding_regression`): per image 2 − 2·Σ C_ij cos(p_a,i, z_b,j) / ΣC.

    Args:
        predictions: per box set, (N, D) online predictions of the N = B·K boxes, image-major.
        targets: per box set, (N, D) target projections (treated as constants).
        pairs: box-set index pairs, e.g. ((0, 1), (0, 2)).
        ids: per box set, (B, K) proposal ids; None = correspondence by index.
        set_views: the view of each box set (names the terms); None = set i is view i.

    Returns:
        {"loss": the total, "loss_v{a+1}v{b+1}": each pair's symmetrised term, named by views (for logging)}.
    """
    views = set_views or tuple(range(len(predictions)))

    def direction(a: int, b: int) -> torch.Tensor:
        if ids is None:
            return normalized_regression(predictions[a], targets[b]).mean()
        return corresponding_regression(predictions[a], targets[b], ids[a], ids[b])

    terms = {f"loss_v{views[a] + 1}v{views[b] + 1}": direction(a, b) + direction(b, a) for a, b in pairs}
    return {"loss": torch.stack(list(terms.values())).sum(), **terms}
