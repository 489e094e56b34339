"""Preemption-safe training (issue 24) and a clean exit on SIGTERM (issue 26 item 7).

A stop signal (SIGTERM, SIGINT, SIGUSR1) ends `pretrain` after the step in progress with ``last.pt`` saved at that step
and exit code 128 + the signal's number; ``--resume auto`` continues bit-identically to an uninterrupted run. The
signals are real: sent with ``os.kill`` to this process from inside a training step (deterministic) or to a
``python -m sslcli pretrain`` subprocess (and its DataLoader worker) once its metrics show a step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import engine_toy as toy
import pytest
import torch
import yaml

import sslcli.engine.trainer as trainer_module
from sslcli.engine.launch import launch
from sslcli.engine.trainer import Trainer
from sslcli.engine.training_checkpoint import load_checkpoint
from sslcli.errors import InputError, Interrupted
from sslcli.spec import load_spec, parse_spec

TESTS = Path(__file__).parent
EXAMPLES = TESTS.parent / "examples"
# 20 images in batches of 4: 5 steps per epoch, 10 in all; a stop after step 3 is mid-epoch. One compute thread in
# every process of a test (CPU sums depend on the thread count).
SETTINGS = {"batch_size": 4, "epochs": 2, "data__threads": 1}
# The shell's convention for a process ended by a signal, 128 + its number (signal(7): INT 2, USR1 10, TERM 15).
EXIT_CODES = {signal.SIGINT: 130, signal.SIGUSR1: 138, signal.SIGTERM: 143}


def _toy_spec(images: Path, out: Path, **overrides):
    return parse_spec(toy.spec_dict(images, out, **{**SETTINGS, **overrides}))


def _signal_during_step(monkeypatch, step_index: int, *signums: int) -> None:
    """Send ``signums`` to this process while the training step with index ``step_index`` runs (once)."""
    step = Trainer.step
    pending = [True]

    def signalled_step(self, batch, info):
        if info.step == step_index and pending:
            pending.clear()
            for signum in signums:
                os.kill(os.getpid(), signum)  # the handler runs here, before the step computes anything
        return step(self, batch, info)

    monkeypatch.setattr(Trainer, "step", signalled_step)


def _records(run: Path) -> list[tuple]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["type"], r["step"], r["loss"]) for r in map(json.loads, lines)]


def _assert_same_run(full: Path, resumed: Path) -> None:
    """Bit-identical weights, buffers (queues, momentum targets), optimiser and RNG states, and metrics lines."""
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["step"] == b["step"]
    for key in ("method", "optimizer", "rng"):
        ta, tb = toy.tensors(a[key]), toy.tensors(b[key])
        assert len(ta) == len(tb) > 0, key
        assert all(torch.equal(x, y) for x, y in zip(ta, tb)), key
    assert a["rng"]["ranks"][0]["python"] == b["rng"]["ranks"][0]["python"]
    assert _records(resumed) == _records(full)  # every step's loss and each epoch's mean, exactly


# ------------------------------------------------------------------------------------- signal → save → resume
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_stop_signal_mid_epoch_saves_that_step_and_the_resume_is_bit_identical(images, tmp_path, toy_method,
                                                                                  monkeypatch, signum):
    launch(_toy_spec(images, tmp_path / "full"))
    _signal_during_step(monkeypatch, 2, signum)  # the 3rd step
    with pytest.raises(Interrupted) as stop:
        launch(_toy_spec(images, tmp_path / "cut"))
    assert (stop.value.signum, stop.value.step, stop.value.exit_code) == (signum, 3, EXIT_CODES[signum])
    assert stop.value.checkpoint == str(tmp_path / "cut" / "last.pt")
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (saved["step"], saved["epoch"], saved["epoch_stats"]["steps"]) == (3, 0, 3)  # mid-epoch 1
    resumed = launch(_toy_spec(images, tmp_path / "cut"), resume="auto")
    assert resumed["steps"] == 10
    _assert_same_run(tmp_path / "full", tmp_path / "cut")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from sslcli.data.scenes.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic") / "demo-data"
    generate(root, n_train=80, n_val=0, seed=0, size=96)  # 80 images: 5 batches of 16, as the tiny specs assume
    return root


@pytest.mark.parametrize("example", ["moco-v2-tiny", "byol-tiny"])
def test_real_methods_stopped_mid_epoch_resume_with_identical_queues_and_momentum_targets(synthetic, tmp_path,
                                                                                         monkeypatch, example):
    """MoCo-v2: a queue and shuffle-BN permutations drawn from the training RNG; BYOL: a momentum that follows a
    cosine of the step. Stopped by SIGTERM after step 2 of epoch 1 (of 5) and resumed, both end as the
    uninterrupted run."""
    common = [f"data.root={synthetic}", "epochs=2", "max_steps=7", "data.threads=1"]
    launch(load_spec(EXAMPLES / f"{example}.yaml", [*common, f"output_dir={tmp_path / 'full'}"]))
    cut = load_spec(EXAMPLES / f"{example}.yaml", [*common, f"output_dir={tmp_path / 'cut'}"])
    _signal_during_step(monkeypatch, 1, signal.SIGTERM)
    with pytest.raises(Interrupted, match="after step 2"):
        launch(cut)
    launch(cut, resume="auto")
    _assert_same_run(tmp_path / "full", tmp_path / "cut")
    if example == "moco-v2-tiny":
        assert {"queue", "queue_ptr"} <= set(load_checkpoint(tmp_path / "cut" / "last.pt")["method"])


def test_further_signals_during_the_save_are_ignored_and_the_checkpoint_resumes(images, tmp_path, toy_method,
                                                                              monkeypatch, capfd):
    """A scheduler that repeats SIGTERM, a user who presses Ctrl-C twice: the signals that come while the stop's
    checkpoint is written change nothing (a SIGINT there used to raise KeyboardInterrupt inside the save)."""
    launch(_toy_spec(images, tmp_path / "full"))
    save = trainer_module.save_checkpoint

    def save_under_fire(path, state):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        save(path, state)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_under_fire)
    _signal_during_step(monkeypatch, 2, signal.SIGTERM)
    with pytest.raises(Interrupted) as stop:
        launch(_toy_spec(images, tmp_path / "cut"))
    assert (stop.value.signum, stop.value.step) == (signal.SIGTERM, 3)  # the first signal decides
    assert "2 further stop signal(s) ignored while stopping" in capfd.readouterr().err
    assert not list((tmp_path / "cut").glob(".*.tmp"))
    monkeypatch.setattr(trainer_module, "save_checkpoint", save)
    launch(_toy_spec(images, tmp_path / "cut"), resume="auto")
    _assert_same_run(tmp_path / "full", tmp_path / "cut")


def test_sigterm_to_a_cli_run_and_its_worker_loses_no_step_and_prints_where_it_stopped(images, tmp_path, toy_method):
    """A real SIGTERM to the process group of `pretrain --json` (the run and its DataLoader worker, as a scheduler
    sends it) once metrics.jsonl shows a step, then a second SIGTERM: exit 143, one error line, a JSON object, and
    last.pt holds every step logged before the signal and at most the one in progress (work lost: none)."""
    run = tmp_path / "run"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(toy.spec_dict(images, run, **SETTINGS, data__workers=1)))
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import engine_toy; engine_toy.main_slow()"
    proc = subprocess.Popen([sys.executable, "-c", code, "pretrain", str(spec_path), "--json", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        logged = _wait_for_step(run, proc, at_least=2)  # the slow toy takes a second per step from step 3 on
        os.killpg(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr
    saved = load_checkpoint(run / "last.pt")["step"]
    assert logged <= saved <= logged + 1 and saved < 10
    checkpoint = str(run / "last.pt")
    assert stderr.strip().splitlines() == [
        f"error: interrupted by SIGTERM after step {saved}; saved {checkpoint} (continue with --resume auto)"]
    assert json.loads(stdout) == {"error": stderr.strip().removeprefix("error: "), "exit_code": 143,
                                  "interrupted": "SIGTERM", "step": saved, "checkpoint": checkpoint}
    assert max(step for kind, step, _ in _records(run) if kind == "step") == saved
    launch(_toy_spec(images, tmp_path / "full"))
    launch(_toy_spec(images, run), resume="auto")
    _assert_same_run(tmp_path / "full", run)


def _wait_for_step(run: Path, proc: subprocess.Popen, at_least: int) -> int:
    """The last step metrics.jsonl shows once it shows ``at_least``."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file():
            steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                     if r["type"] == "step"]
            if steps and steps[-1] >= at_least:
                return steps[-1]
        time.sleep(0.02)
    raise AssertionError(f"the run ended or stalled before step {at_least}: {proc.poll()}")


