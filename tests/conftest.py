"""Shared fixtures: the real tiny-COCO set (skipped when absent), tiny models, CLI runner."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

# One thread: tests run beside DataLoader workers and gloo peers on 2 cores; more threads oversubscribe them.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# Child processes (`python -m sslcli ...`, `python -c ...`) import the sslcli of this checkout, from any working
# directory and whatever copy is installed (pytest's `pythonpath` setting does the same for this process).
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
TINY_COCO = Path(os.environ.get("SSLCLI_TINY_COCO", REPO.parent / "shared" / "data" / "tiny-coco"))


@pytest.fixture(autouse=True)
def _process_state_per_test():
    """Each test starts from the same process-wide state, whatever ran before it (the suite runs in random order):
    the console options a CLI call leaves set (--quiet, --json, the messages it printed once), the torch thread count
    a training run chooses, and torch's global random stream (pytest-randomly reseeds only `random` and numpy)."""
    from sslcli import console

    threads = torch.get_num_threads()
    # Stop-signal dispositions: a test that runs a DataLoader worker's init in-process leaves them ignored, and an
    # ignored SIGTERM is inherited by every child the later tests start.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    console.set_current(console.Output())
    torch.manual_seed(0)
    yield
    console.set_current(console.Output())
    torch.set_num_threads(threads)
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.fixture
def tiny_coco(request) -> Path:
    """The real tiny-COCO photographs, for the tests that truly need them: each says why with
    ``@pytest.mark.photographs("...")``, and skips with that reason where the data is absent. Every other test of
    COCO data runs on `coco_data`, so it runs everywhere."""
    marker = request.node.get_closest_marker("photographs")
    if marker is None or not marker.args:
        pytest.fail("a test using the real tiny-COCO photographs says why: @pytest.mark.photographs('reason'); "
                    "or it runs on the generated coco_data fixture")
    if not (TINY_COCO / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"real tiny-COCO data not found at {TINY_COCO} (set SSLCLI_TINY_COCO); this test needs real "
                    f"photographs: {marker.args[0]}")
    return TINY_COCO


@pytest.fixture(scope="session")
def coco_data(tmp_path_factory) -> Path:
    """Generated scenes in tiny-COCO's layout and size (`sslcli prepare synthetic`: 50 train + 50 val images with a
    640 px long side, COCO instance annotations with RLE masks, 10 classes), made once per session; read-only, like
    the shared tiny-COCO folder it stands in for."""
    from sslcli.data.scenes.synthetic import generate

    root = tmp_path_factory.mktemp("coco-data") / "coco"
    generate(root, n_train=50, n_val=50, seed=0, size=640)
    return root


@pytest.fixture
def cli():
    """Run the CLI in-process: cli(["prepare", ...]) -> (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from sslcli.cli import app

    runner = CliRunner()

    def run(args: list[str]):
        result = runner.invoke(app, [str(a) for a in args])
        return result.exit_code, result.stdout, result.stderr

    return run


@pytest.fixture
def refused(cli):
    """refused(args, message): the command exits 2 with one stderr line holding ``message``, and under ``--json``
    with the JSON error object saying the same (the bad-input convention, README "Errors")."""
    import json

    def check(args: list, message: str) -> None:
        code, _, err = cli(args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        code, stdout, _ = cli([*args, "--json"])
        result = json.loads(stdout)
        assert code == 2 and result["exit_code"] == 2 and message in result["error"]

    return check


# The engine tests' toy data and method (tests/engine_toy.py), shared by test_engine and test_reliability.
@pytest.fixture
def images(tmp_path):
    import engine_toy as toy

    root = tmp_path / "images"
    toy.write_images(root, n=20)
    return root


@pytest.fixture
def toy_method(monkeypatch):
    """The toy method installed as 'simclr' for this test only."""
    from dataclasses import replace

    import engine_toy as toy

    from sslcli.method_registry import REGISTRY, method_entry

    monkeypatch.setitem(REGISTRY, "simclr", replace(method_entry("simclr"), method=toy.ToyMethod))


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """An untrained width-8 ResNet-18 backbone in sslcli's checkpoint format (for probes and analyses)."""
    from sslcli.models.backbone import build_backbone

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save({"format": "sslcli-checkpoint", "arch": "resnet18", "width": 8,
                "backbone": build_backbone("resnet18", width=8).state_dict()}, path)
    return path
