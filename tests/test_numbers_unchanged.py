"""Refactors change no number: a fixed set of 3-step runs of every method (CPU and `gpu` pipelines, the view recipes
and ablations) gives the same per-step losses and the same state-dict hashes as those recorded in
tests/golden/numbers.json.

This is a regression pin, not a correctness test (the losses are checked against the authors' code elsewhere): it
proves that moving code between modules changed nothing a run computes. The recorded values come from the commit
that wrote them; after a deliberate change of a number, rewrite them with
``python tests/test_numbers_unchanged.py --write`` and say why in the commit.

Bit-identical results need the same torch build and CPU kernels: the file records torch's version and CPU
capability; on another build the losses are compared to 1e-5 instead (the state-dict hashes cannot be) and the test
says so in its name.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "golden" / "numbers.json"
REPO = Path(__file__).resolve().parents[1]
STEPS = 3

# name -> (tiny example, overrides); the data (`_data`) is generated, so the runs need nothing from ../shared.
RUNS: dict[str, tuple[str, list[str]]] = {
    "moco": ("moco-v2-tiny", []),
    "moco-mc-cc-m-aplus-knn": ("moco-v2-mc-cc-m-aplus-nn-tiny", []),
    "moco-gpu-pipeline": ("moco-v2-mc-cc-m-tiny", ["data.pipeline=gpu"]),
    "simclr": ("simclr-tiny", []),
    "simclr-gpu-pipeline": ("simclr-tiny", ["data.pipeline=gpu"]),
    "byol": ("byol-tiny", []),
    "byol-gpu-pipeline": ("byol-tiny", ["data.pipeline=gpu"]),
    "detcon-s-grid": ("detcon-s-tiny", []),
    "detcon-s-fh-store": ("detcon-s-tiny", ["method.masks={kind: store, path: STORE_FH}"]),
    "detcon-s-gpu-pipeline": ("detcon-s-tiny", ["data.pipeline=gpu"]),
    "detcon-b-gt": ("detcon-b-tiny", []),
    "detcon-b-gt-gpu-pipeline": ("detcon-b-tiny", ["data.pipeline=gpu"]),
    "soco-paper": ("soco-tiny", []),
    "soco-paper-gpu-pipeline": ("soco-tiny", ["data.pipeline=gpu"]),
    "soco-c4-code": ("soco-c4-code-tiny", []),
    "soco-fpn-code": ("soco-fpn-code-tiny", []),
    "d3ssl": ("d3ssl-tiny", []),
    "d3ssl-gpu-pipeline": ("d3ssl-tiny", ["data.pipeline=gpu"]),
    "d3ssl-wo-decoupling-depositioning": ("d3ssl-tiny", ["method.decoupling=false", "method.depositioning=false"]),
    "simclr-small-stem": ("simclr-tiny", ["model.stem=small", "data.image_size=48"]),
    "densecl": ("densecl-tiny", []),
    "densecl-gpu-pipeline": ("densecl-tiny", ["data.pipeline=gpu"]),
    "pixpro": ("pixpro-tiny", []),
    "pixpro-instance-branch": ("pixpro-tiny", ["method.instance_weight=1.0"]),
    "plrc": ("plrc-tiny", []),
    "plrc-gpu-pipeline": ("plrc-tiny", ["data.pipeline=gpu"]),
    "moco-cache-memory": ("moco-v2-mc-cc-m-tiny", ["data.pipeline=gpu", "data.cache=memory"]),
    "soco-paper-cache-memory": ("soco-tiny", ["data.pipeline=gpu", "data.cache=memory"]),
}


def _make_data(root: Path) -> dict[str, Path]:
    """Generated scenes, their selective-search box store and an FH mask store, as a user makes them."""
    from typer.testing import CliRunner

    from sslcli.cli import app
    from sslcli.data.scenes.synthetic import generate

    generate(root, n_train=32, n_val=0, seed=0, size=96)
    fh = root / "sslcli" / "fh-golden.h5"
    for args in (["prepare", "boxes", str(root), "--method", "selective-search", "--filter", "soco", "--workers", "1"],
                 ["prepare", "masks", str(root), "--method", "fh", "--scales", "500", "--out", str(fh),
                  "--workers", "1"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.stderr
    return {"root": root, "boxes": root / "sslcli" / "ss-soco.h5", "fh": fh}


def _state_hash(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def run_numbers(name: str, data: dict[str, Path], out: Path) -> dict:
    """Train run ``name`` for STEPS steps in this process; its per-step losses and state-dict hashes."""
    from sslcli.engine.trainer import train
    from sslcli.engine.training_checkpoint import load_checkpoint
    from sslcli.spec import load_spec

    example, overrides = RUNS[name]
    sets = [o.replace("STORE_FH", str(data["fh"])) for o in overrides]
    spec = load_spec(REPO / "examples" / f"{example}.yaml",
                     [f"data.root={data['root']}", "data.workers=0", f"max_steps={STEPS}", "logging.every_steps=1",
                      f"output_dir={out / name}", *sets,
                      *([f"method.boxes={data['boxes']}"] if "boxes" in _method_fields(example) else [])])
    torch.set_num_threads(1)
    train(spec, torch.device("cpu"))
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row.get("type") == "step"]
    ckpt = load_checkpoint(out / name / "last.pt")
    return {"losses": [float(x).hex() for x in losses], "method": _state_hash(ckpt["method"]),
            "backbone": _state_hash(ckpt["backbone"])}


def _method_fields(example: str) -> dict:
    import yaml

    return yaml.safe_load((REPO / "examples" / f"{example}.yaml").read_text())["method"]


def _build() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return _make_data(tmp_path_factory.mktemp("golden") / "scenes")


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_every_method_is_pinned():
    from sslcli.method_registry import method_names
    from sslcli.spec import run_spec_model

    run_spec_model()  # registers the built-ins
    pinned = {_method_fields(example)["name"] for example, _ in RUNS.values()}
    assert set(method_names()) <= pinned
    assert set(_golden()["runs"]) == set(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_numbers_unchanged(name, data, tmp_path):
    golden = _golden()
    got = run_numbers(name, data, tmp_path)
    want = golden["runs"][name]
    if golden["build"] == _build():
        assert got == want
    else:  # another torch build or CPU kernel set: float rounding may differ, so compare the losses only
        assert len(got["losses"]) == len(want["losses"]) == STEPS
        assert [float.fromhex(x) for x in got["losses"]] == pytest.approx(
            [float.fromhex(x) for x in want["losses"]], rel=1e-5)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        scenes = _make_data(Path(tmp) / "scenes")
        runs = {name: run_numbers(name, scenes, Path(tmp) / "runs") for name in sorted(RUNS)}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"build": _build(), "steps": STEPS, "runs": runs}, indent=1) + "\n")
    print(f"wrote {GOLDEN}: {len(runs)} runs")