# ---------------------------------------------------------------------------------------- the CLI's exit codes
def test_sigusr1_is_the_requeue_code_with_the_step_and_checkpoint_under_json(images, tmp_path, toy_method,
                                                                            monkeypatch, cli):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(toy.spec_dict(images, tmp_path / "run", **SETTINGS)))
    _signal_during_step(monkeypatch, 6, signal.SIGUSR1)
    code, stdout, err = cli(["pretrain", spec_path, "--json", "--quiet"])
    assert code == 138
    checkpoint = str(tmp_path / "run" / "last.pt")
    assert json.loads(stdout) == {"error": f"interrupted by SIGUSR1 after step 7; saved {checkpoint} (continue with "
                                           "--resume auto)", "exit_code": 138, "interrupted": "SIGUSR1", "step": 7,
                                  "checkpoint": checkpoint}
    assert err.strip().splitlines() == [f"error: {json.loads(stdout)['error']}"]


def test_sigterm_before_training_starts_exits_143_with_a_message(images, tmp_path, toy_method, monkeypatch, cli):
    """Issue 26 item 7: SIGTERM used to end `pretrain` with exit 143, no message and nothing on stdout under --json."""
    import sslcli.engine.launch as launch_module

    check = launch_module._check_spec

    def terminated_while_checking(spec, world):
        os.kill(os.getpid(), signal.SIGTERM)
        check(spec, world)

    monkeypatch.setattr(launch_module, "_check_spec", terminated_while_checking)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(toy.spec_dict(images, tmp_path / "run", **SETTINGS)))
    code, stdout, err = cli(["pretrain", spec_path, "--json"])
    assert code == 143
    assert err.strip().splitlines() == ["error: interrupted by SIGTERM"]
    assert json.loads(stdout) == {"error": "interrupted by SIGTERM", "exit_code": 143, "interrupted": "SIGTERM",
                                  "step": None, "checkpoint": None}
    assert not (tmp_path / "run").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command's handlers are gone after it


