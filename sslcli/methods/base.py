"""The contract between a method and the engine.

Data flow: the engine's dataset reads a sample dict ``{"image": (H,W,3) uint8 RGB, "index": int, ...}`` (plus
``"masks"`` / ``"boxes"`` when the spec names a region store), calls the method's ``transform`` on it inside
DataLoader workers, collates the results with ``default_collate``, moves tensors to the device and calls
``method(batch, step)`` which returns a dict of scalar losses, the total under ``"loss"``. After the optimiser step
the engine calls ``after_step`` (momentum/EMA updates, queues). Methods never touch loops, optimisers or devices;
cross-rank communication goes through `sslcli.distributed`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sslcli.models.ema import MomentumPairs, add_momentum_targets, cosine_momentum, update_momentum_targets


@dataclass
class StepInfo:
    """Where training is. ``progress`` = step / total_steps in [0, 1]; ``epoch`` counts from 0."""

    step: int
    epoch: int
    steps_per_epoch: int
    total_steps: int

    @property
    def progress(self) -> float:
        return self.step / max(self.total_steps, 1)


class Method(nn.Module):
    """Base class: subclasses set ``self.encoder`` (the backbone to export) and implement the three hooks."""

    def __init__(self, spec: Any):
        super().__init__()
        self.spec = spec

    def transform(self) -> Callable[[dict], dict]:
        """A picklable callable turning one sample dict into tensors (the views), run in DataLoader workers."""
        raise NotImplementedError

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:  # type: ignore[override]
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        """Momentum/EMA updates and queue maintenance; default: nothing (`MomentumMethod` averages its targets)."""

    def backbone(self) -> nn.Module:
        """The pretrained backbone (a ResNetBackbone) that checkpoints export and probes evaluate."""
        return self.encoder  # type: ignore[return-value]


class MomentumMethod(Method):
    """A method with momentum (EMA) networks, declared once in ``momentum_pairs`` as ``(online, target)`` attribute
    names. ``__init__`` calls `init_momentum_targets` once the online networks exist; `after_step` averages every
    target with `momentum` (subclasses that keep queues call ``super().after_step(step)`` first)."""

    momentum_pairs: MomentumPairs = ()

    def init_momentum_targets(self) -> None:
        """Create each target as a frozen copy of its online network (`sslcli.models.ema.add_momentum_targets`)."""
        add_momentum_targets(self, self.momentum_pairs)

    def momentum(self, step: StepInfo) -> float:
        """τ of this step: BYOL's cosine schedule from ``method.base_momentum`` (MoCo overrides: a constant)."""
        return cosine_momentum(self.spec.method.base_momentum, step.progress)

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        if self.momentum_pairs:
            update_momentum_targets(self, self.momentum_pairs, self.momentum(step))
