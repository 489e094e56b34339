"""D3SSL's region InfoNCE (D3 Eq. 5, METHODS.md §5) and its loss (D3 Eq. 10).

L_nce(z, z⁺, {z⁻}) = −log exp(z·z⁺/τ) / Σ_{z_j ∈ {z⁻} ∪ {z⁺}} exp(z·z_j/τ), τ = 0.2 (proposed default, spec
``method.temperature``): MoCo's InfoNCE with one row per region, so the arithmetic is `moco_infonce`'s. Negatives come
from `sslcli.models.queue.RegionBank`, a FIFO of the teacher's region features of earlier steps, gathered over all
ranks.
"""

from __future__ import annotations

import torch

from sslcli.losses import in_float32
from sslcli.losses.contrastive import moco_infonce


@in_float32
def region_nce(student: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
               temperature: float = 0.2) -> torch.Tensor:
    """Mean region InfoNCE over every region row.

    Args:
        student: (..., D) normalised student region features, e.g. (B, K, D) for K boxes per image.
        positive: (..., D) the teacher's features of the same regions in the other view (same shape; no gradient
            is expected to flow through it — pass it detached).
        negatives: (D, N) the bank's features (`sslcli.models.queue.RegionBank.features`), one region per column.
        temperature: τ (0.2).

    Returns:
        Scalar: mean over all regions of −log softmax([z·z⁺, z·bank] / τ)[0]; the (1/K) Σ_i of D3 Eq. 10 for one term.
    """
    if student.shape != positive.shape:
        raise ValueError(f"student {tuple(student.shape)} and positive {tuple(positive.shape)} differ in shape")
    dim = student.shape[-1]
    if negatives.dim() != 2 or negatives.shape[0] != dim:
        raise ValueError(f"negatives: expected (D={dim}, N), got {tuple(negatives.shape)}")
    return moco_infonce(student.reshape(-1, dim), positive.reshape(-1, dim), negatives, temperature)


def d3ssl_loss(s1: torch.Tensor, s2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, bank: torch.Tensor,
               temperature: float, s3: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """D3 Eq. 10 with region InfoNCE (Eq. 5) terms: L_dc = NCE(s1, t2) + NCE(s2, t1), L_dp = NCE(s3, t2) + NCE(s3, t1).

    Args:
        s1, s2, s3: (B, K, D) normalised student features of x̂1 (de-coupled whole image), x̂2s (de-coupled small
            crop) and x3 (the de-positioned composite; None: no de-positioning).
        t1, t2: (B, K, D) normalised teacher features of x̂1 and x2 (constants). bank: (D, N) negatives.

    Returns:
        {"loss": L_dc + L_dp, "loss_dc", and "loss_dp" when s3 is given}, each a mean over the B·K boxes.
    """
    loss_dc = region_nce(s1, t2, bank, temperature) + region_nce(s2, t1, bank, temperature)
    if s3 is None:
        return {"loss": loss_dc, "loss_dc": loss_dc}
    loss_dp = region_nce(s3, t2, bank, temperature) + region_nce(s3, t1, bank, temperature)
    return {"loss": loss_dc + loss_dp, "loss_dc": loss_dc, "loss_dp": loss_dp}
