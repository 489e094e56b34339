"""Real multi-process runs (gloo on CPU, spawned processes): equivalence with one process, resume, errors.

What differs between 1 and 2 processes, and why the toy avoids it: methods with BatchNorm normalise with per-rank
batch statistics (and MoCo's shuffle-BN permutes keys across ranks), so their gradients legitimately depend on how the
global batch is split. The toy has no BatchNorm and computes its contrastive loss over the all-gathered batch, so
the two runs must agree up to floating-point summation order (gloo all-reduce sums the two ranks' gradients in
another order than a single backward pass accumulates them): agreement to 1e-6, not bit-for-bit.
"""

from __future__ import annotations

import socket
from pathlib import Path

import engine_toy as toy
import pytest
import torch

from sslcli.engine.launch import launch
from sslcli.engine.training_checkpoint import load_checkpoint
from sslcli.errors import SslcliError
from sslcli.spec import parse_spec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "images"
    toy.write_images(root, n=20)
    return root




def _tensors(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


@pytest.fixture(scope="module")
def two_process_run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "two"
    spec = parse_spec(toy.spec_dict(images, out, epochs=3), world_size=2)
    result = launch(spec, gpus=2, master_port=free_port(), init_hook=toy.install)
    return out, result


def test_two_processes_match_one_process_with_the_same_global_batch(images, tmp_path, two_process_run, monkeypatch):
    from dataclasses import replace

    from sslcli.method_registry import REGISTRY, method_entry

    out2, result2 = two_process_run
    # in this process for this test only
    monkeypatch.setitem(REGISTRY, "simclr", replace(method_entry("simclr"), method=toy.ToyMethod))
    spec = parse_spec(toy.spec_dict(images, tmp_path / "one", epochs=3))
    result1 = launch(spec)
    assert result2["world_size"] == 2 and result2["steps"] == result1["steps"] == 6
    one, two = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(out2 / "last.pt")
    assert len(two["rng"]["ranks"]) == 2
    a, b = _tensors(one["method"]), _tensors(two["method"])
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    torch.manual_seed(spec.seed)
    initial = toy.ToyMethod(spec).encoder[0].weight.detach()
    assert (a["encoder.0.weight"] - initial).abs().max() > 1e-4  # training moved the weights
    assert result2["final_loss"] == pytest.approx(result1["final_loss"], abs=1e-5)


def test_nan_stops_every_rank_then_resume_reproduces_the_uninterrupted_run(images, tmp_path, two_process_run):
    """A NaN at step 4 stops both ranks with one message and leaves epoch 1's checkpoint; resuming from it with a
    healthy method gives bit-identical weights to the uninterrupted 2-process run (same data order, RNG states)."""
    out2, _ = two_process_run
    run = tmp_path / "run"
    spec = parse_spec(toy.spec_dict(images, run, epochs=3), world_size=2)
    with pytest.raises(SslcliError, match=r"loss is nan at step 4 \(epoch 2\)"):
        launch(spec, gpus=2, master_port=free_port(), init_hook=toy.install_poisoned)
    assert load_checkpoint(run / "last.pt")["step"] == 2
    launch(spec, resume="auto", gpus=2, master_port=free_port(), init_hook=toy.install)
    a, b = _tensors(load_checkpoint(out2 / "last.pt")["method"]), _tensors(load_checkpoint(run / "last.pt")["method"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_to_the_launcher_stops_both_ranks_after_one_step_then_resume_is_bit_identical(images, tmp_path,
                                                                                             two_process_run):
    """Rank 0 sends SIGTERM to the launcher inside step 3 (and sleeps there a second); the launcher forwards it to
    both ranks, which agree to stop after that step: last.pt at step 3 (mid-epoch 2) with both ranks' RNG states,
    and resuming it gives bit-identical weights to the uninterrupted 2-process run."""
    import signal

    from sslcli.errors import Interrupted

    out2, _ = two_process_run
    run = tmp_path / "run"
    spec = parse_spec(toy.spec_dict(images, run, epochs=3), world_size=2)
    with pytest.raises(Interrupted) as stop:
        launch(spec, gpus=2, master_port=free_port(), init_hook=toy.install_signalling_launcher)
    assert (stop.value.signum, stop.value.step, stop.value.checkpoint) == (signal.SIGTERM, 3, str(run / "last.pt"))
    saved = load_checkpoint(run / "last.pt")
    assert saved["step"] == 3 and len(saved["rng"]["ranks"]) == 2
    launch(spec, resume="auto", gpus=2, master_port=free_port(), init_hook=toy.install)
    a, b = _tensors(load_checkpoint(out2 / "last.pt")["method"]), _tensors(load_checkpoint(run / "last.pt")["method"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(images, tmp_path):
    """Only rank 1 gets SIGTERM (as when one node's processes are signalled): the ranks' agreement after each step
    stops rank 0 too, after the same step, instead of leaving it to wait alone in the next step's collective."""
    import signal

    from sslcli.errors import Interrupted

    run = tmp_path / "run"
    spec = parse_spec(toy.spec_dict(images, run, epochs=3), world_size=2)
    with pytest.raises(Interrupted) as stop:
        launch(spec, gpus=2, master_port=free_port(), init_hook=toy.install_rank_signalling)
    assert (stop.value.signum, stop.value.step) == (signal.SIGTERM, 3)
    saved = load_checkpoint(run / "last.pt")
    assert saved["step"] == 3 and len(saved["rng"]["ranks"]) == 2


def test_moco_with_every_option_trains_on_two_processes(tmp_path):
    """The real MoCo (shuffle-BN across ranks, gathered keys, kNN bank, multi-crop) under DDP with 2 gloo processes."""
    from sslcli.data.scenes.synthetic import generate
    from sslcli.spec import load_spec

    data = tmp_path / "demo-data"
    generate(data, n_train=80, n_val=0, seed=0, size=96)
    example = Path(__file__).resolve().parents[1] / "examples" / "moco-v2-mc-cc-m-aplus-nn-tiny.yaml"
    spec = load_spec(example, [f"data.root={data}", f"output_dir={tmp_path / 'run'}", "max_steps=3"], world_size=2)
    result = launch(spec, gpus=2, master_port=free_port())
    assert result["world_size"] == 2 and result["steps"] == 3
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert int(ckpt["method"]["queue_ptr"]) == 3 * 16 % spec.method.queue_size  # the global batch was enqueued
    assert torch.isfinite(torch.tensor(result["final_loss"]))


def test_bad_input_is_caught_once_before_spawning_ranks(tmp_path, cli):
    """A missing region store with --gpus 2: one line, exit 2, no rank started (nothing for torch to terminate)."""
    root = tmp_path / "imgs"
    toy.write_images(root, n=4)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"data: {{root: {root}, image_size: 32, workers: 0}}\nmodel: {{arch: resnet18, width: 8}}\n"
                    f"method: {{name: detcon, masks: {{kind: store, path: {tmp_path / 'missing.h5'}}}}}\n"
                    f"batch_size: 4\nepochs: 1\noutput_dir: {tmp_path / 'run'}\n")
    code, _, err = cli(["pretrain", spec, "--gpus", "2"])
    assert code == 2
    assert err.strip().splitlines() == [f"error: {tmp_path / 'missing.h5'}: region store not found"]
    assert not (tmp_path / "run").exists()


def test_preflight_keeps_every_built_in_method_registered(tmp_path):
    """The pre-spawn check builds the method this process registers (the init hook runs in the ranks only) and
    leaves the registry as it found it. Run in a fresh interpreter, where nothing is imported yet."""
    import subprocess
    import sys

    toy.write_images(tmp_path / "imgs", n=4)
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import engine_toy as toy
from sslcli.engine.launch import _preflight
from sslcli.method_registry import REGISTRY, method_class
from sslcli.spec import parse_spec
spec = parse_spec(toy.spec_dict({str(tmp_path / 'imgs')!r}, {str(tmp_path / 'run')!r}))
_preflight(spec, None)
names = {{"moco", "simclr", "byol", "detcon", "soco", "d3ssl"}}
assert names <= set(REGISTRY), sorted(REGISTRY)
assert method_class("simclr").__name__ == "SimCLR", method_class("simclr")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
