"""D3SSL's region InfoNCE (D3 Eq. 5, METHODS.md §5) and the memory bank of earlier region features.

L_nce(z, z⁺, {z⁻}) = −log exp(z·z⁺/τ) / Σ_{z_j ∈ {z⁻} ∪ {z⁺}} exp(z·z_j/τ), τ = 0.2 (proposed default, spec
``method.temperature``): MoCo's InfoNCE with one row per region, so the arithmetic is `moco_infonce`'s. Negatives come
from `RegionBank`, a FIFO of the teacher's region features of earlier steps, gathered over all ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslcli.engine.dist import gather_no_grad
from sslcli.losses import in_float32
from sslcli.losses.contrastive import moco_infonce
from sslcli.methods.moco import enqueue_, queue_slots


@in_float32
def region_nce(student: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
               temperature: float = 0.2) -> torch.Tensor:
    """Mean region InfoNCE over every region row.

    Args:
        student: (..., D) normalised student region features, e.g. (B, K, D) for K boxes per image.
        positive: (..., D) the teacher's features of the same regions in the other view (same shape; no gradient
            is expected to flow through it — pass it detached).
        negatives: (D, N) the bank's features (`RegionBank.features`), one region per column.
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


class RegionBank(nn.Module):
    """FIFO memory bank of region features: ``features`` (D, size), one normalised feature per column, and ``ptr``.

    Starts from random unit vectors (as MoCo's queue). Read it in the forward pass, `enqueue` after backward: the
    write is in place, and the loss's graph holds the bank.
    """

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.register_buffer("features", F.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @property
    def size(self) -> int:
        return self.features.shape[1]

    @torch.no_grad()
    def enqueue(self, regions: torch.Tensor) -> None:
        """Append ``regions`` (n, D) of this rank, all-gathered over ranks (W·n in all), overwriting the oldest."""
        regions = gather_no_grad(regions.detach().reshape(-1, self.features.shape[0]).contiguous())
        n = regions.shape[0]
        if n > self.size:
            raise ValueError(f"enqueue of {n} regions exceeds the bank size {self.size}")
        slots = queue_slots(self.ptr, n, self.size)
        enqueue_(self.features, slots, regions)
        self.ptr.copy_((self.ptr + n) % self.size)