# --------------------------------------------------------------------------------- periodic step checkpoints
def _record_saves(monkeypatch) -> list[tuple[str, int]]:
    saves: list[tuple[str, int]] = []
    save = trainer_module.save_checkpoint

    def recording(path, state):
        saves.append((Path(path).name, state["step"]))
        save(path, state)

    monkeypatch.setattr(trainer_module, "save_checkpoint", recording)
    return saves


def test_checkpoint_every_steps_overwrites_last_mid_epoch_and_keeps_the_epoch_checkpoints(images, tmp_path,
                                                                                         toy_method, monkeypatch):
    saves = _record_saves(monkeypatch)
    launch(_toy_spec(images, tmp_path / "run", checkpoint_every=1, checkpoint_every_steps=3))
    # Steps 3, 6, 9 (multiples of 3) mid-epoch; the epoch ends (5, 10) as without the field.
    assert saves == [("last.pt", 3), ("epoch_0001.pt", 5), ("last.pt", 5), ("last.pt", 6), ("last.pt", 9),
                     ("epoch_0002.pt", 10), ("last.pt", 10)]


@pytest.mark.parametrize(("minutes", "expected"), [
    (1e-9, [1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 10]),  # due after every step; epoch ends write epoch_ and last
    (60.0, [5, 5, 10, 10]),  # never due in a run this short: the epoch checkpoints only
])
def test_checkpoint_every_minutes_saves_once_that_long_has_passed(images, tmp_path, toy_method, monkeypatch, minutes,
                                                                  expected):
    saves = _record_saves(monkeypatch)
    launch(_toy_spec(images, tmp_path / "run", checkpoint_every=1, checkpoint_every_minutes=minutes))
    assert [step for _, step in saves] == expected


