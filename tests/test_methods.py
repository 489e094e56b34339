"""Methods on a tiny backbone: finite losses, gradients on online parameters only, momentum updates, queues, and a
loss that goes down on a fixed batch under plain torch SGD (the engine is tested elsewhere)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sslcli.methods import build_method
from sslcli.methods.base import StepInfo
from sslcli.models.ema import cosine_momentum, ema_update, momentum_copy
from sslcli.spec import parse_spec

SIZE, SMALL, BATCH = 32, 16, 8


def make_spec(method: dict, batch_size: int = BATCH):
    return parse_spec({"data": {"root": "unused/", "image_size": SIZE, "workers": 0},
                       "model": {"arch": "resnet18", "width": 8}, "method": method, "batch_size": batch_size})


def make_batch(b: int = BATCH, n_small: int = 0, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"views": torch.randn(b, 2, 3, SIZE, SIZE, generator=g), "index": torch.arange(b)}
    if n_small:
        batch["small"] = torch.randn(b, n_small, 3, SMALL, SMALL, generator=g)
    return batch


def step_info(step: int = 0, epoch: int = 0, total: int = 100) -> StepInfo:
    return StepInfo(step=step, epoch=epoch, steps_per_epoch=10, total_steps=total)


def assert_grads_on_online_only(method: nn.Module, frozen_prefixes: tuple[str, ...]):
    for name, p in method.named_parameters():
        if name.startswith(frozen_prefixes):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all(), name


def loss_drops_on_fixed_batch(method, batch, steps: int = 3, lr: float = 0.05, after_step: bool = False) -> tuple:
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    losses = []
    for s in range(steps + 1):
        torch.manual_seed(0)  # same shuffle-BN permutation every step: only the weights change
        loss = method(batch, step_info(s))["loss"]
        losses.append(loss.item())
        if s == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after_step:
            method.after_step(step_info(s))
    return losses[0], losses[-1]


# ---------------------------------------------------------------------------------------------------------------- EMA
def test_ema_update_formula_on_parameters_and_copies_buffers():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    online(torch.randn(5, 3))  # changes the online BN running statistics
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, t0, o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * o)
    for t, o in zip(target.buffers(), online.buffers()):
        assert torch.equal(t, o)


def test_byol_cosine_momentum_schedule():
    assert cosine_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 0.5) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 1.0) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------------------- SimCLR
def test_simclr_forward_finite_with_grads_and_loss_drops():
    torch.manual_seed(0)
    method = build_method(make_spec({"name": "simclr", "dim": 16, "hidden_dim": 32}))
    batch = make_batch()
    out = method(batch, step_info())
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert_grads_on_online_only(method, ())
    method.zero_grad()
    first, last = loss_drops_on_fixed_batch(method, batch)
    assert last < first


def test_simclr_transform_gives_two_normalised_views(tmp_path):
    import numpy as np

    method = build_method(make_spec({"name": "simclr"}))
    image = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    out = method.transform()({"image": image, "index": 3})
    assert out["views"].shape == (2, 3, SIZE, SIZE) and out["views"].dtype == torch.float32
    assert out["index"] == 3 and "small" not in out


# --------------------------------------------------------------------------------------------------------------- BYOL
def test_byol_forward_grads_online_only_and_target_follows_ema():
    torch.manual_seed(0)
    method = build_method(make_spec({"name": "byol", "dim": 16, "hidden_dim": 32, "base_momentum": 0.9}))
    batch = make_batch()
    out = method(batch, step_info())
    assert torch.isfinite(out["loss"]) and 0 <= out["loss"].item() <= 8
    out["loss"].backward()
    assert_grads_on_online_only(method, ("target_",))
    online_before = copy.deepcopy(method.encoder)
    target_before = copy.deepcopy(method.target_encoder)
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(0.5)
    method.after_step(step_info(step=0, total=10))  # progress 0 → τ = τ₀ = 0.9
    for t, t0, o0 in zip(method.target_encoder.parameters(), target_before.parameters(),
                         online_before.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * (o0 + 0.5), atol=1e-6)


def test_byol_loss_drops_on_fixed_batch():
    torch.manual_seed(0)
    method = build_method(make_spec({"name": "byol", "dim": 16, "hidden_dim": 32}))
    first, last = loss_drops_on_fixed_batch(method, make_batch(), after_step=True)
    assert last < first
