"""Losses against hand-computed values and small independent numpy ports of the formulas in METHODS.md §1–3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslcli.losses.contrastive import knn_moco_loss, knn_neighbours, moco_infonce, nt_xent
from sslcli.losses.regression import byol_loss, normalized_regression


def _unit(rng, *shape):
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------- MoCo InfoNCE
def test_moco_infonce_hand_computed_2d():
    # q = k = e1; queue columns e2 and −e1; T = 0.5 → logits [2, 0, −2]; CE = log(e² + 1 + e⁻²) − 2.
    q = _t([[1.0, 0.0]])
    k = _t([[1.0, 0.0]])
    queue = _t([[0.0, -1.0], [1.0, 0.0]])  # (D=2, K=2)
    expected = math.log(math.exp(2) + 1 + math.exp(-2)) - 2
    assert moco_infonce(q, k, queue, 0.5).item() == pytest.approx(expected, rel=1e-12)


def _np_moco(queries, key, queue, t):
    """Independent port: every row's CE with the positive at index 0, averaged over all rows."""
    losses = []
    for v in range(queries.shape[0]):
        for b in range(queries.shape[1]):
            logits = np.concatenate([[queries[v, b] @ key[b]], queries[v, b] @ queue]) / t
            losses.append(-_np_log_softmax(logits)[0])
    return float(np.mean(losses))


def test_moco_infonce_with_queue_matches_numpy():
    rng = np.random.default_rng(0)
    q, k, queue = _unit(rng, 1, 4, 8), _unit(rng, 4, 8), _unit(rng, 16, 8).T
    got = moco_infonce(_t(q[0]), _t(k), _t(queue), 0.2).item()
    assert got == pytest.approx(_np_moco(q, k, queue, 0.2), rel=1e-10)


def test_multi_crop_averages_over_all_5b_rows():
    # MC: crop 0 + 4 small crops = 5 query views, each of B = 3 images, against the same key and queue.
    rng = np.random.default_rng(1)
    q, k, queue = _unit(rng, 5, 3, 8), _unit(rng, 3, 8), _unit(rng, 10, 8).T
    got = moco_infonce(_t(q), _t(k), _t(queue), 0.2).item()
    assert got == pytest.approx(_np_moco(q, k, queue, 0.2), rel=1e-10)
    # Equal-sized views: the 5B-row mean is the mean of the five per-view losses (not their sum).
    per_view = [moco_infonce(_t(q[v]), _t(k), _t(queue), 0.2).item() for v in range(5)]
    assert got == pytest.approx(np.mean(per_view), rel=1e-10)


# ----------------------------------------------------------------------------------------------------------- kNN-MoCo
def _np_knn(q, qf, queue, fqueue, k, t):
    losses = []
    for i in range(q.shape[0]):
        neighbours = np.argsort(-(qf[i] @ fqueue))[:k]
        log_p = _np_log_softmax(q[i] @ queue / t)
        losses.append(-log_p[neighbours].mean())
    return float(np.mean(losses))


def test_knn_moco_loss_matches_numpy():
    rng = np.random.default_rng(2)
    q, qf = _unit(rng, 6, 8), _unit(rng, 6, 12)
    queue, fqueue = _unit(rng, 20, 8).T, _unit(rng, 20, 12).T
    got = knn_moco_loss(_t(q), _t(qf), _t(queue), _t(fqueue), k=5, temperature=0.2).item()
    assert got == pytest.approx(_np_knn(q, qf, queue, fqueue, 5, 0.2), rel=1e-10)


def test_knn_neighbours_are_mined_on_backbone_features_not_embeddings():
    # Backbone features say entry 2 is nearest; the embeddings would pick entry 0.
    qf = _t([[1.0, 0.0]])
    fqueue = _t([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])  # columns: e2, e2, e1
    q = _t([[1.0, 0.0]])
    queue = _t([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])  # columns: e1, e2, e2
    assert knn_neighbours(qf, fqueue, 1).tolist() == [[2]]
    # z = q·queue / T = [1, 0, 0] / 0.5 = [2, 0, 0]; loss = −log p[2] = log(e² + 2) − 0.
    expected = math.log(math.exp(2) + 2)
    assert knn_moco_loss(q, qf, queue, fqueue, k=1, temperature=0.5).item() == pytest.approx(expected, rel=1e-12)


def test_knn_loss_gradient_flows_to_queries_only():
    rng = np.random.default_rng(3)
    q = _t(_unit(rng, 4, 8)).requires_grad_()
    qf = _t(_unit(rng, 4, 12)).requires_grad_()
    loss = knn_moco_loss(q, qf, _t(_unit(rng, 10, 8).T), _t(_unit(rng, 10, 12).T), k=3)
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert qf.grad is None  # mining is not differentiable and must not pretend to be


