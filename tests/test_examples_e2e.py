"""Every ``examples/*-tiny.yaml`` trains end to end on the synthetic data on CPU, and learns on a fixed batch.

"Learns on a fixed batch": repeat one batch for a few engine steps, then compare the loss of that batch before and
after, evaluated with the method's initial buffers (queues, memory banks) and the same random seed. The training
loss itself is not a fair yardstick for queue methods: on a repeated batch, MoCo's queue fills with near-copies of
the positives' keys, so the loss logged during those steps rises even while the networks learn.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from sslcli.data.scenes.synthetic import generate
from sslcli.engine.data import SKIPPED_KEY, build_loader
from sslcli.engine.trainer import Trainer
from sslcli.engine.training_checkpoint import load_checkpoint
from sslcli.methods.base import StepInfo
from sslcli.models.backbone import build_backbone
from sslcli.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = sorted(EXAMPLES.glob("*-tiny.yaml"))




@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "demo-data"
    generate(root, n_train=80, n_val=0, seed=0, size=96)  # 80 images: 5 batches of 16, as the tiny specs assume
    if any(_store_names(path) for path in TINY):  # SoCo: the selective-search box store, as a user would make it
        from typer.testing import CliRunner

        from sslcli.cli import app

        result = CliRunner().invoke(app, ["prepare", "boxes", str(root), "--method", "selective-search",
                                          "--filter", "soco"])
        assert result.exit_code == 0, result.stderr
    return root


def _store_names(path: Path) -> dict[str, str]:
    """Region stores a tiny spec names (``method.boxes``), as written in the spec (under ``demo-data/``)."""
    method = yaml.safe_load(path.read_text())["method"]
    return {key: method[key] for key in ("boxes",) if key in method}


def data_overrides(path: Path, root: Path) -> list[str]:
    """``data.root`` → the generated data; a store the spec names under ``demo-data/`` → the same file under root."""
    stores = [f"method.{key}={root / Path(value).relative_to('demo-data')}"
              for key, value in _store_names(path).items()]
    return [f"data.root={root}", *stores]


def test_there_are_tiny_twins():
    assert len(TINY) >= 8  # MoCo + the five Table-4 rows, SimCLR, BYOL (and DetCon's)


@pytest.mark.parametrize("path", TINY, ids=[p.stem for p in TINY])
def test_tiny_example_trains_end_to_end(path, synthetic, tmp_path, cli):
    out = tmp_path / "run"
    sets = [arg for override in data_overrides(path, synthetic) for arg in ("--set", override)]
    code, stdout, err = cli(["pretrain", path, *sets, "--set", f"output_dir={out}", "--json", "--quiet"])
    assert code == 0, err
    result = json.loads(stdout)
    spec = load_spec(path, data_overrides(path, synthetic))
    expected = min(spec.max_steps or 10**9, spec.epochs * (80 // spec.batch_size))
    assert result["steps"] == expected and math.isfinite(result["final_loss"])
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == expected and ckpt["spec"]["method"]["name"] == spec.method.name
    # The exported backbone loads, strictly, into the architecture the checkpoint names.
    build_backbone(ckpt["arch"], ckpt["width"]).load_state_dict(ckpt["backbone"])


def _fixed_batch_loss_before_after(spec, steps: int) -> tuple[float, float]:
    trainer = Trainer(spec, torch.device("cpu"))
    method = trainer.method
    loader, sampler = build_loader(spec, method.transform(), rank=0, world_size=1, start_epoch=0, pin_memory=False)
    sampler.set_epoch(0)
    batch = next(iter(loader))
    batch.pop(SKIPPED_KEY)
    initial_buffers = {name: b.clone() for name, b in method.named_buffers()}
    spe = sampler.steps_per_epoch
    total = spe * spec.epochs

    def evaluate() -> float:
        state = copy.deepcopy(method.state_dict())  # a forward may update momentum encoders or queues
        for name, b in method.named_buffers():
            b.copy_(initial_buffers[name])
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(0)
            loss = method(batch, StepInfo(0, 0, spe, total))["loss"].item()
        method.load_state_dict(state)
        return loss

    before = evaluate()
    for i in range(steps):
        trainer.step(batch, StepInfo(i, i // spe, spe, total))
    return before, evaluate()


@pytest.mark.parametrize("path", TINY, ids=[p.stem for p in TINY])
def test_tiny_example_loss_decreases_on_a_fixed_batch(path, synthetic, tmp_path):
    spec = load_spec(path, [*data_overrides(path, synthetic), f"output_dir={tmp_path / 'unused'}"])
    before, after = _fixed_batch_loss_before_after(spec, steps=6)
    assert math.isfinite(before) and after < before


# ------------------------------------------------------------------------------------------- paper-scale hyperparameters
# Written from METHODS.md §1–2, the Revisiting paper (App. A.1: the official MoCo-v2 code with lr 0.3, 200 epochs on
# COCO; §4 / Table 4) and DetCon App. A (the bases of DetCon on COCO), not from the code. MoCo-v2's SGD decays every
# parameter, biases and BN affines included; DetCon (and the SimCLR/BYOL it compares with on COCO) uses LARS with a
# piecewise-constant lr (÷10 at 96 % and 98 %); the 300-epoch DetCon_B values (base lr 0.3, wd 1e-6, τ₀ 0.99) go
# together.
_MOCO_OPTIMIZER = {"name": "sgd", "base_lr": 0.3, "lr_scaling": "linear", "momentum": 0.9, "weight_decay": 1e-4,
                   "exclude_bias_and_norm": False}
_MOCO_SCHEDULE = {"name": "cosine", "warmup_epochs": 0.0, "final_lr": 0.0, "per_step": False}
_COCO_LARS = {"name": "lars", "base_lr": 0.3, "lr_scaling": "linear", "weight_decay": 1e-6, "lars_eta": 1e-3,
              "exclude_bias_and_norm": True}
_COCO_PIECEWISE = {"name": "piecewise", "warmup_epochs": 10.0, "milestones": [0.96, 0.98], "gamma": 0.1}
_MC = {"enabled": True, "large_size": 160, "large_scale": [0.2, 1.0], "small_size": 96, "small_scale": [0.05, 0.14],
       "n_small": 4}
_CC = {"enabled": True, "min_overlap": 0.2, "max_tries": 10}
_MOCO = {"name": "moco", "dim": 128, "hidden_dim": 2048, "queue_size": 65536, "temperature": 0.2, "momentum": 0.999,
         "shuffle_bn": True, "multi_crop": {"enabled": False}, "constrained": {"enabled": False},
         "aplus": {"enabled": False}, "knn": {"enabled": False}, "crop_iou": {"max_iou": None}}
_ROWS = {  # Table 4, cumulative
    "moco-v2": {},
    "moco-v2-mc": {"multi_crop": _MC},
    "moco-v2-mc-cc": {"multi_crop": _MC, "constrained": _CC},
    "moco-v2-mc-cc-m": {"multi_crop": _MC, "constrained": _CC, "momentum": 0.995},
    "moco-v2-mc-cc-m-aplus": {"multi_crop": _MC, "constrained": _CC, "momentum": 0.995,
                              "aplus": {"enabled": True, "p": 0.5}},
    "moco-v2-mc-cc-m-aplus-nn": {"multi_crop": _MC, "constrained": _CC, "momentum": 0.995,
                                 "aplus": {"enabled": True, "p": 0.5},
                                 "knn": {"enabled": True, "k": 20, "weight": 0.4, "warmup_epochs": 5,
                                         "bank_first": False}},
}
PAPER_SCALE = {
    **{f"{row}_r50_b256_200ep_coco": {"method": {**_MOCO, **options}, "optimizer": _MOCO_OPTIMIZER,
                                      "schedule": _MOCO_SCHEDULE} for row, options in _ROWS.items()},
    "simclr_r50_b256_200ep_coco": {"method": {"name": "simclr", "dim": 128, "hidden_dim": 2048, "temperature": 0.1},
                                   "optimizer": _COCO_LARS, "schedule": _COCO_PIECEWISE},
    "byol_r50_b256_200ep_coco": {"method": {"name": "byol", "dim": 256, "hidden_dim": 4096, "base_momentum": 0.99},
                                 "optimizer": _COCO_LARS, "schedule": _COCO_PIECEWISE},
}


def _mismatches(expected: dict, actual: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in expected.items():
        got = actual.get(key)
        if isinstance(value, dict):
            out += _mismatches(value, got or {}, f"{prefix}{key}.")
        elif got != (pytest.approx(value) if isinstance(value, float) else value):
            out.append(f"{prefix}{key}: {got!r}, paper {value!r}")
    return out


@pytest.mark.parametrize("name", sorted(PAPER_SCALE))
def test_paper_scale_spec_uses_the_papers_hyperparameters(name):
    spec = load_spec(EXAMPLES / f"{name}.yaml").model_dump(mode="json")
    expected = {"model": {"arch": "resnet50", "width": 64}, "batch_size": 256, "epochs": 200,
                "data": {"format": "coco", "split": "train2017", "image_size": 224}, **PAPER_SCALE[name]}
    assert _mismatches(expected, spec) == []


@pytest.mark.parametrize("name", sorted(PAPER_SCALE))
def test_tiny_twin_keeps_the_paper_specs_optimizer_and_method_options(name):
    """The twin only scales sizes down (crop sides, queue, kNN warm-up so 5 steps use it); the rest is the same."""
    paper = load_spec(EXAMPLES / f"{name}.yaml").model_dump(mode="json")
    tiny = load_spec(EXAMPLES / f"{name.split('_')[0]}-tiny.yaml").model_dump(mode="json")
    assert tiny["optimizer"] == paper["optimizer"]
    for spec in (paper, tiny):
        method = spec["method"]
        method.pop("queue_size", None)
        for key in ("large_size", "small_size"):
            method.get("multi_crop", {}).pop(key, None)
        method.get("knn", {}).pop("warmup_epochs", None)
        spec["schedule"].pop("warmup_epochs")
    assert tiny["method"] == paper["method"]
    assert tiny["schedule"] == paper["schedule"]


def test_real_moco_with_every_option_resumes_bit_identically(synthetic, tmp_path):
    """The toy of test_engine has no queue and no randomness in its forward; MoCo has both (queues, kNN bank, shuffle-BN
    permutations drawn from the training RNG, A+). Stopped at the epoch boundary (step 5) and resumed, it must end
    with exactly the weights and queues of the uninterrupted run."""
    from sslcli.engine.launch import launch

    example = EXAMPLES / "moco-v2-mc-cc-m-aplus-nn-tiny.yaml"
    common = [f"data.root={synthetic}", "epochs=2", "method.knn.warmup_epochs=1"]
    full = launch(load_spec(example, [*common, "max_steps=7", f"output_dir={tmp_path / 'full'}"]))
    launch(load_spec(example, [*common, "max_steps=5", f"output_dir={tmp_path / 'cut'}"]))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 5
    resumed = launch(load_spec(example, [*common, "max_steps=7", f"output_dir={tmp_path / 'cut'}"]), resume="auto")
    assert resumed["steps"] == full["steps"] == 7 and resumed["final_loss"] == full["final_loss"]
    a = load_checkpoint(tmp_path / "full" / "last.pt")["method"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["method"]
    assert a.keys() == b.keys() and {"queue", "queue_backbone", "queue_ptr"} <= a.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
