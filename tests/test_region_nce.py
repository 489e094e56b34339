"""D3SSL region InfoNCE (D3 Eq. 5) against hand computations and a numpy port; the region bank's FIFO pointer."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslcli.losses.region_nce import region_nce
from sslcli.models.queue import RegionBank


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_region_nce_hand_computed():
    # Bank columns e2 and (−0.6, 0.8); τ = 0.2. Region 1: z = e1, z⁺ = (0.6, 0.8):
    #   z·z⁺ = 0.6 → 3; z·e2 = 0 → 0; z·(−0.6, 0.8) = −0.6 → −3: CE = log(e³ + 1 + e⁻³) − 3.
    # Region 2: z = z⁺ = e2 → 5; z·e2 = 1 → 5; z·(−0.6, 0.8) = 0.8 → 4: CE = log(2e⁵ + e⁴) − 5.
    student = _t([[[1.0, 0.0], [0.0, 1.0]]])  # (B=1, K=2, D=2)
    positive = _t([[[0.6, 0.8], [0.0, 1.0]]])
    bank = _t([[0.0, -0.6], [1.0, 0.8]])  # (D, N=2)
    first = math.log(math.exp(3) + 1 + math.exp(-3)) - 3
    second = math.log(2 * math.exp(5) + math.exp(4)) - 5
    assert region_nce(student, positive, bank, 0.2).item() == pytest.approx((first + second) / 2, rel=1e-12)


def _np_region_nce(z, zp, bank, tau):
    """Eq. 5 written out: −log exp(z·z⁺/τ) / Σ_{z_j ∈ bank ∪ {z⁺}} exp(z·z_j/τ), averaged over regions."""
    losses = []
    for a, p in zip(z.reshape(-1, z.shape[-1]), zp.reshape(-1, z.shape[-1])):
        candidates = [p] + list(bank.T)
        denominator = sum(math.exp(float(a @ c) / tau) for c in candidates)
        losses.append(-math.log(math.exp(float(a @ p) / tau) / denominator))
    return float(np.mean(losses))


def test_region_nce_matches_numpy_port():
    rng = np.random.default_rng(0)

    def unit(*shape):
        x = rng.standard_normal(shape)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    z, zp, bank = unit(3, 4, 8), unit(3, 4, 8), unit(16, 8).T
    got = region_nce(_t(z), _t(zp), _t(bank), 0.2).item()
    assert got == pytest.approx(_np_region_nce(z, zp, bank, 0.2), rel=1e-10)


def test_region_nce_gradient_and_precision():
    torch.manual_seed(0)
    student = torch.nn.functional.normalize(torch.randn(6, 8), dim=1).bfloat16().requires_grad_()
    positive = torch.nn.functional.normalize(torch.randn(6, 8), dim=1).bfloat16()
    bank = torch.nn.functional.normalize(torch.randn(8, 10), dim=0)
    loss = region_nce(student, positive, bank, 0.2)
    assert loss.dtype == torch.float32  # computed in float32 (in_float32)
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_region_nce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        region_nce(torch.zeros(4, 8), torch.zeros(3, 8), torch.zeros(8, 5))
    with pytest.raises(ValueError, match="negatives"):
        region_nce(torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(5, 8))


# ------------------------------------------------------------------------------------------------------------- bank
def test_bank_starts_normalised_and_wraps_fifo():
    torch.manual_seed(0)
    bank = RegionBank(dim=2, size=5)
    assert bank.features.shape == (2, 5) and bank.ptr.item() == 0
    torch.testing.assert_close(bank.features.norm(dim=0), torch.ones(5))
    initial = bank.features.clone()
    first = torch.arange(6, dtype=torch.float32).reshape(3, 2)  # rows (0,1), (2,3), (4,5)
    bank.enqueue(first)
    assert bank.ptr.item() == 3
    torch.testing.assert_close(bank.features[:, :3], first.T)
    torch.testing.assert_close(bank.features[:, 3:], initial[:, 3:])
    # Three more: columns 3, 4 then 0 (wrapping); column 0 (the oldest) is overwritten, 1 and 2 survive.
    second = -1 - torch.arange(6, dtype=torch.float32).reshape(3, 2)
    bank.enqueue(second)
    assert bank.ptr.item() == 1
    torch.testing.assert_close(bank.features[:, 3], second[0])
    torch.testing.assert_close(bank.features[:, 4], second[1])
    torch.testing.assert_close(bank.features[:, 0], second[2])
    torch.testing.assert_close(bank.features[:, 1:3], first[1:].T)


def test_bank_accepts_per_box_layout_and_never_tracks_gradients():
    bank = RegionBank(dim=4, size=8)
    regions = torch.randn(2, 3, 4, requires_grad=True)  # (B, K, D)
    bank.enqueue(regions)
    assert bank.ptr.item() == 6 and not bank.features.requires_grad
    torch.testing.assert_close(bank.features[:, :6], regions.detach().reshape(6, 4).T)
    with pytest.raises(ValueError, match="exceeds the bank size"):
        bank.enqueue(torch.randn(9, 4))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_rank_enqueue(rank: int, port: int, path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # same initial bank on both ranks
        bank = RegionBank(dim=2, size=6)
        bank.enqueue(torch.full((2, 2), float(rank + 1)))  # rank 0 writes ones, rank 1 twos
        torch.save({"features": bank.features, "ptr": bank.ptr}, f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_bank_enqueues_features_gathered_from_every_rank(tmp_path):
    path = str(tmp_path / "bank")
    mp.spawn(_two_rank_enqueue, args=(_free_port(), path), nprocs=2)
    expected = torch.tensor([[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]])
    states = [torch.load(f"{path}.{r}") for r in range(2)]
    for state in states:
        assert state["ptr"].item() == 4
        torch.testing.assert_close(state["features"][:, :4], expected)  # rank order, identical on both ranks
    torch.testing.assert_close(states[0]["features"], states[1]["features"])
