"""Optimisers: SGD with momentum and LARS, biases and normalisation parameters optionally excluded.

With ``optimizer.exclude_bias_and_norm`` (METHODS.md §3: DetCon, BYOL, SimCLR), biases and the affine parameters of
normalisation layers get no weight decay and, for LARS, no trust-ratio adaptation. Only parameters with
``requires_grad`` are optimised (momentum encoders and EMA targets are not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import ParamsT

from sslcli.spec import OptimizerSpec

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(regular, bias_and_norm): the trainable parameters, split by whether they are biases or norm affines."""
    regular, excluded, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, _NORM_TYPES) or name == "bias":
                excluded.append(param)
            else:
                regular.append(param)
    return regular, excluded


def param_groups(model: nn.Module, spec: OptimizerSpec) -> list[dict[str, Any]]:
    """Parameter groups; the excluded group has ``weight_decay`` 0 and ``lars_exclude`` True."""
    regular, excluded = split_parameters(model)
    if not spec.exclude_bias_and_norm:
        return [{"params": regular + excluded, "weight_decay": spec.weight_decay, "lars_exclude": False}]
    groups = [{"params": regular, "weight_decay": spec.weight_decay, "lars_exclude": False},
              {"params": excluded, "weight_decay": 0.0, "lars_exclude": True}]
    return [g for g in groups if g["params"]]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017), as used by SimCLR, BYOL and DetCon.

    Per parameter p with gradient g (groups with ``lars_exclude`` skip the first two lines):
        g ← g + wd·p
        g ← g · η·‖p‖ / ‖g‖          (when both norms are > 0, else unchanged)
        v ← μ·v + g ;  p ← p − lr·v
    """

    def __init__(self, params: ParamsT, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3):
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "lars_exclude": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        grad = grad.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm,
                                        torch.ones_like(p_norm))
                    grad = grad.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, spec: OptimizerSpec, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (L2 weight decay) or LARS over the trainable parameters, at learning rate ``lr``."""
    groups = param_groups(model, spec)
    if spec.name == "lars":
        return LARS(groups, lr=lr, momentum=spec.momentum, eta=spec.lars_eta)
    return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
