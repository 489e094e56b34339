"""`study run --executor slurm`, `study status` and `prepare --executor slurm` against a real one-node Slurm cluster
(munged, slurmctld, slurmd: .ci/slurm-up.sh), plus the option parsing and the local study's process hygiene.

The cluster tests skip only where no cluster can be started (not root, no Debian packages); CI exports
SSLCLI_REQUIRE_SLURM=1 and they fail there instead."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from sslcli.errors import InputError
from sslcli.slurm import CommandJob, expand_ids, options_from, parse_time, rank_args, sbatch_option
from sslcli.study.spec import content_hash

REPO = Path(__file__).resolve().parents[1]
UP_STATES = {"idle", "mix", "mixed", "alloc", "allocated", "comp", "completing"}

BASE = {"spec_version": 1, "name": "s",
        "data": {"root": "{out}/data", "format": "coco", "image_size": 32, "workers": 0, "pin_memory": False},
        "model": {"arch": "resnet18", "width": 8},
        "method": {"name": "moco", "queue_size": 64, "dim": 32, "hidden_dim": 64, "temperature": 0.2},
        "optimizer": {"name": "sgd", "base_lr": 0.3, "weight_decay": 1.0e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0},
        "batch_size": 16, "epochs": 2, "max_steps": 4, "checkpoint_every": 1, "logging": {"every_steps": 1}}


def _study(tmp_path: Path, name: str = "sl", **changes) -> Path:
    study = {"name": name, "prepare": ["synthetic {out}/data --preset planted --images 48 --size 64 --force"],
             "base": BASE, "arms": {"moco": {}, "t01": {"method.temperature": 0.1}}, "seeds": [0, 1],
             "evaluate": [{"kind": "coupling", "options": {"data": "{out}/data", "pairs": 4, "cell": 32,
                                                          "min-size": 8, "batch-size": 16}}],
             "executor": {"kind": "slurm", "poll_s": 0.5, "time": "15"}}
    study.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _sslcli(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sslcli", *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=timeout)


def _popen(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sslcli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True)


def _values(out: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [(r["arm"], r["seed"], r["metric"], r["value"], r["spec_hash"]) for r in rows]


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended before {what}: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _squeue(*args: str) -> list[str]:
    return subprocess.run(["squeue", "-h", "-t", "all", *args], capture_output=True, text=True,
                          check=True).stdout.split()


def _cluster_up() -> bool:
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and any(s.rstrip("*~#") in UP_STATES for s in proc.stdout.split())


def _cluster_idle() -> bool:
    return subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True).stdout.split() == ["idle"]


@pytest.fixture(scope="module")
def slurm():
    """A responding Slurm cluster: the one running, or one .ci/slurm-up.sh starts (as root)."""
    if _cluster_up():
        return
    if os.geteuid() == 0:
        subprocess.run([str(REPO / ".ci" / "slurm-up.sh")], capture_output=True, text=True, timeout=900)
    if _cluster_up():
        return
    reason = ("no Slurm cluster: sinfo shows no responding node and .ci/slurm-up.sh could not start one (it needs "
              "root and Debian's slurm-wlm and munge packages)")
    if os.environ.get("SSLCLI_REQUIRE_SLURM") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------- options, no Slurm
@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30", 2), ("02:00:00", 120), ("1-00", 1440),
                                           ("1-02:30", 1590), ("0-00:00:30", 1)])
def test_slurm_time_formats(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("bad", ["", "1h", "0", "1:2:3:4", "-5"])
def test_bad_slurm_time_is_refused(bad):
    with pytest.raises(ValueError):
        parse_time(bad)


def test_sbatch_lines_become_submitit_parameters():
    assert sbatch_option("--qos=high") == ("qos", "high")
    assert sbatch_option("#SBATCH --constraint volta32gb") == ("constraint", "volta32gb")
    assert sbatch_option("--exclusive") == ("exclusive", True)
    with pytest.raises(ValueError, match="long sbatch option"):
        sbatch_option("-p gpu")


def test_pending_array_ids_expand():
    assert expand_ids("12_[0-2,5%4]") == ["12_0", "12_1", "12_2", "12_5"]
    assert expand_ids("12_3") == ["12_3"] and expand_ids("7") == ["7"]


def test_rank_args_from_slurms_environment():
    assert rank_args(0, 1, 0, ["a"], "5") == []
    assert rank_args(4, 1, 0, ["a"], "5") == ["--gpus", "4"]
    assert rank_args(8, 2, 1, ["gpu-01", "gpu-02"], "123") == [
        "--gpus", "8", "--nodes", "2", "--node-rank", "1", "--master-addr", "gpu-01", "--master-port", "20123"]


@pytest.mark.parametrize("flags, needle", [({"time": "1h"}, "time"), ({"mem": "lots"}, "mem"),
                                           ({"nodes": 0}, "nodes"), ({"sbatch": ["qos"]}, "sbatch"),
                                           ({"gpu": 1}, "unknown option")])
def test_bad_slurm_option_is_one_line(flags, needle):
    with pytest.raises(InputError, match=needle) as info:
        options_from({}, flags, "slurm options")
    assert "\n" not in str(info.value)


def test_command_job_pickles_without_its_process():
    job = CommandJob(["pretrain", "x.yaml"])
    job._proc = subprocess.Popen(["true"])
    job._proc.wait()
    again = pickle.loads(pickle.dumps(job))
    assert again.args == ["pretrain", "x.yaml"] and again._proc is None


def test_slurm_flags_without_slurm_executor_are_refused(tmp_path):
    path = _study(tmp_path, executor={"kind": "local"})
    proc = _sslcli("study", "run", path, "--out", tmp_path / "o", "--partition", "gpu", "--json")
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["error"] == "--partition: Slurm options need --executor slurm"
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ local executor: issue 26 item 6
def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_killed_local_study_takes_its_training_along_and_locks_its_folder(tmp_path):
    # Quiet (no log line for a long time): a child that writes to its dead parent's pipe dies of that anyway.
    quiet = {"max_steps": 100000, "epochs": 40000, "logging.every_steps": 100000, "checkpoint_every": 100000}
    path = _study(tmp_path, arms={"moco": quiet}, seeds=[0], evaluate=[])
    out = tmp_path / "out"
    first = _popen("study", "run", path, "--out", out, "--executor", "local")
    try:
        _wait_for(lambda: any("pretrain" in Path(f"/proc/{c}/cmdline").read_text() for c in _children(first.pid)),
                  300, "the pretrain child started", first)
        child = next(c for c in _children(first.pid) if "pretrain" in Path(f"/proc/{c}/cmdline").read_text())
        # A second run on the same folder is refused at once, in one line, exit 2.
        second = _sslcli("study", "run", path, "--out", out, "--executor", "local", "--json", timeout=60)
        assert second.returncode == 2, second.stderr
        error = json.loads(second.stdout)["error"]
        assert error.startswith(f"study folder {out}: another run (pid {first.pid})"), error
        os.kill(first.pid, signal.SIGKILL)  # the study process only, not its group
        first.wait()
        _wait_for(lambda: not _alive(child), 3, "the pretrain child died with the study")
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        if "child" in locals() and _alive(child):
            os.kill(child, signal.SIGKILL)


# -------------------------------------------------------------------------------------------- the real cluster
def test_bad_partition_is_refused_before_anything_is_submitted(slurm, tmp_path):
    path = _study(tmp_path)
    out = tmp_path / "out"
    proc = _sslcli("study", "run", path, "--out", out, "--partition", "nosuch", "--json")
    assert proc.returncode == 2, proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert "partition" in error and "nosuch" in error and "\n" not in error, error
    assert proc.stderr.count("\n") == 1
    assert not (out / "slurm" / "jobs.json").exists() and not (out / "data").exists()  # nothing prepared either
    assert not [n for n in _squeue("-o", "%j") if n.endswith(content_hash(str(out), 8))]


def test_slurm_study_equals_local_survives_kill_9_and_reattaches(slurm, tmp_path):
    path = _study(tmp_path)
    local = _sslcli("study", "run", path, "--out", tmp_path / "local", "--executor", "local")
    assert local.returncode == 0, local.stderr[-2000:]

    out = tmp_path / "slurm"
    jobs_file = out / "slurm" / "jobs.json"
    first = _popen("study", "run", path, "--out", out)
    try:
        def submitted_and_running() -> bool:
            jobs = json.loads(jobs_file.read_text()) if jobs_file.is_file() else {}
            return len(jobs) == 4 and any(s == "RUNNING" for s in _squeue("-o", "%T", "-j",
                                                                          ",".join(j["job_id"] for j in jobs.values())))
        _wait_for(submitted_and_running, 300, "all four jobs submitted and one running", first)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    jobs = json.loads(jobs_file.read_text())
    status = _sslcli("study", "status", out, "--json")
    assert status.returncode == 0, status.stderr
    states = {r["job_id"]: r["state"] for r in json.loads(status.stdout)["runs"]}
    assert {j["job_id"] for j in jobs.values()} <= set(states)
    assert set(states.values()) <= {"queued", "running", "done"} and "running" in states.values() or \
        set(states.values()) == {"done"}
    done_before = {h: (out / "runs" / h / "study-run.json").stat().st_mtime_ns
                   for h in jobs if (out / "runs" / h / "study-run.json").is_file()}

    rerun = _sslcli("study", "run", path, "--out", out)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "submitted as Slurm job" not in rerun.stderr
    assert len(re.findall(r"seed \d \(\w+\): (?:attached to Slurm job|skipped \(done\))", rerun.stderr)) == 4
    assert json.loads(jobs_file.read_text()) == jobs  # the same jobs: none submitted twice
    names = [n for n in _squeue("-o", "%j") if n.endswith(content_hash(str(out), 8))]
    assert len(names) == len(set(names)) == 4
    for run_hash, job in jobs.items():  # each run trained once, by its one job
        marker = json.loads((out / "runs" / run_hash / "study-run.json").read_text())
        assert marker["slurm_job"] == job["job_id"]
    for run_hash, mtime in done_before.items():
        assert (out / "runs" / run_hash / "study-run.json").stat().st_mtime_ns == mtime
    assert _values(out) == _values(tmp_path / "local")  # same metric values and spec hashes as --executor local
    final = json.loads(_sslcli("study", "status", out, "--json").stdout)
    assert final["totals"]["done"] == 4


def test_failed_job_is_reported_with_its_log(slurm, tmp_path):
    path = _study(tmp_path, prepare=[], arms={"broken": {"data.root": str(tmp_path / "no-such-data")}}, seeds=[0],
                  evaluate=[])
    out = tmp_path / "out"
    proc = _sslcli("study", "run", path, "--out", out, "--json")
    assert proc.returncode == 1, proc.stderr
    error = json.loads(proc.stdout)["error"]
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    (job,) = jobs.values()
    assert f"broken seed 0 ({next(iter(jobs))}): job {job['job_id']}, log {job['log']}" in error
    assert "no-such-data" in Path(job["log"]).read_text()  # the log holds the command's own error line
    status = json.loads(_sslcli("study", "status", out, "--json").stdout)
    assert [(r["state"], r["log"]) for r in status["runs"]] == [("failed", job["log"])]
    human = _sslcli("study", "status", out)
    assert "failed" in human.stdout and job["log"] in human.stdout


def test_usr1_mid_epoch_checkpoints_requeues_and_finishes_bit_identical(slurm, tmp_path):
    long = {"max_steps": 40, "epochs": 10, "batch_size": 4}  # 96 images / 4: 24 steps an epoch
    path = _study(tmp_path, prepare=["synthetic {out}/data --preset planted --images 96 --size 64 --force"],
                  arms={"moco": long}, seeds=[0], evaluate=[])
    out = tmp_path / "out"
    proc = _popen("study", "run", path, "--out", out)
    try:
        jobs_file = out / "slurm" / "jobs.json"
        _wait_for(jobs_file.is_file, 300, "the job submitted", proc)
        (run_hash, job), = json.loads(jobs_file.read_text()).items()
        metrics = out / "runs" / run_hash / "metrics.jsonl"
        _wait_for(lambda: metrics.is_file() and metrics.read_text().count('"step"') >= 3, 300,
                  "three steps trained", proc)
        subprocess.run(["scancel", "--signal=USR1", job["job_id"]], check=True)
        submitit_log = Path(job["log"]).with_suffix(".out")
        _wait_for(lambda: "Requeued job" in submitit_log.read_text(), 120, "the job requeued", proc)
        # Slurm holds a requeued job back for two minutes (its begin time); the test need not wait for that, only
        # for the node to have cleaned up the first attempt and for slurmd's revocation of that attempt's
        # credential (whole seconds) to lie in the past.
        _wait_for(lambda: _squeue("-o", "%T", "-j", job["job_id"]) == ["PENDING"] and _cluster_idle(), 120,
                  "the job pending on an idle node", proc)
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"JobId={job['job_id']}", "StartTime=now"], check=True)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-2000:]
    log = submitit_log.read_text()  # submitit's own lines: the signal, the checkpoint, the requeue, the restart
    assert "Caught signal SIGUSR1" in log and "Calling checkpoint method" in log
    assert log.count("Starting with JobEnvironment") == 2 and "Job completed successfully" in log
    # The command's progress lines, attempt by attempt (each starts with its "threads:" line): the requeued attempt
    # starts where the signalled one stopped, at most one step (the one in flight) redone.
    attempts = re.split(r"\n\s*threads: ", Path(job["log"]).read_text())[1:]
    assert len(attempts) == 2
    first, second = ([int(n) for n in re.findall(r"step (\d+)/40", a)] for a in attempts)
    assert first and second and second[0] >= first[-1], (first, second)
    steps = [json.loads(line) for line in metrics.read_text().splitlines() if '"step"' in line]
    losses = {s["step"]: s["loss"] for s in steps}  # the last value of each step: the resumed run's
    # The same spec trained here without interruption.
    spec = yaml.safe_load((out / "specs" / f"{run_hash}.yaml").read_text())
    spec["output_dir"] = str(tmp_path / "plain")
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(spec))
    plain = _sslcli("pretrain", tmp_path / "plain.yaml", "--json")
    assert plain.returncode == 0, plain.stderr[-2000:]
    want = {json.loads(line)["step"]: json.loads(line)["loss"]
            for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines() if '"step"' in line}
    assert losses == want and len(want) == 40


def _store_arrays(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        arrays = {}
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
    return {"arrays": arrays, "attrs": attrs}


def test_sharded_prepare_boxes_through_slurm_equals_the_unsharded_store(slurm, tmp_path):
    data = tmp_path / "data"
    made = _sslcli("prepare", "synthetic", data, "--images", "12", "--size", "64")
    assert made.returncode == 0, made.stderr
    whole = _sslcli("prepare", "boxes", data, "--out", tmp_path / "whole.h5", "--json")
    assert whole.returncode == 0, whole.stderr
    args = ["prepare", "boxes", data, "--out", tmp_path / "sharded.h5", "--executor", "slurm", "--shards", "3",
            "--time", "10", "--json"]
    sharded = _sslcli(*args)
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    result = json.loads(sharded.stdout)
    assert result["status"] == "merged" and result["parts"] == 3
    book = json.loads((tmp_path / "sharded.h5.slurm.json").read_text())
    assert sorted(book) == ["0/3", "1/3", "2/3"]
    a, b = _store_arrays(tmp_path / "whole.h5"), _store_arrays(tmp_path / "sharded.h5")
    assert a["attrs"] == b["attrs"] and a["arrays"].keys() == b["arrays"].keys()
    for name, value in a["arrays"].items():
        assert np.array_equal(value, b["arrays"][name]), name
    again = _sslcli(*args)  # a rerun finds the store made: nothing submitted
    assert again.returncode == 2 and "exists" in again.stderr
    assert json.loads((tmp_path / "sharded.h5.slurm.json").read_text()) == book
