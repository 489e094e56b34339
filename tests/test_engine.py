"""The training engine: schedules, optimisers, data order and seeding, checkpoints, resume, NaN handling, CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import engine_toy as toy
import numpy as np
import pytest
import torch
from torch import nn

from sslcli.data.readers.sources import open_source
from sslcli.engine.data import EpochBatchSampler, TrainDataset, collate, seeded_rng
from sslcli.engine.launch import launch
from sslcli.engine.optim import LARS, build_optimizer, split_parameters
from sslcli.engine.schedules import lr_at
from sslcli.engine.trainer import NonFiniteLoss, Trainer
from sslcli.engine.training_checkpoint import load_checkpoint, spec_differences
from sslcli.methods.base import StepInfo
from sslcli.spec import OptimizerSpec, ScheduleSpec, parse_spec


# ------------------------------------------------------------------------------------------------------ schedules
def test_cosine_with_warmup_matches_formula():
    s = ScheduleSpec(name="cosine", warmup_epochs=1, warmup_start_factor=0.1, final_lr=0.0)
    # 10 steps per epoch, 100 steps: warm-up over steps 0..9 from 0.1 to 1, then cosine over the remaining 90.
    assert lr_at(s, 1.0, 0, 10, 100) == pytest.approx(0.1)
    assert lr_at(s, 1.0, 5, 10, 100) == pytest.approx(0.1 + 0.9 * 5 / 10)
    assert lr_at(s, 1.0, 10, 10, 100) == pytest.approx(1.0)
    assert lr_at(s, 1.0, 55, 10, 100) == pytest.approx(0.5)  # t = 45/90 = 1/2: (1 + cos(π/2))/2
    assert lr_at(s, 1.0, 100, 10, 100) == pytest.approx(0.0)
    no_warmup = ScheduleSpec(name="cosine", final_lr=0.01)
    assert lr_at(no_warmup, 2.0, 25, 10, 100) == pytest.approx(0.01 + 1.99 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_cosine_per_epoch_changes_only_at_epoch_boundaries():
    s = ScheduleSpec(name="cosine", per_step=False)
    assert lr_at(s, 1.0, 57, 10, 100) == lr_at(s, 1.0, 50, 10, 100) == pytest.approx(0.5)
    assert lr_at(s, 1.0, 60, 10, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.6)))


@pytest.mark.parametrize("name", ["step", "piecewise"])
def test_step_and_piecewise_divide_at_milestones(name):
    s = ScheduleSpec(name=name, milestones=[0.96, 0.98], gamma=0.1)  # DetCon on COCO: ÷10 at 96 % and 98 %
    assert lr_at(s, 0.5, 959, 10, 1000) == pytest.approx(0.5)
    assert lr_at(s, 0.5, 960, 10, 1000) == pytest.approx(0.05)
    assert lr_at(s, 0.5, 980, 10, 1000) == pytest.approx(0.005)


def test_constant_schedule():
    assert lr_at(ScheduleSpec(name="constant"), 0.3, 77, 10, 100) == 0.3


# ----------------------------------------------------------------------------------------------------- optimisers
def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2), nn.LayerNorm(2))


def test_bias_and_norm_parameters_are_split_out():
    net = _net()
    net[3].weight.requires_grad_(False)  # frozen parameters never reach the optimiser
    regular, excluded = split_parameters(net)
    assert {id(p) for p in regular} == {id(net[0].weight)}
    assert {id(p) for p in excluded} == {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[3].bias),
                                         id(net[4].weight), id(net[4].bias)}
    sgd = build_optimizer(net, OptimizerSpec(name="sgd", weight_decay=0.1), lr=1.0)
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.1, 0.0]
    all_in = build_optimizer(net, OptimizerSpec(name="sgd", weight_decay=0.1, exclude_bias_and_norm=False), lr=1.0)
    assert len(all_in.param_groups) == 1 and len(all_in.param_groups[0]["params"]) == 7


def test_lars_matches_a_numpy_port():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # adapted
    b = nn.Parameter(torch.tensor([1.0, -2.0]))  # excluded: plain momentum SGD
    opt = LARS([{"params": [w], "weight_decay": 0.1, "lars_exclude": False},
                {"params": [b], "weight_decay": 0.0, "lars_exclude": True}], lr=0.5, momentum=0.9, eta=0.01)
    grads = [np.array([0.3, -0.1]), np.array([0.2, 0.2])]
    wn, bn, vw, vb = np.array([3.0, 4.0]), np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    for step in range(2):
        g = grads[step] * (step + 1)
        w.grad, b.grad = torch.tensor(g, dtype=torch.float32), torch.tensor(g, dtype=torch.float32)
        opt.step()
        gw = g + 0.1 * wn
        gw = gw * 0.01 * np.linalg.norm(wn) / np.linalg.norm(gw)
        vw = 0.9 * vw + gw
        wn = wn - 0.5 * vw
        vb = 0.9 * vb + g
        bn = bn - 0.5 * vb
        np.testing.assert_allclose(w.detach().numpy(), wn, rtol=1e-6)
        np.testing.assert_allclose(b.detach().numpy(), bn, rtol=1e-6)


def test_lars_leaves_the_trust_ratio_at_one_for_zero_weights():
    w = nn.Parameter(torch.zeros(3))
    opt = LARS([w], lr=1.0, momentum=0.0, eta=1e-3)
    w.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    assert torch.equal(w.detach(), -torch.tensor([1.0, 2.0, 3.0]))


# ------------------------------------------------------------------------------------------------- data, seeding
def test_ranks_together_see_the_single_process_batch_in_order():
    single = EpochBatchSampler(23, 8, rank=0, world_size=1, seed=5)
    ranks = [EpochBatchSampler(23, 8, rank=r, world_size=2, seed=5) for r in range(2)]
    for s in [single, *ranks]:
        s.set_epoch(3)
    one = list(single)
    two = list(zip(*[list(r) for r in ranks]))
    assert len(one) == len(two) == 2  # 23 // 8, the incomplete batch dropped
    for batch, (a, b) in zip(one, two):
        assert batch == a + b
    indices = [i for batch in one for _, i in batch]
    assert len(set(indices)) == 16 and all(e == 3 for batch in one for e, _ in batch)
    single.set_epoch(4)
    assert list(single) != one  # a new order every epoch
    single.set_epoch(3, skip=1)
    assert list(single) == one[1:]  # mid-epoch resume skips batches without touching the order


def test_sampler_rejects_data_smaller_than_a_batch():
    from sslcli.errors import InputError

    with pytest.raises(InputError, match="fewer than one global batch"):
        EpochBatchSampler(5, 8, 0, 1, 0)


def test_seeded_rng_is_reproducible_and_restores_the_outer_streams():
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    with seeded_rng(42):
        a = (torch.rand(2), random.random(), np.random.rand())
    outer = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    expected_outer = (torch.rand(2), random.random(), np.random.rand())
    with seeded_rng(42):
        b = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert torch.equal(outer[0], expected_outer[0]) and outer[1:] == expected_outer[1:]


def test_views_do_not_depend_on_workers(images):
    dataset = TrainDataset(open_source(images, fmt="folder"), toy.ToyTransform(), seed=7)
    sampler = EpochBatchSampler(len(dataset), 4, 0, 1, seed=7)
    sampler.set_epoch(1)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=2, collate_fn=collate)
    batch = next(iter(loader))
    direct = collate([dataset[key] for key in next(iter(sampler))])
    assert torch.equal(batch["view1"], direct["view1"]) and torch.equal(batch["view2"], direct["view2"])
    again = dataset[(1, 0)]
    assert torch.equal(again["view1"], dataset[(1, 0)]["view1"])
    assert not torch.equal(again["view1"], dataset[(2, 0)]["view1"])  # other epoch, other crops


def test_corrupt_images_are_replaced_and_counted(images, tmp_path, toy_method):
    (images / "img_005.png").write_bytes(b"not a png")
    dataset = TrainDataset(open_source(images, fmt="folder"), toy.ToyTransform(), seed=0)
    sample = dataset[(0, 5)]
    (path, message), = sample["_skipped"]
    assert sample["index"] == 6 and path.endswith("img_005.png") and message.startswith(path)
    # batch 20 = the whole data set: every image is read in every epoch.
    spec = parse_spec(toy.spec_dict(images, tmp_path / "run", batch_size=20, epochs=2))
    result = launch(spec)
    assert result["corrupt_images"] == 1 and result["steps"] == 2


# ------------------------------------------------------------------------------------------ training, checkpoints
def test_training_writes_checkpoints_metrics_and_spec(images, tmp_path, toy_method):
    spec = parse_spec(toy.spec_dict(images, tmp_path / "run", epochs=3, checkpoint_every=2))
    result = launch(spec)
    run = tmp_path / "run"
    assert result["steps"] == 6 and result["epochs"] == 3 and math.isfinite(result["final_loss"])
    assert sorted(p.name for p in run.iterdir()) == ["epoch_0002.pt", "last.pt", "metrics.jsonl", "spec.yaml"]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["format"] == "sslcli-checkpoint" and ckpt["version"] == 1
    assert (ckpt["epoch"], ckpt["step"], ckpt["arch"], ckpt["width"]) == (3, 6, "resnet18", 8)
    assert set(ckpt["backbone"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}  # the toy's encoder, no prefix
    assert int(ckpt["method"]["steps_seen"]) == 6
    assert ckpt["spec"]["epochs"] == 3 and len(ckpt["rng"]["ranks"]) == 1
    assert load_checkpoint(run / "epoch_0002.pt")["step"] == 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "alignment", "lr", "images_per_s"} <= set(steps[0])
    assert steps[0]["lr"] == pytest.approx(0.4 * 8 / 256 * 0.1)  # warm-up starts at lr × warmup_start_factor
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0, 1, 2]


def test_resume_at_an_epoch_boundary_is_bit_identical(images, tmp_path, toy_method):
    full = launch(parse_spec(toy.spec_dict(images, tmp_path / "full", epochs=3)))
    # "Killed" after epoch 1: max_steps stops at the boundary and leaves last.pt; the schedule is the 3-epoch one.
    launch(parse_spec(toy.spec_dict(images, tmp_path / "cut", epochs=3, max_steps=2)))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 2
    resumed = launch(parse_spec(toy.spec_dict(images, tmp_path / "cut", epochs=3, data__workers=1)), resume="auto")
    assert resumed["steps"] == full["steps"] == 6
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    for key in ("method", "optimizer"):
        ta, tb = toy.tensors(a[key]), toy.tensors(b[key])
        assert len(ta) == len(tb) > 0
        assert all(torch.equal(x, y) for x, y in zip(ta, tb)), key
    assert resumed["final_loss"] == full["final_loss"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_mid_epoch_is_bit_identical(images, tmp_path, toy_method):
    launch(parse_spec(toy.spec_dict(images, tmp_path / "full", epochs=2)))
    launch(parse_spec(toy.spec_dict(images, tmp_path / "cut", epochs=2, max_steps=3)))
    launch(parse_spec(toy.spec_dict(images, tmp_path / "cut", epochs=2)), resume=str(tmp_path / "cut" / "last.pt"))
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(x, y) for x, y in zip(toy.tensors(a["method"]), toy.tensors(b["method"])))


def test_resume_refuses_a_different_spec(images, tmp_path, toy_method):
    from sslcli.errors import InputError

    launch(parse_spec(toy.spec_dict(images, tmp_path / "run", epochs=2, max_steps=2)))
    changed = parse_spec(toy.spec_dict(images, tmp_path / "run", epochs=2, optimizer__base_lr=0.1, seed=9))
    with pytest.raises(InputError, match=r"differs in optimizer\.base_lr, seed"):
        launch(changed, resume="auto")
    with pytest.raises(InputError, match="already holds a checkpoint"):
        launch(parse_spec(toy.spec_dict(images, tmp_path / "run", epochs=2)))


def test_spec_differences_ignore_run_length_and_logging():
    a = {"epochs": 2, "output_dir": "a", "logging": {"every_steps": 1}, "seed": 0, "data": {"workers": 0, "root": "x"}}
    b = {"epochs": 5, "output_dir": "b", "logging": {"every_steps": 9}, "seed": 0, "data": {"workers": 4, "root": "y"}}
    assert spec_differences(a, b) == ["data.root"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(images, tmp_path, toy_method, monkeypatch, cli):
    forward = toy.ToyMethod.forward

    def poisoned(self, batch, step):
        losses = forward(self, batch, step)
        if step.step == 3:  # the 4th step, in epoch 2 (2 steps per epoch)
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(toy.ToyMethod, "forward", poisoned)
    spec_path = tmp_path / "spec.yaml"
    import yaml

    spec_path.write_text(yaml.safe_dump(toy.spec_dict(images, tmp_path / "run", epochs=3)))
    code, _, err = cli(["pretrain", spec_path, "--quiet"])
    assert code == 1
    assert "loss is nan at step 4 (epoch 2)" in err and "last good checkpoint is kept" in err
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 2 and all(torch.isfinite(t).all() for t in toy.tensors(ckpt["method"]))


def test_nan_check_happens_before_any_update(images, tmp_path, toy_method):
    spec = parse_spec(toy.spec_dict(images, tmp_path / "run"))
    trainer = Trainer(spec, torch.device("cpu"))
    before = [p.detach().clone() for p in trainer.method.parameters()]
    dataset = TrainDataset(open_source(images, fmt="folder"), toy.ToyTransform(), seed=0)
    batch = collate([dataset[(0, i)] for i in range(8)])
    batch.pop("_skipped")
    batch["view1"] = batch["view1"] * float("inf")
    with pytest.raises(NonFiniteLoss):
        trainer.step(batch, StepInfo(0, 0, 2, 6))
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.method.parameters()))


def test_grad_clip_bounds_the_gradient_norm(images, tmp_path, toy_method):
    spec = parse_spec(toy.spec_dict(images, tmp_path / "run", optimizer__grad_clip=1e-3))
    trainer = Trainer(spec, torch.device("cpu"))
    dataset = TrainDataset(open_source(images, fmt="folder"), toy.ToyTransform(), seed=0)
    batch = collate([dataset[(0, i)] for i in range(8)])
    batch.pop("_skipped")
    trainer.step(batch, StepInfo(0, 0, 2, 6))
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.trainable]))
    assert norm <= 1e-3 * (1 + 1e-4)


def test_cli_pretrain_returns_the_result(images, tmp_path, toy_method, cli):
    import yaml

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(toy.spec_dict(images, tmp_path / "run", epochs=2)))
    code, out, err = cli(["pretrain", spec_path, "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["steps"] == 4 and result["checkpoint"] == str(tmp_path / "run" / "last.pt")
    assert result["images_per_s"] > 0 and result["world_size"] == 1
    code, _, err = cli(["pretrain", spec_path, "--resume", str(tmp_path / "missing.pt")])
    assert code == 2 and "missing.pt: checkpoint not found" in err


def test_resume_after_a_real_kill_reproduces_the_uninterrupted_run(images, tmp_path, toy_method):
    """SIGKILL a CLI run (a slowed-down toy) once epoch 1's checkpoint exists; --resume auto finishes it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    full = launch(parse_spec(toy.spec_dict(images, tmp_path / "full", epochs=3)))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(toy.spec_dict(images, tmp_path / "killed", epochs=3)))
    tests_dir = str(Path(__file__).parent)
    code = f"import sys; sys.path.insert(0, {tests_dir!r}); import engine_toy; engine_toy.main_slow()"
    proc = subprocess.Popen([sys.executable, "-c", code, "pretrain", str(spec_path), "--quiet"],
                            # bit-exact CPU results need the same intra-op thread count in both processes
                            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    last = tmp_path / "killed" / "last.pt"
    deadline = time.monotonic() + 180
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(last)["step"]
    assert killed_at in (2, 4)  # an epoch boundary: the run died before finishing
    resumed = launch(parse_spec(toy.spec_dict(images, tmp_path / "killed", epochs=3)), resume="auto")
    assert resumed["steps"] == 6 and resumed["final_loss"] == full["final_loss"]
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(last)
    assert all(torch.equal(x, y) for x, y in zip(toy.tensors(a["method"]), toy.tensors(b["method"])))


def test_launch_checks_the_spec_against_the_number_of_processes(images, tmp_path):
    from sslcli.errors import InputError

    spec = parse_spec(toy.spec_dict(images, tmp_path / "run"))  # batch 8
    with pytest.raises(InputError, match="batch_size: must be divisible by the number of processes 3"):
        launch(spec, gpus=3)
    with pytest.raises(InputError, match="expected gpus ≥ 0"):
        launch(spec, gpus=-1)
    assert not (tmp_path / "run").exists()


def test_tensorboard_without_the_package_warns_and_keeps_json_metrics(images, tmp_path, toy_method, capsys,
                                                                      monkeypatch):
    import sys

    # The test extra installs tensorboard; a None entry in sys.modules makes its import fail as if it were absent.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    spec = parse_spec(toy.spec_dict(images, tmp_path / "run", epochs=2, logging__tensorboard=True))
    launch(spec)
    assert "tensorboard package is not installed" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count('"type": "step"') == 4


@pytest.mark.parametrize("options", [["--nodes", "0"], ["--gpus", "-1"], ["--nodes", "2", "--node-rank", "2"]])
def test_cli_rejects_bad_process_options_with_exit_2_even_on_dry_run(cli, options):
    # --nodes 0 used to divide by zero while checking the batch (exit 1, "ZeroDivisionError"), and --dry-run
    # reported the spec valid for --gpus -1.
    spec = Path(__file__).resolve().parents[1] / "examples" / "moco-v2-tiny.yaml"
    code, _, err = cli(["pretrain", spec, "--dry-run", *options])
    assert code == 2 and "expected gpus ≥ 0, nodes ≥ 1" in err