def test_a_periodic_step_checkpoint_resumes_bit_identically_with_other_periods(images, tmp_path, toy_method,
                                                                             monkeypatch):
    launch(_toy_spec(images, tmp_path / "full"))
    step = Trainer.step

    def crash_in_step_8(self, batch, info):
        if info.step == 7:
            raise RuntimeError("the machine went away")
        return step(self, batch, info)

    monkeypatch.setattr(Trainer, "step", crash_in_step_8)
    with pytest.raises(RuntimeError):
        launch(_toy_spec(images, tmp_path / "cut", checkpoint_every_steps=7))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 7  # mid-epoch 2
    monkeypatch.setattr(Trainer, "step", step)
    launch(_toy_spec(images, tmp_path / "cut", checkpoint_every_minutes=30.0), resume="auto")  # periods may change
    _assert_same_run(tmp_path / "full", tmp_path / "cut")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("checkpoint_every_steps", 0, "checkpoint_every_steps: Input should be greater than or equal to 1"),
    ("checkpoint_every_minutes", 0, "checkpoint_every_minutes: Input should be greater than 0"),
    ("checkpoint_every_minutes", float("nan"), "checkpoint_every_minutes: Input should be a finite number"),
])
def test_bad_checkpoint_periods_are_refused_naming_the_field(images, tmp_path, field, value, message):
    with pytest.raises(InputError, match=message):
        parse_spec(toy.spec_dict(images, tmp_path / "run", **{field: value}))


# ------------------------------------------------------------------------------------------------ the study
def test_the_study_runner_does_not_take_a_stopped_run_for_a_finished_one(images, tmp_path, toy_method, monkeypatch):
    from sslcli.study.runner import _finished_steps

    spec = _toy_spec(images, tmp_path / "run")
    _signal_during_step(monkeypatch, 2, signal.SIGTERM)
    with pytest.raises(Interrupted):
        launch(spec)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3  # mid-epoch 1 of 2
    assert _finished_steps(SimpleNamespace(spec=spec)) is None
    launch(spec, resume="auto")
    assert _finished_steps(SimpleNamespace(spec=spec)) == 10


def test_checkpoint_periods_leave_a_studys_run_hashes_as_they_were(tmp_path):
    """They change no number a run computes: setting them must not make `study run` retrain every run."""
    from sslcli.study.spec import load_study

    base = {"data": {"root": "{out}/data", "format": "coco", "image_size": 32, "workers": 0},
            "model": {"arch": "resnet18", "width": 8}, "method": {"name": "moco", "queue_size": 64},
            "batch_size": 16, "epochs": 2}

    def hashes(**changes) -> list[str]:
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump({"name": "s", "base": {**base, **changes}, "arms": {"a": {}}, "seeds": [0, 1]}))
        return [run.hash for run in load_study(path, tmp_path / "out").runs]

    plain = hashes()
    assert hashes(checkpoint_every_steps=100, checkpoint_every_minutes=20.0) == plain
    assert hashes(epochs=3) != plain  # a field that does change the run changes its hash


# ------------------------------------------------------------------------------------------- the signal helpers
def test_the_forwarder_sends_a_stop_signal_on_to_the_ranks_instead_of_stopping_the_launcher():
    from sslcli.process import SignalForwarder

    early, late = (subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2))
    try:
        with SignalForwarder() as forwarder:
            forwarder.add([early.pid])
            os.kill(os.getpid(), signal.SIGUSR1)  # would end this process (pytest) without the forwarder
            forwarder.add([late.pid])  # started after the signal: it gets it when it is added
        assert forwarder.signum == signal.SIGUSR1
        assert early.wait(timeout=30) == late.wait(timeout=30) == -signal.SIGUSR1
    finally:
        for proc in (early, late):
            proc.kill()
            proc.wait()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_interrupted_survives_pickling_with_its_fields():
    """A job runner (submitit) pickles what the job raised to hand it to the submitting process."""
    import pickle

    stop = pickle.loads(pickle.dumps(Interrupted(signal.SIGUSR1, 7, "run/last.pt")))
    assert (stop.exit_code, stop.step, stop.checkpoint, str(stop)) == (
        138, 7, "run/last.pt", "interrupted by SIGUSR1 after step 7; saved run/last.pt (continue with --resume auto)")
