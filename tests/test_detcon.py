"""DetCon: the loss against hand computations and an independent numpy port, the mask grid, id sampling, mask
pooling, the 1×1-grid equivalence with SimCLR / BYOL, the method end to end and a 2-process gloo run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslcli.losses.detcon import detcon_loss
from sslcli.methods.detcon.method import sample_ids
from sslcli.methods.detcon.views import label_grid
from sslcli.models.region_pooling import mask_pool


# ------------------------------------------------------------------------------------------------ numpy reference
def numpy_detcon(pred1, pred2, target1, target2, ids1, ids2, temperature, offset=0):
    """A loop-by-loop port of METHODS.md §3 (eq. 1/3 of the paper with the authors' weighting)."""

    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def term(q, other, same, qids, oids):
        q, other, same = unit(q), unit(other), unit(same)
        b, r, _ = q.shape
        n = other.shape[0]
        total = 0.0
        for i in range(b):
            for a in range(r):
                own = offset + i
                positives = [q[i, a] @ other[own, c] / temperature for c in range(r) if oids[i, c] == qids[i, a]]
                scores = [q[i, a] @ other[m, c] / temperature for m in range(n) for c in range(r)]
                scores += [q[i, a] @ same[m, c] / temperature for m in range(n) for c in range(r)
                           if not (m == own and qids[i, c] == qids[i, a])]
                if not positives:
                    continue  # weight 0, still counted in the mean below
                log_z = math.log(sum(math.exp(s) for s in scores))
                ce = -sum(p - log_z for p in positives) / len(positives)
                duplicates = sum(1 for c in range(r) if qids[i, c] == qids[i, a])
                total += ce / duplicates
        return total / (b * r)

    return term(pred1, target2, target1, ids1, ids2) + term(pred2, target1, target2, ids2, ids1)


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------- the loss
def test_loss_hand_computed_counts_with_duplicates_missing_masks_and_shared_ids():
    # All latents equal → every logit is 1/τ, so each cross-entropy is log(number of unmasked columns).
    # Image 0: view 1 ids [3, 3] (a duplicate), view 2 ids [3, 5].
    # Image 1: view 1 ids [3, 7] (3 also exists in image 0: not a positive; 7 absent from view 2), view 2 [5, 5].
    ids1 = torch.tensor([[3, 3], [3, 7]])
    ids2 = torch.tensor([[3, 5], [5, 5]])
    z = torch.ones(2, 2, 4, dtype=torch.float64)
    # View-1 rows: (img0, 3) twice: 1 positive, 4 view-2 columns + 4 view-1 columns − 2 masked (own id 3 twice)
    #   → CE = log 6, weight 1/2 each; image 1's rows have no positive (weight 0). Term = (log 6)/4.
    # View-2 rows: (img0, 3): 2 positives, 8 − 1 masked → CE = log 7, weight 1; the rest weight 0. Term = (log 7)/4.
    expected = (math.log(6) + math.log(7)) / 4
    loss = detcon_loss(z, z, z, z, ids1, ids2, temperature=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_loss_hand_computed_single_mask_is_nt_xent():
    # Two images, one mask each, id 0 in both images (shared across images, must not be a positive). τ = 0.5.
    a1, a2 = [1.0, 0.0], [0.6, 0.8]   # image 0, views 1 and 2
    b1, b2 = [0.0, 1.0], [0.8, 0.6]   # image 1
    v1 = _t([[a1], [b1]])
    v2 = _t([[a2], [b2]])
    ids = torch.zeros(2, 1, dtype=torch.long)
    t = 0.5
    # Dot products: a1·a2 = .6, a1·b2 = .8, a1·b1 = 0; b1·b2 = .6, b1·a2 = .8; a2·b2 = .96.
    row_a1 = -0.6 / t + math.log(math.exp(0.6 / t) + math.exp(0.8 / t) + math.exp(0.0 / t))
    row_b1 = -0.6 / t + math.log(math.exp(0.6 / t) + math.exp(0.8 / t) + math.exp(0.0 / t))
    row_a2 = -0.6 / t + math.log(math.exp(0.6 / t) + math.exp(0.8 / t) + math.exp(0.96 / t))
    row_b2 = -0.6 / t + math.log(math.exp(0.6 / t) + math.exp(0.8 / t) + math.exp(0.96 / t))
    expected = (row_a1 + row_b1) / 2 + (row_a2 + row_b2) / 2
    assert detcon_loss(v1, v2, v1, v2, ids, ids, temperature=t).item() == pytest.approx(expected, rel=1e-12)


def test_loss_matches_numpy_port_on_random_latents():
    gen = torch.Generator().manual_seed(0)
    b, r, d = 3, 5, 8
    pred1, pred2 = torch.randn(b, r, d, generator=gen, dtype=torch.float64), torch.randn(b, r, d, generator=gen,
                                                                                          dtype=torch.float64)
    target1, target2 = torch.randn(b, r, d, generator=gen, dtype=torch.float64), torch.randn(b, r, d, generator=gen,
                                                                                              dtype=torch.float64)
    # Few distinct ids so duplicates, missing masks and ids shared across images all occur.
    ids1 = torch.randint(0, 4, (b, r), generator=gen)
    ids2 = torch.randint(0, 4, (b, r), generator=gen)
    got = detcon_loss(pred1, pred2, target1, target2, ids1, ids2, temperature=0.1)
    want = numpy_detcon(pred1.numpy(), pred2.numpy(), target1.numpy(), target2.numpy(), ids1.numpy(), ids2.numpy(),
                        0.1)
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_loss_split_over_ranks_averages_to_the_single_process_loss():
    # Each rank's rows are its own images; columns are the gathered batch. Mean of the ranks' losses = global loss.
    gen = torch.Generator().manual_seed(1)
    n, r, d = 4, 3, 6
    p1, p2, t1, t2 = (torch.randn(n, r, d, generator=gen, dtype=torch.float64) for _ in range(4))
    ids1, ids2 = torch.randint(0, 3, (n, r), generator=gen), torch.randint(0, 3, (n, r), generator=gen)
    whole = detcon_loss(p1, p2, t1, t2, ids1, ids2, 0.1)
    halves = [detcon_loss(p1[s:s + 2], p2[s:s + 2], t1, t2, ids1[s:s + 2], ids2[s:s + 2], 0.1, offset=s)
              for s in (0, 2)]
    assert ((halves[0] + halves[1]) / 2).item() == pytest.approx(whole.item(), rel=1e-12)
    want = numpy_detcon(p1[2:].numpy(), p2[2:].numpy(), t1.numpy(), t2.numpy(), ids1[2:].numpy(), ids2[2:].numpy(),
                        0.1, offset=2)
    assert halves[1].item() == pytest.approx(want, rel=1e-10)


def test_loss_gradients_are_finite_with_masked_columns():
    z1 = torch.randn(2, 4, 8, requires_grad=True)
    z2 = torch.randn(2, 4, 8, requires_grad=True)
    ids = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2]])
    loss = detcon_loss(z1, z2, z1, z2, ids, ids, 0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()


# --------------------------------------------------------------------------------------- grid, sampling, pooling
def test_map_side_matches_the_backbone_for_both_stems():
    from sslcli.models.backbone import build_backbone, map_side

    for stem in ("imagenet", "small"):
        net = build_backbone("resnet18", width=4, stem=stem).eval()
        for size in (32, 48, 64, 70, 97):
            with torch.no_grad():
                maps = net.features(torch.zeros(1, 3, size, size))
            for stage, fmap in maps.items():
                assert fmap.shape[-1] == map_side(net, size, stage), (stem, size, stage)
    # By hand: five stride-2 steps (224/32 = 7, ⌈97/32⌉ = 4); the small stem has three (48/8 = 6, ⌈70/8⌉ = 9).
    assert map_side(build_backbone("resnet18", width=4), 224) == 7
    assert map_side(build_backbone("resnet18", width=4), 97) == 4
    assert map_side(build_backbone("resnet18", width=4, stem="small"), 48) == 6
    assert map_side(build_backbone("resnet18", width=4, stem="small"), 70) == 9


def test_label_grid_is_argmax_of_average_pooled_one_hot():
    gen = torch.Generator().manual_seed(0)
    for size, n in ((32, 7), (28, 7), (64, 2), (30, 4)):
        # Blocky random labels with large, sparse ids (ids need not be contiguous).
        coarse = torch.randint(0, 5, (size // 2 + 1, size // 2 + 1), generator=gen) * 1000 + 7
        label_map = coarse.repeat_interleave(2, 0).repeat_interleave(2, 1)[:size, :size]
        ids = torch.unique(label_map)
        one_hot = (label_map[None] == ids[:, None, None]).float()
        want = ids[F.adaptive_avg_pool2d(one_hot[None], n)[0].argmax(0)]
        assert torch.equal(label_grid(label_map, n), want)


def test_label_grid_tie_goes_to_smallest_id():
    label_map = torch.tensor([[9, 4], [4, 9]])
    assert label_grid(label_map, 1).item() == 4


def test_sample_ids_uniform_over_distinct_ids_not_area():
    torch.manual_seed(0)
    grid = torch.zeros(1, 7, 7, dtype=torch.long)
    grid[0, 0, 0] = 5          # id 5 owns 1 cell, id 0 owns 48
    draws = sample_ids(grid.expand(200, 7, 7), 16)
    assert set(draws.unique().tolist()) == {0, 5}
    share = (draws == 5).float().mean().item()
    assert 0.45 < share < 0.55
    # Only ids present in each image are drawn.
    grid2 = torch.stack([torch.full((2, 2), 3), torch.tensor([[1, 2], [2, 2]])])
    got = sample_ids(grid2, 50)
    assert set(got[0].tolist()) == {3} and set(got[1].tolist()) == {1, 2}


def test_mask_pool_hand_computed():
    features = torch.arange(8, dtype=torch.float32).view(1, 2, 2, 2)  # channel 0: [[0,1],[2,3]], channel 1: +4
    grid = torch.tensor([[[1, 1], [2, 1]]])
    ids = torch.tensor([[1, 2, 9]])   # 9 is absent: pooled vector 0 (divided by max(0, 1))
    got = mask_pool(features, grid, ids)
    want = torch.tensor([[[(0 + 1 + 3) / 3, (4 + 5 + 7) / 3], [2.0, 6.0], [0.0, 0.0]]])
    assert torch.allclose(got, want)


# ---------------------------------------------------------------------------------------------------- the method
def _spec(method: dict, image_size: int = 64, root: str = "demo-data/", **extra):
    from sslcli.spec import parse_spec

    return parse_spec({"data": {"root": root, "image_size": image_size, "workers": 0},
                       "model": {"arch": "resnet18", "width": 8}, "method": method, "batch_size": 4, **extra})


def _views(b: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _info(progress: float = 0.0):
    from sslcli.methods.base import StepInfo

    return StepInfo(step=int(progress * 100), epoch=0, steps_per_epoch=100, total_steps=100)


def _detcon(variant: str, **options):
    from sslcli.methods.detcon.method import Detcon

    return Detcon(_spec({"name": "detcon", "variant": variant, "dim": 16, "hidden_dim": 32, **options}))


def test_grid_1x1_detcon_s_reduces_to_simclr():
    from sslcli.methods.simclr.method import SimCLR

    torch.manual_seed(0)
    simclr = SimCLR(_spec({"name": "simclr", "dim": 16, "hidden_dim": 32}))
    views = _views()
    batch = {"views": views, "masks": torch.zeros(4, 2, 2, 2, dtype=torch.long)}  # one global mask, 2×2 res5 grid
    simclr_loss = simclr(dict(batch), _info())["loss"].item()
    for r in (1, 16):
        detcon = _detcon("S", num_samples=r, masks={"kind": "grid", "grid": 1})
        detcon.load_state_dict(simclr.state_dict())
        loss = detcon(dict(batch), _info())["loss"].item()
        # With R = 1 the DetCon loss is exactly NT-Xent: view-1 term + view-2 term (each a mean over B rows, as in
        # the paper and the authors' SimCLR), the value SimCLR logs. With R copies of the one id the target spreads
        # over R equal positives (+log R to each CE) and each row weighs 1/R.
        want = simclr_loss if r == 1 else (simclr_loss + 2 * math.log(r)) / r
        assert loss == pytest.approx(want, rel=1e-5)


def test_grid_1x1_detcon_b_reduces_to_byol():
    from sslcli.methods.byol.method import BYOL

    torch.manual_seed(0)
    byol = BYOL(_spec({"name": "byol", "dim": 16, "hidden_dim": 32}))
    detcon = _detcon("B", num_samples=1, masks={"kind": "grid", "grid": 1})
    detcon.load_state_dict(byol.state_dict())
    views = _views()
    b = views.shape[0]
    byol_value = byol({"views": views}, _info())["loss"].item()
    grids = torch.zeros(2 * b, 2, 2, dtype=torch.long)
    online, target = detcon.latents(torch.cat([views[:, 0], views[:, 1]]), grids, torch.zeros(2 * b, 1).long())
    # The same networks give the same latents, so BYOL's loss (Grill et al. eq. 2, symmetrised: the mean over images
    # of 2 − 2·cos(p1, z2) plus that of 2 − 2·cos(p2, z1)), by hand on DetCon_B's latents, is the loss BYOL logs...
    p, z = online[:, 0], target[:, 0]
    unit_p = F.normalize(p.detach(), dim=1).double().numpy()
    unit_z = F.normalize(z.detach(), dim=1).double().numpy()
    by_hand = np.mean(2 - 2 * (unit_p[:b] * unit_z[b:]).sum(1)) + np.mean(2 - 2 * (unit_p[b:] * unit_z[:b]).sum(1))
    assert by_hand == pytest.approx(byol_value, rel=1e-5)
    # ...and DetCon_B's own loss is the paper's contrastive loss (τ = 0.1) on those latents (METHODS.md §3).
    loss = detcon({"views": views, "masks": grids.view(2, b, 2, 2).transpose(0, 1)}, _info())["loss"]
    ids = torch.zeros(b, 1, dtype=torch.long)
    want = numpy_detcon(p[:b, None].detach().numpy(), p[b:, None].detach().numpy(), z[:b, None].numpy(),
                        z[b:, None].numpy(), ids.numpy(), ids.numpy(), 0.1)
    assert loss.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("variant", ["S", "B"])
def test_forward_backward_and_a_few_steps_reduce_the_loss(variant):
    torch.manual_seed(0)
    detcon = _detcon(variant, num_samples=4, masks={"kind": "grid", "grid": 2})
    grids = torch.tensor([[0, 1], [2, 3]]).expand(4, 2, 2, 2).clone()
    grids[0, 1] = 0  # image 0 view 2 carries a single mask: the others are missing from that view
    batch = {"views": _views(), "masks": grids}
    optimiser = torch.optim.SGD([p for p in detcon.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for step in range(6):
        torch.manual_seed(1)  # same sampled ids each step: a fixed batch
        loss = detcon(dict(batch), _info(step / 100))["loss"]
        optimiser.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        if step == 0:
            assert detcon.encoder.conv1.weight.grad.abs().sum() > 0
            if variant == "B":
                assert all(p.grad is None for p in detcon.target_encoder.parameters())
                before = detcon.target_encoder.conv1.weight.clone()
        optimiser.step()
        detcon.after_step(_info(step / 100))
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    if variant == "B":  # the EMA target moved towards the online network
        assert not torch.equal(before, detcon.target_encoder.conv1.weight)


def test_forward_rejects_a_grid_that_does_not_match_res5():
    detcon = _detcon("S")
    with pytest.raises(Exception, match="does not match the res5 map"):
        detcon({"views": _views(), "masks": torch.zeros(4, 2, 3, 3, dtype=torch.long)}, _info())


def test_transform_end_to_end_on_coco_data(coco_data):
    # The real pipeline: COCO image → GT label map → two mask-aware views → ids on the res5 grid.
    import pickle

    from sslcli.data.readers.sources import open_source
    from sslcli.methods.detcon.method import Detcon

    source = open_source(coco_data, "train2017")
    detcon = Detcon(_spec({"name": "detcon", "variant": "B", "dim": 16, "hidden_dim": 32, "masks": {"kind": "gt"}},
                          image_size=96, root=str(coco_data)))
    transform = pickle.loads(pickle.dumps(detcon.transform()))
    samples = [transform(source.sample(i)) for i in range(4)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    assert batch["views"].shape == (4, 2, 3, 96, 96) and batch["masks"].shape == (4, 2, 3, 3)
    label_ids = {int(x) for i in range(4) for x in np.unique(detcon.transform().masks.label_map(
        {"image": source.load(i), "image_id": source[i].image_id}))}
    assert set(batch["masks"].unique().tolist()) <= label_ids
    assert torch.isfinite(detcon(batch, _info())["loss"])


# -------------------------------------------------------------------------------------------------- distributed
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_ids(grid: torch.Tensor, num_samples: int) -> torch.Tensor:
    """A deterministic stand-in for `sample_ids` (cells in order, cycled), so ranks and the reference agree."""
    flat = grid.reshape(grid.shape[0], -1)
    return flat[:, torch.arange(num_samples) % flat.shape[1]]


def _loss_and_grads(variant: str, views: torch.Tensor, grids: torch.Tensor):
    """Seeded DetCon in eval mode (BN on running statistics, so ranks do not depend on each other's batch)."""
    torch.manual_seed(0)
    method = _detcon(variant, num_samples=3).eval()
    loss = method({"views": views, "masks": grids}, _info())["loss"]
    loss.backward()
    return loss.detach(), {k: p.grad.detach().clone() for k, p in method.named_parameters() if p.grad is not None}


def _gloo_worker(rank: int, world: int, port: int, views, grids, out_path: str):
    import torch.distributed as torch_dist

    import sslcli.methods.detcon.method as detcon_module

    detcon_module.sample_ids = _first_ids
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        b = views.shape[0] // world
        results = {}
        for variant in ("S", "B"):
            loss, grads = _loss_and_grads(variant, views[rank * b:(rank + 1) * b], grids[rank * b:(rank + 1) * b])
            for g in grads.values():  # what DDP does: average the gradients over ranks
                torch_dist.all_reduce(g)
                g /= world
            torch_dist.all_reduce(loss)
            results[variant] = {"loss": loss / world, "grads": grads}
        if rank == 0:
            torch.save(results, out_path)
    finally:
        torch_dist.destroy_process_group()


def test_two_gloo_processes_give_the_single_process_loss_and_gradients(tmp_path, monkeypatch):
    # Negatives come from all masks of all images on all ranks: with the batch split over 2 ranks, the mean of the
    # ranks' losses and the DDP-averaged gradients equal one process on the whole batch (gather_with_grad routes the
    # gradient of other ranks' rows back; a plain all_gather would drop it and this test would fail for DetCon_S).
    import torch.multiprocessing as mp

    import sslcli.methods.detcon.method as detcon_module

    views = _views(4, seed=3)
    grids = torch.randint(0, 3, (4, 2, 2, 2), generator=torch.Generator().manual_seed(4))
    mp.spawn(_gloo_worker, args=(2, _free_port(), views, grids, str(tmp_path / "r.pt")), nprocs=2)
    distributed = torch.load(tmp_path / "r.pt")
    monkeypatch.setattr(detcon_module, "sample_ids", _first_ids)
    for variant in ("S", "B"):
        loss, grads = _loss_and_grads(variant, views, grids)
        assert distributed[variant]["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
        assert grads.keys() == distributed[variant]["grads"].keys()
        for key, grad in grads.items():
            torch.testing.assert_close(distributed[variant]["grads"][key], grad, rtol=1e-4, atol=1e-6,
                                       msg=f"{variant} {key}")


def test_two_process_gloo_run_of_the_tiny_example(tmp_path):
    # The shipped tiny DetCon_B twin through the real engine on 2 gloo processes (GT masks from the annotations).
    from sslcli.data.scenes.synthetic import generate
    from sslcli.engine.launch import launch
    from sslcli.engine.training_checkpoint import load_checkpoint
    from sslcli.spec import load_spec

    generate(tmp_path / "demo", n_train=16, n_val=0, seed=0, size=64)
    example = Path(__file__).resolve().parents[1] / "examples" / "detcon-b-tiny.yaml"
    spec = load_spec(example, [f"data.root={tmp_path / 'demo'}", f"output_dir={tmp_path / 'run'}", "max_steps=2"],
                     world_size=2)
    result = launch(spec, gpus=2, master_port=_free_port())
    assert result["world_size"] == 2 and result["steps"] == 2 and math.isfinite(result["final_loss"])
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 2 and "target_encoder.conv1.weight" in state["method"]


def test_loss_stays_in_float32_under_bf16_autocast():
    gen = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(2, 4, 8, generator=gen), torch.randn(2, 4, 8, generator=gen)
    ids = torch.tensor([[0, 1, 1, 2], [0, 0, 3, 3]])
    want = detcon_loss(z1, z2, z1, z2, ids, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = detcon_loss(z1.bfloat16(), z2.bfloat16(), z1.bfloat16(), z2.bfloat16(), ids, ids)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=2e-2)  # only the inputs were rounded to bf16


# ---------------------------------------------------------------------------------------------------- crop windows
def authors_mean_crop_area(height: int, width: int, draws: int = 1_000_000, seed: int = 0) -> float:
    """DetCon's crop (`get_random_crop_window` in the authors' tf_image_ops.py), re-derived from its description:
    area U[0.08, 1]·H·W and aspect ratio exp(U[log 3/4, log 4/3]) drawn once, w = round(√(area·r)),
    h = round(√(area/r)) (round half to even, as tf.round), clipped to W and H; no retry. Mean of w·h / (H·W)."""
    rng = np.random.default_rng(seed)
    area = rng.uniform(0.08, 1.0, draws) * height * width
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), draws))
    w = np.minimum(np.rint(np.sqrt(area * ratio)), width)
    h = np.minimum(np.rint(np.sqrt(area / ratio)), height)
    return float((w * h).mean() / (height * width))


@pytest.mark.parametrize("height, width", [(480, 640), (640, 427), (224, 224)])
def test_detcon_crops_follow_the_authors_single_draw_and_clip(height, width):
    # 20,000 windows drawn by the crop step of the method's own transform, against the authors' procedure.
    from sslcli.methods import build_method

    spec = _spec({"name": "detcon", "variant": "S", "dim": 16, "hidden_dim": 32, "masks": {"kind": "grid"}},
                 image_size=16)
    crop = build_method(spec).transform().views.geometry.transforms[0]
    image = torch.zeros(1, height, width)
    torch.manual_seed(0)
    windows = [crop.make_params([image]) for _ in range(20_000)]
    areas = np.array([w["width"] * w["height"] for w in windows]) / (height * width)
    assert all(0 <= w["left"] <= width - w["width"] and 0 <= w["top"] <= height - w["height"] for w in windows)
    assert areas.mean() == pytest.approx(authors_mean_crop_area(height, width), abs=0.01)


def test_detcon_views_apply_the_drawn_window_to_image_and_mask():
    # A mask whose id spells each pixel's position (id = y·W + x) comes out of the geometry as an axis-aligned window
    # of the 480×640 image resized by nearest sampling, maybe mirrored: every view row reads one source row and every
    # column one source column, in order (columns reversed when flipped), evenly spaced (nearest sampling of a window
    # of h rows onto 16 steps by floor(h/16) or ceil(h/16)), inside the image, with the crop's area and aspect range.
    from torchvision import tv_tensors

    from sslcli.methods import build_method

    height, width, size = 480, 640, 16
    spec = _spec({"name": "detcon", "variant": "S", "dim": 16, "hidden_dim": 32, "masks": {"kind": "grid"}},
                 image_size=size)
    geometry = build_method(spec).transform().views.geometry
    positions = tv_tensors.Mask(torch.arange(height * width, dtype=torch.int64).view(height, width))
    flipped, areas = 0, []
    for _ in range(50):
        view = geometry(positions).as_subclass(torch.Tensor).numpy()
        ys, xs = view // width, view % width
        assert (ys == ys[:, :1]).all() and (xs == xs[:1, :]).all()
        rows, cols = ys[:, 0], xs[0, :]
        if cols[0] > cols[-1]:
            cols, flipped = cols[::-1], flipped + 1
        steps_y, steps_x = np.diff(rows), np.diff(cols)
        assert steps_y.min() > 0 and steps_x.min() > 0 and np.ptp(steps_y) <= 1 and np.ptp(steps_x) <= 1
        assert 0 <= rows[0] and rows[-1] < height and 0 <= cols[0] and cols[-1] < width
        h, w = size * steps_y.mean(), size * steps_x.mean()  # the window's sides, to within one step each
        assert 0.08 * 0.8 <= h * w / (height * width) <= 1.0 and 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
        areas.append(h * w / (height * width))
    assert 10 <= flipped <= 40  # flip p = 0.5 over 50 draws
    assert min(areas) < 0.5 < max(areas)  # windows are drawn, not the whole image each time


def test_torchvision_crop_sampler_is_still_available():
    from torchvision.transforms import v2

    from sslcli.methods import build_method

    spec = _spec({"name": "detcon", "variant": "S", "dim": 16, "hidden_dim": 32, "masks": {"kind": "grid"},
                  "crop_sampler": "torchvision"}, image_size=16)
    crop = build_method(spec).transform().views.geometry.transforms[0]
    assert type(crop) is v2.RandomResizedCrop
