"""Methods on a tiny backbone: finite losses, gradients on online parameters only, momentum updates, queues, and a
loss that goes down on a fixed batch under plain torch SGD (the engine is tested elsewhere)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sslcli.methods import build_method
from sslcli.methods.base import StepInfo
from sslcli.models.ema import cosine_momentum, ema_update, momentum_copy
from sslcli.spec import parse_spec

SIZE, SMALL, BATCH = 32, 16, 8
REPO = Path(__file__).resolve().parents[1]


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


# --------------------------------------------------------------------------------------------------------------- MoCo
def moco_spec(**options):
    method = {"name": "moco", "dim": 16, "hidden_dim": 32, "queue_size": 16, "momentum": 0.9, **options}
    return make_spec(method)


def test_queue_slots_wrap_around():
    from sslcli.models.queue import enqueue_, queue_slots

    assert queue_slots(0, 4, 8).tolist() == [0, 1, 2, 3]
    assert queue_slots(6, 4, 8).tolist() == [6, 7, 0, 1]
    assert queue_slots(torch.tensor([7]), 3, 8).tolist() == [7, 0, 1]  # the pointer buffer itself
    queue = torch.zeros(2, 8)
    entries = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    enqueue_(queue, queue_slots(6, 4, 8), entries)
    assert queue[0].tolist() == [3.0, 4.0, 0, 0, 0, 0, 1.0, 2.0]


def test_mean_pairwise_cosine_is_the_mean_of_the_gram_matrix():
    from sslcli.models.queue import mean_pairwise_cosine
    torch.manual_seed(0)
    queue = torch.nn.functional.normalize(torch.randn(16, 40), dim=0)
    explicit = (queue.T @ queue).mean()  # all 40² ordered pairs, the diagonal's ones included
    assert mean_pairwise_cosine(queue).item() == pytest.approx(explicit.item(), rel=1e-5)
    same = torch.nn.functional.normalize(torch.ones(16, 1), dim=0).expand(16, 40)
    assert mean_pairwise_cosine(same).item() == pytest.approx(1.0, rel=1e-6)  # every key one way: a collapse
    opposite = torch.cat([same[:, :20], -same[:, :20]], dim=1)
    assert mean_pairwise_cosine(opposite).item() == pytest.approx(0.0, abs=1e-7)


def test_moco_logs_the_spread_of_the_queue_it_read():
    torch.manual_seed(0)
    method = build_method(moco_spec())
    before = method.queue.clone()
    out = method(make_batch(), step_info())
    assert out["queue_cos"].item() == pytest.approx((before.T @ before).mean().item(), rel=1e-5)
    assert not out["queue_cos"].requires_grad


def test_moco_forward_grads_on_query_encoder_only():
    torch.manual_seed(0)
    method = build_method(moco_spec())
    out = method(make_batch(), step_info())
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert torch.equal(out["loss"], out["loss_moco"]) and "loss_nn" not in out
    out["loss"].backward()
    assert_grads_on_online_only(method, ("key_",))


def test_moco_after_step_momentum_update_and_enqueue_with_wrap_around():
    torch.manual_seed(0)
    method = build_method(moco_spec())  # K = 16, B = 8: two steps fill the queue and the pointer wraps to 0
    for step in range(3):
        key_before = [p.clone() for p in method.key_encoder.parameters()]
        query = [p.clone() for p in method.encoder.parameters()]
        queue_before = method.queue.clone()
        ptr = int(method.queue_ptr)
        method(make_batch(seed=step), step_info(step))
        keys = method._pending[0].clone()
        assert keys.shape == (BATCH, 16) and torch.allclose(keys.norm(dim=1), torch.ones(BATCH))
        method.after_step(step_info(step))
        for k, k0, q in zip(method.key_encoder.parameters(), key_before, query):
            assert torch.allclose(k, 0.9 * k0 + 0.1 * q)
        written = list(range(ptr, ptr + BATCH))
        assert torch.equal(method.queue[:, written], keys.T)
        untouched = [c for c in range(16) if c not in written]
        assert torch.equal(method.queue[:, untouched], queue_before[:, untouched])
        assert int(method.queue_ptr) == (ptr + BATCH) % 16
    assert int(method.queue_ptr) == 8  # 0 → 8 → 0 (wrap) → 8


def test_moco_loss_drops_on_fixed_batch():
    torch.manual_seed(0)
    method = build_method(moco_spec(queue_size=64))
    first, last = loss_drops_on_fixed_batch(method, make_batch(), lr=0.1)
    assert last < first


def test_moco_multi_crop_small_crops_are_queries_only():
    torch.manual_seed(0)
    spec = moco_spec(multi_crop={"enabled": True, "large_size": SIZE, "small_size": SMALL, "n_small": 2})
    method = build_method(spec)
    seen = []
    method.key_encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    batch = make_batch(n_small=2)
    out = method(batch, step_info())
    # The key encoder saw only the B key crops (in shuffle-BN groups), never the small crops.
    assert sum(s[0] for s in seen) == BATCH and all(s[-1] == SIZE for s in seen)
    assert method._pending[0].shape[0] == BATCH
    # The loss is the InfoNCE over the 3B query rows (crop 0 + 2 small crops) against the same keys: by hand, the mean
    # over rows of −log(exp(q·k₊/T) / (exp(q·k₊/T) + Σ_n exp(q·n/T))), T = 0.2, the queue's columns as negatives.
    queries, _ = method._queries(batch)
    assert queries.shape == (3, BATCH, 16)
    method.key_encoder.eval()  # running BN statistics: the keys do not depend on shuffle-BN's random grouping
    keys, _ = method.encode_keys(batch["views"][:, 1])
    q, k, negatives = (x.detach().double().numpy() for x in (queries, keys, method.queue.clone()))
    positive = np.exp(np.einsum("vbd,bd->vb", q, k) / 0.2)
    by_hand = np.mean(-np.log(positive / (positive + np.exp(q @ negatives / 0.2).sum(-1))))
    out = method(batch, step_info())
    assert out["loss"].item() == pytest.approx(by_hand, rel=1e-5)
    out["loss"].backward()
    assert_grads_on_online_only(method, ("key_",))


def test_knn_moco_warmup_and_weight():
    torch.manual_seed(0)
    method = build_method(moco_spec(knn={"enabled": True, "k": 3, "weight": 0.4, "warmup_epochs": 2}))
    assert method.queue_backbone.shape == (method.encoder.out_channels, 16)
    batch = make_batch()
    assert "loss_nn" not in method(batch, step_info(epoch=1))
    out = method(batch, step_info(epoch=2))
    assert out["loss"].item() == pytest.approx((out["loss_moco"] + 0.4 * out["loss_nn"]).item(), rel=1e-6)
    out["loss"].backward()
    assert_grads_on_online_only(method, ("key_",))
    # The feature queue is enqueued at the same columns as the key queue.
    keys, features = method._pending
    method.after_step(step_info(epoch=2))
    assert torch.equal(method.queue[:, :BATCH], keys.T)
    assert torch.equal(method.queue_backbone[:, :BATCH], features.T)


def numpy_knn_bank_first(queries, query_features, queue_before, feature_bank_after, k, temperature):
    """The authors' bank-first kNN loss (Revisiting, builder_ours.py), from its description: logits q·queue / T with the
    key queue *before* this step's enqueue, neighbours = top-k of the query's backbone feature against the backbone
    bank *after* it; −mean over rows of the mean over the k neighbours of the log-softmax over the queue."""
    logits = queries.astype(np.float64) @ queue_before.astype(np.float64) / temperature
    log_p = logits - logits.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    neighbours = np.argsort(-(query_features @ feature_bank_after), axis=1)[:, :k]
    return float(-np.take_along_axis(log_p, neighbours, 1).mean(1).mean()), neighbours


def test_knn_moco_bank_first_scores_neighbours_with_the_logits_before_the_enqueue():
    torch.manual_seed(0)
    method = build_method(moco_spec(knn={"enabled": True, "k": 2, "bank_first": True, "warmup_epochs": 5}))
    method.queue_ptr[0] = 12  # the update wraps around the end of the queue
    queue_before = method.queue.clone().numpy()
    bank = method.queue_backbone.clone().numpy()
    batch = make_batch()
    out = method(batch, step_info(epoch=0))  # active from epoch 0
    keys, features = method._pending
    newest = [(12 + i) % 16 for i in range(BATCH)]
    bank[:, newest] = features.numpy().T  # the backbone bank after the enqueue, column by column
    queries, query_features = method._queries(batch)
    want, neighbours = numpy_knn_bank_first(queries.reshape(BATCH, -1).detach().numpy(),
                                            query_features.reshape(BATCH, -1).numpy(), queue_before, bank, 2, 0.2)
    assert out["loss_nn"].item() == pytest.approx(want, rel=1e-5)
    # The case that matters: some neighbours are among the newest columns (a query's own key is usually its nearest),
    # where the logit is the replaced key's, not the new key's: scoring with the updated queue gives another value.
    assert np.isin(neighbours, newest).any()
    queue_after = queue_before.copy()
    queue_after[:, newest] = keys.numpy().T
    updated, _ = numpy_knn_bank_first(queries.reshape(BATCH, -1).detach().numpy(),
                                      query_features.reshape(BATCH, -1).numpy(), queue_after, bank, 2, 0.2)
    assert abs(updated - want) > 1e-4 * abs(want)


def test_single_process_shuffle_bn_encodes_in_groups_and_unshuffles():
    from sslcli.models.shuffle_bn import single_process_groups

    assert single_process_groups(256) == 8 and single_process_groups(16) == 4 and single_process_groups(6) == 1
    torch.manual_seed(0)
    method = build_method(moco_spec())
    x = make_batch()["views"][:, 1]
    seen = []
    method.key_encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    method.key_encoder.train()
    method.encode_keys(x)
    assert seen == [4, 4]  # B = 8 → two groups of 4
    # In eval mode BN no longer depends on the batch: un-shuffled keys equal the keys of a plain pass, row for row.
    method.key_encoder.eval()
    keys, features = method.encode_keys(x)
    plain_keys, plain_features = method._encode_key_group(x)
    assert torch.allclose(keys, plain_keys, atol=1e-6) and torch.allclose(features, plain_features, atol=1e-6)


def _shuffle_bn_worker(rank: int, port: int, result_dir: str):
    import torch.distributed as torch_dist

    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # same weights on both ranks
        method = build_method(moco_spec())
        method.key_encoder.eval()
        x = make_batch(seed=10 + rank)["views"][:, 1]  # different images per rank
        torch.manual_seed(rank)  # different permutations drawn: rank 0's must win
        keys, _ = method.encode_keys(x)
        plain, _ = method._encode_key_group(x)
        # NT-Xent across ranks: each rank scores its own rows against the gathered batch (gather_with_grad).
        from sslcli.distributed import gather_with_grad
        from sslcli.losses.contrastive import nt_xent

        z = torch.nn.functional.normalize(torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(7)), dim=2)
        z1, z2 = z[0, rank * 3:(rank + 1) * 3].clone().requires_grad_(), z[1, rank * 3:(rank + 1) * 3].clone()
        z2.requires_grad_()
        nt_xent(z1, z2, 0.2, gather_with_grad(z1), gather_with_grad(z2), offset=rank * 3).backward()
        torch.save({"keys": keys, "plain": plain, "z": z, "grad1": z1.grad, "grad2": z2.grad},
                   f"{result_dir}/rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def test_distributed_shuffle_bn_unshuffles_and_nt_xent_gradients_match_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_shuffle_bn_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    from sslcli.losses.contrastive import nt_xent

    outs = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for out in outs:
        assert torch.allclose(out["keys"], out["plain"], atol=1e-6)
    # DDP averages the ranks' gradients: (per-rank gradient) / 2 must equal the single-process gradient of the
    # global NT-Xent over all 6 images.
    z = outs[0]["z"].clone().requires_grad_()
    nt_xent(z[0], z[1], 0.2).backward()
    for rank, out in enumerate(outs):
        rows = slice(rank * 3, (rank + 1) * 3)
        assert torch.allclose(out["grad1"] / 2, z.grad[0, rows], atol=1e-6)
        assert torch.allclose(out["grad2"] / 2, z.grad[1, rows], atol=1e-6)


# ------------------------------------------------------------------------------------------------------- tiny examples
TINY_EXAMPLES = sorted((REPO / "examples").glob("*-tiny.yaml"))


@pytest.mark.parametrize("path", [p for p in TINY_EXAMPLES if p.name.startswith(("moco", "simclr", "byol"))],
                         ids=lambda p: p.name)
def test_tiny_example_transform_and_forward(path):
    """Every tiny twin's own views (its crop sizes, MC/CC/A+ options) collate and give a finite loss."""
    import numpy as np
    from torch.utils.data import default_collate

    from sslcli.spec import load_spec

    spec = load_spec(path)
    torch.manual_seed(0)
    method = build_method(spec)
    transform = method.transform()
    rng = np.random.default_rng(0)
    n = 8  # half the tiny batch keeps the test quick; the full runs are the engine's end-to-end tests
    samples = [transform({"image": rng.integers(0, 256, (80, 100, 3), dtype=np.uint8), "index": i}) for i in range(n)]
    batch = default_collate(samples)
    mc = getattr(spec.method, "multi_crop", None)
    multi_crop = mc is not None and mc.enabled
    large = mc.large_size if multi_crop else spec.data.image_size
    assert batch["views"].shape == (n, 2, 3, large, large)
    if multi_crop:
        assert batch["small"].shape == (n, mc.n_small, 3, mc.small_size, mc.small_size)
    out = method(batch, step_info(epoch=spec.epochs))
    assert torch.isfinite(out["loss"])
    if getattr(spec.method, "knn", None) is not None and spec.method.knn.enabled:
        assert "loss_nn" in out


