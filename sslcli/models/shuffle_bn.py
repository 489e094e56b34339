"""Shuffle-BN (MoCo, DenseCL): encode the key crops in a shuffled batch so that a key's BatchNorm statistics do not
come from its own query's batch, then put the outputs back in the batch's order.

With torch.distributed the key crops are gathered from all ranks, permuted by a random permutation broadcast from
rank 0, each rank encodes its shard, and the outputs are un-shuffled. In a single process (no other rank to shuffle
with) the substitute permutes the batch and encodes it in groups of at least 4 images (2–8 groups), so each key's BN
statistics come from a random subset of the batch (METHODS.md §1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sslcli import distributed as dist


def single_process_groups(batch: int) -> int:
    """Number of BN groups for the single-process shuffle-BN substitute: the most of 8, 4, 2 leaving ≥ 4 per group."""
    return next((g for g in (8, 4, 2) if batch % g == 0 and batch // g >= 4), 1)


@torch.no_grad()
def shuffled_encode(encode: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], x: torch.Tensor
                    ) -> tuple[torch.Tensor, ...]:
    """``encode`` (crops → per-image outputs, each with the batch on dim 0) of this rank's crops ``x``, run on a
    shuffled batch; every output is returned in ``x``'s order."""
    b = x.shape[0]
    if dist.is_distributed():
        x_all = dist.gather_no_grad(x)
        perm = dist.broadcast(torch.randperm(x_all.shape[0], device=x.device), src=0)
        mine = perm.view(dist.world_size(), b)[dist.rank()]
        outputs = [dist.gather_no_grad(out) for out in encode(x_all[mine])]
        # outputs[j] belongs to image perm[j]: image g sits at position argsort(perm)[g].
        restore = torch.argsort(perm).view(dist.world_size(), b)[dist.rank()]
        return tuple(out[restore] for out in outputs)
    perm = torch.randperm(b, device=x.device)
    parts = [encode(chunk) for chunk in x[perm].chunk(single_process_groups(b))]
    inverse = torch.argsort(perm)
    return tuple(torch.cat(group)[inverse] for group in zip(*parts, strict=True))
