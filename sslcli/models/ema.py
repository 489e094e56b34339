"""Momentum (EMA) networks: MoCo's key encoder, the EMA targets of BYOL, DetCon_B, SoCo and D3SSL.

A method declares its momentum pairs once, as the attribute names ``(online, target)`` of each network it averages
(solo-learn's ``momentum_pairs``); `add_momentum_targets` creates every target from its online network and
`update_momentum_targets` averages all of them after each optimiser step.

Only parameters are averaged: target ← m·target + (1 − m)·online. Buffers (BatchNorm running mean/var and
num_batches_tracked) are copied from the online network: both networks run in train mode, so running statistics never
influence the loss; copying keeps the target's statistics meaningful if it is ever evaluated.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

MomentumPairs = tuple[tuple[str, str], ...]
"""``((online, target), ...)``: attribute names on the owning module, e.g. ``(("encoder", "target_encoder"),)``."""


def momentum_copy(online: nn.Module) -> nn.Module:
    """A deep copy of ``online`` with gradients disabled: the starting point of a key/target network."""
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target_param ← m·target_param + (1 − m)·online_param for every parameter; buffers copied from ``online``."""
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError("ema_update: target and online networks have different parameter lists")
    for t, o in zip(target_params, online_params):
        t.lerp_(o, 1.0 - momentum)  # t + (1 − m)(o − t) = m·t + (1 − m)·o
    for target_buffer, online_buffer in zip(target.buffers(), online.buffers()):
        target_buffer.copy_(online_buffer)


def add_momentum_targets(owner: nn.Module, pairs: MomentumPairs) -> None:
    """Set ``owner.<target>`` to a `momentum_copy` of ``owner.<online>`` for every pair (targets registered in order)."""
    for online, target in pairs:
        setattr(owner, target, momentum_copy(_module(owner, online)))


@torch.no_grad()
def update_momentum_targets(owner: nn.Module, pairs: MomentumPairs, momentum: float) -> None:
    """`ema_update` of every pair's target towards its online network with the same ``momentum``."""
    for online, target in pairs:
        ema_update(_module(owner, target), _module(owner, online), momentum)


def _module(owner: nn.Module, name: str) -> nn.Module:
    module = getattr(owner, name, None)
    if not isinstance(module, nn.Module):
        raise AttributeError(f"momentum pair: {type(owner).__name__}.{name} is not a network (got {type(module).__name__})")
    return module


def cosine_momentum(base_momentum: float, progress: float) -> float:
    """BYOL's schedule τ_t = 1 − (1 − τ₀)(cos(π·progress) + 1)/2: τ₀ at the start, 1 at the end (progress in [0, 1])."""
    progress = min(max(progress, 0.0), 1.0)
    return 1.0 - (1.0 - base_momentum) * (math.cos(math.pi * progress) + 1.0) / 2.0
