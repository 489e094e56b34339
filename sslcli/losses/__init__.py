"""Losses as pure functions whose docstrings state tensor shapes and cite the paper for each hyperparameter.

Modules: ``contrastive`` (InfoNCE with a queue, NT-Xent, kNN-MoCo), ``regression`` (BYOL, SoCo's ``soco_loss``),
``detcon``, ``region_nce`` (D3SSL's region InfoNCE and ``d3ssl_loss``). Queues and memory banks, which hold state and
gather over ranks, are network parts in ``sslcli.models.queue``; a loss only reads their tensors.
"""

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def _widen(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    if isinstance(x, (list, tuple)):
        return type(x)(_widen(v) for v in x)
    return x


def in_float32(loss: F) -> F:
    """Compute ``loss`` in (at least) float32 with autocast off.

    Logits divided by a temperature of 0.1–0.2 reach ±10, where bf16 resolves only ~0.06, and 2 − 2·cos near
    convergence loses its digits in half precision; the networks stay in bf16/fp16, the loss does not.
    """

    @functools.wraps(loss)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_widen(a) for a in args)
        kwargs = {k: _widen(v) for k, v in kwargs.items()}
        device = next((t.device.type for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), "cpu")
        with torch.autocast(device, enabled=False):
            return loss(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