# ------------------------------------------------------------------------------------------------------------ NT-Xent
def _np_nt_xent(z1, z2, t):
    z = np.concatenate([z1, z2])
    n = z1.shape[0]
    sim = z @ z.T / t
    losses = []
    for i in range(2 * n):
        positive = i + n if i < n else i - n
        others = [j for j in range(2 * n) if j != i]
        losses.append(-(sim[i, positive] - np.log(np.exp(sim[i, others]).sum())))
    return float(np.mean(losses[:n]) + np.mean(losses[n:]))  # view-1 term + view-2 term (SimCLR's loss_a + loss_b)


def test_nt_xent_hand_computed_two_images():
    # Two images, 1-d-ish embeddings: z1 = [e1, e2], z2 = [e1, e2], T = 1.
    # Row (view 1, image 0): candidates except itself: z1[1] = e2 (0), z2[0] = e1 (1, positive), z2[1] = e2 (0).
    z1 = _t([[1.0, 0.0], [0.0, 1.0]])
    z2 = _t([[1.0, 0.0], [0.0, 1.0]])
    expected = 2 * (math.log(math.e + 2) - 1)  # the same CE for all four rows by symmetry; two view terms
    assert nt_xent(z1, z2, 1.0).item() == pytest.approx(expected, rel=1e-12)


def test_nt_xent_matches_numpy():
    rng = np.random.default_rng(4)
    z1, z2 = _unit(rng, 5, 8), _unit(rng, 5, 8)
    assert nt_xent(_t(z1), _t(z2), 0.1).item() == pytest.approx(_np_nt_xent(z1, z2, 0.1), rel=1e-10)


def test_nt_xent_rank_shards_average_to_the_global_loss():
    # Two simulated ranks of 3 images each: each scores its own rows against the gathered batch.
    rng = np.random.default_rng(5)
    z1, z2 = _t(_unit(rng, 6, 8)), _t(_unit(rng, 6, 8))
    shards = [nt_xent(z1[r * 3:(r + 1) * 3], z2[r * 3:(r + 1) * 3], 0.2, z1, z2, offset=r * 3) for r in range(2)]
    assert ((shards[0] + shards[1]) / 2).item() == pytest.approx(nt_xent(z1, z2, 0.2).item(), rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------- BYOL
def test_normalized_regression_hand_computed():
    p = _t([[1.0, 0.0], [3.0, 3.0], [2.0, 0.0]])
    z = _t([[0.0, 5.0], [1.0, 0.0], [-1.0, 0.0]])
    # orthogonal → 2; 45° → 2 − √2; opposite → 4 (norms do not matter).
    assert normalized_regression(p, z).tolist() == pytest.approx([2.0, 2 - math.sqrt(2), 4.0], rel=1e-12)


def test_byol_loss_is_symmetric_sum_of_means_and_target_gets_no_gradient():
    rng = np.random.default_rng(6)
    p1, p2 = _t(rng.standard_normal((4, 8))), _t(rng.standard_normal((4, 8)))
    z1 = _t(rng.standard_normal((4, 8))).requires_grad_()
    z2 = _t(rng.standard_normal((4, 8)))

    def np_term(p, z):
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        return np.mean(2 - 2 * (p * z).sum(1))

    expected = np_term(p1.numpy(), z2.numpy()) + np_term(p2.numpy(), z1.detach().numpy())
    loss = byol_loss(p1, p2, z1, z2)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    p1.requires_grad_()
    byol_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and p1.grad is not None


def test_losses_accept_float32_and_normalised_inputs():
    z = F.normalize(torch.randn(4, 8), dim=1)
    assert torch.isfinite(nt_xent(z, z.flip(0), 0.1))


def test_byol_loss_keeps_its_digits_for_half_precision_inputs():
    # cos ≈ 1 − 1e-4: in bf16 arithmetic 2 − 2·cos would round to 0; the loss computes in float32.
    p = torch.tensor([[1.0, 0.01]]).bfloat16()
    z = torch.tensor([[1.0, 0.0]]).bfloat16()
    expected = normalized_regression(p.double(), z.double()).item()  # the same bf16 values in float64
    got = normalized_regression(p, z)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected, rel=1e-3) and got.item() > 0


def test_losses_run_in_float32_under_bf16_autocast():
    from sslcli.losses.contrastive import moco_infonce, nt_xent
    from sslcli.losses.regression import normalized_regression

    g = torch.Generator().manual_seed(0)
    z1, z2 = (torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1) for _ in range(2))
    queue = torch.nn.functional.normalize(torch.randn(16, 32, generator=g), dim=0)
    exact = [nt_xent(z1, z2), moco_infonce(z1, z2, queue), normalized_regression(z1, z2).mean()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = [nt_xent(z1.bfloat16(), z2.bfloat16()), moco_infonce(z1.bfloat16(), z2.bfloat16(), queue.bfloat16()),
                normalized_regression(z1.bfloat16(), z2.bfloat16()).mean()]
    for a, b in zip(exact, half):
        assert b.dtype == torch.float32
        # Only the bf16 rounding of the inputs remains (no bf16 logits): well under bf16's 0.06 resolution at 1/τ.
        assert torch.allclose(a, b, atol=0.03), (a, b)