def test_moco_multi_crop_loss_pairs_every_query_crop_with_its_own_images_key():
    """Independent of the method's own helpers: with BN in eval mode (batch-independent), each query crop (crop 0,
    then every small crop j, encoded on its own) of image b is scored against key[b] = crop 1 through the key encoder
    and the queue; the loss is the CE averaged over all (1 + n)·B rows (METHODS.md §1–2)."""
    import numpy as np

    torch.manual_seed(0)
    method = build_method(moco_spec(multi_crop={"enabled": True, "large_size": SIZE, "small_size": SMALL,
                                                "n_small": 3}))
    with torch.no_grad():  # a key encoder that differs from the query encoder, so swapping crops would show
        for p in method.key_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    method.eval()
    batch = make_batch(n_small=3)
    loss = method(batch, step_info())["loss_moco"].item()

    def embed(encoder, head, x):
        return torch.nn.functional.normalize(head(encoder(x)), dim=1).detach().double().numpy()

    with torch.no_grad():
        keys = embed(method.key_encoder, method.key_head, batch["views"][:, 1])
        queries = [embed(method.encoder, method.head, batch["views"][:, 0])]
        queries += [embed(method.encoder, method.head, batch["small"][:, j]) for j in range(3)]
    queue = method.queue.double().numpy()
    rows = []
    for q in queries:
        for b in range(BATCH):
            logits = np.concatenate([[q[b] @ keys[b]], q[b] @ queue]) / 0.2
            rows.append(np.log(np.exp(logits).sum()) - logits[0])
    assert len(rows) == 4 * BATCH
    assert loss == pytest.approx(float(np.mean(rows)), rel=1e-4)
