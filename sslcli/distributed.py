"""torch.distributed helpers. Every loss that gathers across ranks uses `gather_with_grad`.

A plain ``all_gather`` returns tensors without autograd history, so gradients from other ranks' rows would be
dropped silently; `gather_with_grad` routes each rank's slice of the gradient back to it.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (no gradient). Identity in a single process."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    torch_dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.batch = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size())]
        torch_dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        # Every rank computed a loss over the full gathered batch: sum those gradients, keep this rank's rows.
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        start = rank() * ctx.batch
        return grad[start:start + ctx.batch]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (equal shapes on every rank) along dim 0, keeping gradients for this rank's rows."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_distributed():
        torch_dist.broadcast(x, src)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        x = x.clone()
        torch_dist.all_reduce(x)
        x /= world_size()
    return x
