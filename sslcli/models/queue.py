"""FIFO feature queues: MoCo's key queue arithmetic and D3SSL's region memory bank (gathered over all ranks).

Network state, not loss arithmetic: the losses read a queue's tensor as their negatives; the method enqueues after
the optimiser step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslcli.distributed import gather_no_grad


def queue_slots(ptr: int | torch.Tensor, n: int, size: int) -> torch.Tensor:
    """Columns written by an enqueue of ``n`` entries at pointer ``ptr`` in a queue of ``size``: (ptr + i) mod size.

    ``ptr`` may be the (1,) pointer buffer itself: the slots then stay on its device (no host sync on GPU).
    """
    device = ptr.device if isinstance(ptr, torch.Tensor) else None
    return (ptr + torch.arange(n, device=device)) % size


@torch.no_grad()
def mean_pairwise_cosine(columns: torch.Tensor) -> torch.Tensor:
    """Mean cosine over all K² ordered pairs (self-pairs included) of the unit columns of a (D, K) queue: ‖mean‖².

    A training diagnostic logged by the queue methods: near 0 when the keys are spread out, near 1 when they all point
    one way, as a random-init network's keys do and as a collapsing run's do. MoCo-v2 on the planted benchmark spends
    its first hundreds of steps near 0.9 (docs/results/README.md).
    """
    return columns.detach().float().mean(dim=1).square().sum()


@torch.no_grad()
def enqueue_(queue: torch.Tensor, slots: torch.Tensor, entries: torch.Tensor) -> None:
    """Write ``entries`` (n, D) into the columns ``slots`` of ``queue`` (D, K), in place (the oldest are replaced)."""
    queue[:, slots.to(queue.device)] = entries.T.to(queue.dtype)


class RegionBank(nn.Module):
    """FIFO memory bank of region features: ``features`` (D, size), one normalised feature per column, and ``ptr``.

    Starts from random unit vectors (as MoCo's queue). Read it in the forward pass, `enqueue` after backward: the
    write is in place, and the loss's graph holds the bank.
    """

    features: torch.Tensor
    ptr: torch.Tensor

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
