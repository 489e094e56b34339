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

from sslcli.data.synthetic import generate
from sslcli.engine.checkpoint import load_checkpoint
from sslcli.engine.data import SKIPPED_KEY, build_loader
from sslcli.engine.trainer import Trainer
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
def test_tiny_example_loss_decreases_on_a_fixed_batch(path, synthetic):
    spec = load_spec(path, [*data_overrides(path, synthetic), "output_dir=unused"])
    before, after = _fixed_batch_loss_before_after(spec, steps=6)
    assert math.isfinite(before) and after < before
