"""D3SSL's region InfoNCE (D3 Eq. 5, METHODS.md §5) and the memory bank of earlier region features.

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
