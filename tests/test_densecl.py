"""DenseCL (docs/densecl.md): the loss against a faithful transcription of the authors' code, the correspondence, the
queues over 2 gloo ranks, and the method's wiring.

The authors' code is github.com/WXinlong/DenseCL at b64bbb6: openselfsup/models/densecl.py (`DenseCL.forward_train`,
`_dequeue_and_enqueue`, `concat_all_gather`) and openselfsup/models/heads/contrastive_head.py (`ContrastiveHead`).
The transcriptions below keep their statements, cited by file and line; only `.cuda()` and the distributed calls are
replaced by their single-process meaning (stated where they are).
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslcli.losses.densecl import dense_correspondence, densecl_loss
from sslcli.methods.base import StepInfo
from sslcli.spec import parse_spec


# ------------------------------------------------------------------------------------------- the authors' code
def authors_contrastive_head(pos, neg, temperature):
    """contrastive_head.py:32-37 (`ContrastiveHead.forward`; labels on the CPU instead of `.cuda()`)."""
    N = pos.size(0)
    logits = torch.cat((pos, neg), dim=1)
    logits /= temperature
    labels = torch.zeros((N, ), dtype=torch.long)
    return nn.CrossEntropyLoss()(logits, labels)


def authors_densecl_losses(q, k, queue, q_grid, k_grid, q_b, k_b, queue2, temperature, loss_lambda):
    """densecl.py:188-214 on the normalised outputs of lines 155-186 (q, q_grid, q_b of the query; k, k_grid, k_b of
    the key encoder): returns (loss_contra_single, loss_contra_dense)."""
    # positive logits: Nx1 (densecl.py:191)
    l_pos = torch.einsum('nc,nc->n', [q, k]).unsqueeze(-1)
    # negative logits: NxK (densecl.py:193)
    l_neg = torch.einsum('nc,ck->nk', [q, queue.clone().detach()])
    # feat point set sim (densecl.py:196-200)
    backbone_sim_matrix = torch.matmul(q_b.permute(0, 2, 1), k_b)
    densecl_sim_ind = backbone_sim_matrix.max(dim=2)[1]  # NxS^2
    indexed_k_grid = torch.gather(k_grid, 2, densecl_sim_ind.unsqueeze(1).expand(-1, k_grid.size(1), -1))
    densecl_sim_q = (q_grid * indexed_k_grid).sum(1)  # NxS^2
    # densecl.py:202-207
    l_pos_dense = densecl_sim_q.view(-1).unsqueeze(-1)  # NS^2X1
    q_grid = q_grid.permute(0, 2, 1)
    q_grid = q_grid.reshape(-1, q_grid.size(2))
    l_neg_dense = torch.einsum('nc,ck->nk', [q_grid, queue2.clone().detach()])
    # densecl.py:209-214
    loss_single = authors_contrastive_head(l_pos, l_neg, temperature)
    loss_dense = authors_contrastive_head(l_pos_dense, l_neg_dense, temperature)
    return loss_single * (1 - loss_lambda), loss_dense * loss_lambda


def authors_dequeue_and_enqueue(queue, queue_ptr, keys, queue_len):
    """densecl.py:71-84 (`_dequeue_and_enqueue`, the same as `_dequeue_and_enqueue2` at lines 87-100 for queue2);
    ``keys`` is already `concat_all_gather`ed (densecl.py:242-255: every rank's keys, in rank order)."""
    batch_size = keys.shape[0]
    ptr = int(queue_ptr)
    assert queue_len % batch_size == 0  # for simplicity
    queue[:, ptr:ptr + batch_size] = keys.transpose(0, 1)
    ptr = (ptr + batch_size) % queue_len  # move pointer
    queue_ptr[0] = ptr


# ------------------------------------------------------------------------------------------------- helpers
def _unit(gen, *shape, dim):
    return F.normalize(torch.randn(*shape, generator=gen), dim=dim)


def _spec(**method):
    return parse_spec({"data": {"root": "unused", "image_size": 64, "workers": 0},
                       "model": {"arch": "resnet18", "width": 8},
                       "method": {"name": "densecl", "queue_size": 16, "hidden_dim": 32, "dim": 8, **method},
                       "batch_size": 4, "epochs": 1, "output_dir": "unused"})


def _method(seed=0, **method):
    from sslcli.methods.densecl.method import DenseCL

    torch.manual_seed(seed)
    return DenseCL(_spec(**method))


def _views(n, seed):
    return torch.randn(n, 2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ the loss
@pytest.mark.parametrize("dense_weight", [0.5, 0.3])
def test_loss_equals_the_authors_code_on_the_same_features_and_queues(dense_weight):
    gen = torch.Generator().manual_seed(0)
    n, c, cb, s, k = 3, 8, 12, 9, 20
    q, key = _unit(gen, n, c, dim=1), _unit(gen, n, c, dim=1)
    q_grid, k_grid = _unit(gen, n, c, s, dim=1), _unit(gen, n, c, s, dim=1)
    q_b, k_b = _unit(gen, n, cb, s, dim=1), _unit(gen, n, cb, s, dim=1)
    queue, queue2 = _unit(gen, c, k, dim=0), _unit(gen, c, k, dim=0)
    want = authors_densecl_losses(q, key, queue, q_grid, k_grid, q_b, k_b, queue2, 0.2, dense_weight)
    match = dense_correspondence(q_b, k_b)
    got = densecl_loss(q, key, queue, q_grid, k_grid, match, queue2, 0.2, dense_weight)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_correspondence_finds_a_known_permutation_of_the_cells():
    # The key view's backbone cells are the query's, permuted (plus a little noise): query cell i's match is the key
    # cell that holds it, j with perm[j] = i, i.e. argsort(perm).
    gen = torch.Generator().manual_seed(1)
    q_b = _unit(gen, 2, 16, 25, dim=1)
    perm = torch.randperm(25, generator=gen)
    k_b = F.normalize(q_b[:, :, perm] + 0.01 * torch.randn(2, 16, 25, generator=gen), dim=1)
    assert torch.equal(dense_correspondence(q_b, k_b), torch.argsort(perm).expand(2, -1))


def test_a_query_cell_takes_the_key_cell_of_its_match_not_its_own_position():
    # Two cells, swapped between the views: the dense positive of query cell 0 is key cell 1 (cos 1), so with keys
    # equal to the queries swapped the positive logit of every cell is 1/τ: the loss is that of a perfect match.
    q_b = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, C'=2, S=2): cell 0 = e1, cell 1 = e2
    k_b = q_b[:, :, [1, 0]]
    q_grid = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    k_grid = q_grid[:, :, [1, 0]]
    queue = torch.tensor([[0.0], [-1.0]])  # one negative, −e2
    _, dense = densecl_loss(q_grid[:, :, 0], q_grid[:, :, 0], queue, q_grid, k_grid, dense_correspondence(q_b, k_b),
                            queue, 0.5, dense_weight=1.0)
    # cell 0: logits [1, 0]/0.5; cell 1: [1, −1]/0.5 → CE = mean(log(e² + 1) − 2, log(e² + e⁻²) − 2)
    import math

    want = (math.log(math.exp(2) + 1) - 2 + math.log(math.exp(2) + math.exp(-2)) - 2) / 2
    assert dense.item() == pytest.approx(want, rel=1e-6)


# --------------------------------------------------------------------------------------------- the method
def test_method_loss_is_the_authors_loss_on_its_own_features_and_queues():
    method = _method(shuffle_bn=False)
    views = _views(4, seed=2)
    with torch.no_grad():
        q, q_grid, _, q_b = method.encode(views[:, 0], method.encoder, method.head, method.dense_head)
        k, k_grid, _, k_b = method.encode(views[:, 1], method.key_encoder, method.key_head, method.key_dense_head)
        want = authors_densecl_losses(q, k, method.queue, q_grid, k_grid, q_b, k_b, method.dense_queue, 0.2, 0.5)
        out = method({"views": views}, StepInfo(0, 0, 1, 1))
    torch.testing.assert_close(out["loss_global"], want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["loss_dense"], want[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["loss"], want[0] + want[1], rtol=1e-6, atol=1e-6)


def test_grid_option_pools_the_dense_cells():
    method = _method(grid=1, shuffle_bn=False)  # 64 px → 2×2 res5 cells, pooled to 1×1
    _, cells, pooled, backbone = method.encode(_views(4, seed=3)[:, 0], method.encoder, method.head,
                                               method.dense_head)
    assert cells.shape == (4, 8, 1) and backbone.shape[2] == 1
    torch.testing.assert_close(cells[:, :, 0], pooled)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank: int, world: int, port: int, views, out_path: str):
    import torch.distributed as torch_dist

    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        method = _method(shuffle_bn=True).eval()  # BN on running statistics: a key does not depend on its batch
        b = views.shape[0] // world
        with torch.no_grad():
            out = method({"views": views[rank * b:(rank + 1) * b]}, StepInfo(0, 0, 1, 1))
        method.after_step(StepInfo(0, 0, 1, 1))
        losses = [torch.zeros(2) for _ in range(world)]
        torch_dist.all_gather(losses, torch.stack([out["loss_global"], out["loss_dense"]]))
        if rank == 0:
            torch.save({"losses": torch.stack(losses), "queue": method.queue, "dense_queue": method.dense_queue,
                        "queue_ptr": method.queue_ptr}, out_path)
    finally:
        torch_dist.destroy_process_group()


def test_two_gloo_ranks_shuffle_gather_and_enqueue_as_the_authors(tmp_path):
    # The batch split over 2 ranks: shuffle-BN sends every key crop through another rank and back, each rank's loss
    # is the authors' loss on its own rows, and both queues receive every rank's keys in rank order (the authors'
    # concat_all_gather, then _dequeue_and_enqueue / _dequeue_and_enqueue2).
    import torch.multiprocessing as mp

    views = _views(4, seed=4)
    mp.spawn(_gloo_worker, args=(2, _free_port(), views, str(tmp_path / "r.pt")), nprocs=2)
    got = torch.load(tmp_path / "r.pt")
    method = _method(shuffle_bn=True).eval()
    queue, queue2, ptr = method.queue.clone(), method.dense_queue.clone(), torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        q, q_grid, _, q_b = method.encode(views[:, 0], method.encoder, method.head, method.dense_head)
        k, k_grid, k2, k_b = method.encode(views[:, 1], method.key_encoder, method.key_head, method.key_dense_head)
    for rank, rows in enumerate((slice(0, 2), slice(2, 4))):
        want = authors_densecl_losses(q[rows], k[rows], queue, q_grid[rows], k_grid[rows], q_b[rows], k_b[rows],
                                      queue2, 0.2, 0.5)
        torch.testing.assert_close(got["losses"][rank], torch.stack(want), rtol=1e-5, atol=1e-6)
    authors_dequeue_and_enqueue(queue, ptr.clone(), k, 16)
    authors_dequeue_and_enqueue(queue2, ptr, k2, 16)
    torch.testing.assert_close(got["queue"], queue, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["dense_queue"], queue2, rtol=1e-5, atol=1e-6)
    assert int(got["queue_ptr"]) == int(ptr) == 4


def test_single_process_step_enqueues_both_queues_after_the_step():
    method = _method(shuffle_bn=True)
    before = method.queue.clone(), method.dense_queue.clone()
    method({"views": _views(4, seed=5)}, StepInfo(0, 0, 1, 1))["loss"].backward()
    assert torch.equal(method.queue, before[0]) and torch.equal(method.dense_queue, before[1])  # read-only in forward
    method.after_step(StepInfo(0, 0, 1, 1))
    assert int(method.queue_ptr) == 4
    for queue, old in zip((method.queue, method.dense_queue), before, strict=True):
        assert not torch.equal(queue[:, :4], old[:, :4]) and torch.equal(queue[:, 4:], old[:, 4:])
        torch.testing.assert_close(queue[:, :4].norm(dim=0), torch.ones(4))
