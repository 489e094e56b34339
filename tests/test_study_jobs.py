"""`study run --jobs N` (slots: a device round-robin and cores // N threads per command, N commands at once; per-seed
prepare chains) and `study run --budget NAME` (a study file's named sizes)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
import yaml

from sslcli.study import runner
from sslcli.study.slots import Slots, slot_env, visible_devices
from sslcli.study.spec import PrepareCommand, load_study

REPO = Path(__file__).resolve().parents[1]

BASE = {"spec_version": 1, "name": "t",
        "data": {"root": "{out}/data", "format": "coco", "image_size": 32, "workers": 0},
        "model": {"arch": "resnet18", "width": 8},
        "method": {"name": "moco", "queue_size": 64, "dim": 32, "hidden_dim": 64},
        "batch_size": 16, "epochs": 1, "max_steps": 2}
STUDY = {"name": "j", "base": BASE, "arms": {"a": {}}, "seeds": [0, 1, 2],
         "prepare": ["synthetic {out}/data --images 8 --size 32"],
         "evaluate": [{"kind": "coupling", "options": {"data": "{out}/data", "pairs": 4}}],
         "budgets": {"tiny": {"seeds": [7], "base.max_steps": 1, "evaluate.0.options.pairs": 2,
                              "prepare": ["synthetic {out}/small --images 4 --size 32"]}}}


def _write(tmp_path: Path, study: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


# ------------------------------------------------------------------------------------------------------- slots
def test_slots_share_the_devices_round_robin_and_split_the_cores():
    slots = Slots(4, devices=["0", "1"], cores=16, env={})
    assert slots.envs == [{"OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "0"},
                          {"OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "1"},
                          {"OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "0"},
                          {"OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "1"}]
    # 3 jobs on 2 cores: at least one thread each; no GPU: no CUDA_VISIBLE_DEVICES.
    assert Slots(3, devices=[], cores=2, env={}).envs == [{"OMP_NUM_THREADS": "1"}] * 3


def test_one_job_sets_nothing_and_a_users_thread_count_is_kept():
    assert slot_env(0, 1, ["0", "1"], 16, env={}) == {}
    assert slot_env(1, 2, ["0", "1"], 16, env={"OMP_NUM_THREADS": "3"}) == {"CUDA_VISIBLE_DEVICES": "1"}


def test_visible_devices_come_from_the_variable_else_from_torchs_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert visible_devices({}) == ["0", "1", "2"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "4, 6"}) == ["4", "6"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert visible_devices({}) == []


def _fake_call(seen: list, barrier: threading.Barrier):
    """A stand-in for `sslcli.process.call`: records each command's variables and waits until ``barrier.parties``
    commands are running at once (a timeout fails the test: they were not concurrent)."""
    lock = threading.Lock()

    def call(args, log, verbose, on_start=None, env=None):
        with lock:
            seen.append((args[0], dict(env or {})))
        barrier.wait(timeout=30)
        return {"device": "cuda:0", "steps": 2}, 0.01, "sslcli " + " ".join(args)

    return call


def test_three_jobs_train_three_runs_at_once_on_one_shared_gpu(tmp_path, monkeypatch):
    """A machine with one (faked) GPU and 6 cores: --jobs 3 starts the three runs together, every one on device 0
    with 2 threads."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen: list = []
    monkeypatch.setattr(runner, "call", _fake_call(seen, threading.Barrier(3)))
    study = load_study(_write(tmp_path, STUDY), tmp_path / "out")
    executor = runner.LocalExecutor(slots=Slots(3, cores=6))
    devices = executor.train(study, study.trained, lambda line: None, False, {"trained": 0, "skipped": 0})
    assert devices == {"cuda:0"}
    assert [name for name, _ in seen] == ["pretrain"] * 3
    assert [env for _, env in seen] == [{"OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "0"}] * 3
    assert all((Path(r.spec.output_dir) / runner.RUN_MARKER).is_file() for r in study.trained)


def test_per_seed_prepare_steps_run_as_one_chain_per_seed():
    todo = [PrepareCommand("a {seed}", 1), PrepareCommand("a {seed}", 2), PrepareCommand("b {seed}", 1),
            PrepareCommand("b {seed}", 2), PrepareCommand("c", None), PrepareCommand("d {seed}", 1),
            PrepareCommand("d {seed}", 2)]
    groups = runner.prepare_groups(todo)
    names = [[[f"{i}:{c.step.split()[0]}{c.seed or ''}" for i, c in chain] for chain in group] for group in groups]
    assert names == [[["0:a1", "2:b1"], ["1:a2", "3:b2"]], [["4:c"]], [["5:d1"], ["6:d2"]]]


# ----------------------------------------------------------------------------------------------------- budgets
def test_a_budget_changes_the_study_where_it_says(cli, tmp_path):
    path = _write(tmp_path, STUDY)
    code, out, err = cli(["study", "run", path, "--budget", "tiny", "--dry-run", "--json"])
    assert code == 0, err
    plan = json.loads(out)
    assert plan["budget"] == "tiny" and plan["seeds"] == [7]
    assert [r["spec"]["max_steps"] for r in plan["runs"]] == [1]
    assert plan["evaluate"][0]["options"]["pairs"] == 2
    assert plan["prepare"] == ["synthetic {out}/small --images 4 --size 32"]
    assert plan["out"] == str(Path("studies-out/j-tiny").resolve())
    code, out, err = cli(["study", "run", path, "--dry-run", "--json", "--out", tmp_path / "o"])
    full = json.loads(out)
    assert code == 0 and full["budget"] is None and full["seeds"] == [0, 1, 2]
    assert [r["spec"]["max_steps"] for r in full["runs"]] == [2, 2, 2]


@pytest.mark.parametrize(("budgets", "args", "needles"), [
    ({"tiny": {"seeds": [1]}}, ["--budget", "smal"], ["--budget 'smal'", "budgets: tiny"]),
    ({}, ["--budget", "tiny"], ["--budget 'tiny'", "budgets: none"]),
    ({"tiny": {"evaluate.3.options.pairs": 2}}, ["--budget", "tiny"],
     ["budgets.tiny.evaluate.3.options.pairs", "evaluate is a list of 1 item(s)", "'3'"]),
    ({"tiny": {"name.x": 2}}, ["--budget", "tiny"], ["budgets.tiny.name.x", "name is 'j'"]),
    ({"tiny": {"seeds": []}}, ["--budget", "tiny"], ["(budget tiny)", "seeds"]),
    ({"tiny": {"base.epochs": 0}}, ["--budget", "tiny"], ["base", "epochs"]),
    ({"tiny": ["seeds=1"]}, ["--budget", "tiny"], ["budgets.tiny"]),
])
def test_a_bad_budget_is_one_line_and_runs_nothing(cli, tmp_path, budgets, args, needles):
    path = _write(tmp_path, {**STUDY, "budgets": budgets})
    code, _, err = cli(["study", "run", path, "--out", tmp_path / "out", *args])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(path) in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (tmp_path / "out").exists()


def test_every_budget_of_every_study_file_validates(tmp_path):
    for path in sorted((REPO / "studies").glob("*.yaml")):
        budgets = yaml.safe_load(path.read_text()).get("budgets", {})
        for name in [None, *budgets]:
            study = load_study(path, tmp_path / path.stem, budget=name)
            assert study.runs, (path.name, name)


@pytest.mark.parametrize("name", ["revisiting", "detcon", "d3ssl"])
def test_the_gpu_studies_rehearse_the_same_arms_evaluations_and_expectations(tmp_path, name):
    """bench/gpu_evidence.sh --rehearse runs each GPU study at its `tiny` budget: a smaller run of the same study (the
    GPU file keeps 5 seeds and the small stem)."""
    path = REPO / "studies" / f"gpu-planted-{name}.yaml"
    full, tiny = load_study(path, tmp_path / "full"), load_study(path, tmp_path / "tiny", budget="tiny")
    assert len(full.file.seeds) == 5 and all(r.spec.model.stem == "small" for r in full.runs)
    assert full.arm_names == tiny.arm_names
    assert [(e.kind, e.prefix) for e in full.file.evaluate] == [(e.kind, e.prefix) for e in tiny.file.evaluate]
    assert full.file.expect == tiny.file.expect
    assert all(r.spec.model.stem == "small" for r in tiny.runs)
