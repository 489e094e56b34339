"""Execute a study: prepare steps, random-init references, training runs and evaluations, each as a real
`python -m sslcli ... --json` subprocess, each content-addressed so a rerun (also after kill -9) redoes only what is
missing or changed.

Layout of the study folder DIR:
  study.json                 the resolved plan (arms, seeds, run hashes and specs, evaluations, expectations)
  prepare/<hash>.json        one marker per finished prepare step (its command)
  specs/<run hash>.yaml      the spec each run was started with
  runs/<run hash>/           the engine's output_dir (last.pt, metrics.jsonl, ...) and study-run.json once done
  evals/<eval hash>.json     one evaluation of one checkpoint: command, wall time, the command's JSON for it
  results.jsonl              one row per arm x seed x metric, rebuilt from the files above after every run
  environment.json           software versions and the training device
  slurm/                     --executor slurm: jobs.json (each run's job id and log) and logs/ (sslcli.study.slurm_executor)
  .sslcli.lock               held by the running `study run` (a second one on the folder is refused at once)
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import yaml

from sslcli.errors import InputError, SslcliError
from sslcli.io import write_json_atomic, write_text_atomic
from sslcli.process import FolderLock, call
from sslcli.spec import dump_spec
from sslcli.study.estimate import estimate_hours
from sslcli.study.metrics import EVAL_KINDS, flatten, per_checkpoint
from sslcli.study.slots import Slots
from sslcli.study.spec import (
    PlannedRun,
    PrepareCommand,
    Study,
    content_hash,
    prepare_commands,
    relative_to,
    shown_path,
    substitute,
    tokenise,
)

Log = Callable[[str], None]
# (kind, options) -> the command-line options of `sslcli probe|analyze KIND`; raises InputError on unknown ones.
OptionArgs = Callable[[str, dict], list[str]]

RUN_MARKER = "study-run.json"
RANDOM_INIT_CKPT = "random-init.pt"
CHECKPOINT = "last.pt"
_COUNTS_LOCK = threading.Lock()  # --jobs: counts and results.jsonl are updated from several threads


# ------------------------------------------------------------------------------------------------------- planning
def checkpoint_of(study: Study, run: PlannedRun) -> Path:
    return Path(run.spec.output_dir) / (RANDOM_INIT_CKPT if run.random_init else CHECKPOINT)


def eval_hash(study: Study, run: PlannedRun, index: int) -> str:
    ev = study.file.evaluate[index]
    return content_hash({"checkpoint": run.hash, "kind": ev.kind,
                         "options": tokenise(substitute(ev.options, str(study.out)), str(study.out))})


def eval_path(study: Study, run: PlannedRun, index: int) -> Path:
    return study.out / "evals" / f"{eval_hash(study, run, index)}.json"


def run_done(run: PlannedRun) -> bool:
    out = Path(run.spec.output_dir)
    return (out / RUN_MARKER).is_file() and (out / (RANDOM_INIT_CKPT if run.random_init else CHECKPOINT)).is_file()


def check_options(study: Study, option_args: OptionArgs) -> None:
    """Turn every evaluation's options into CLI arguments now, so a bad option fails before any training."""
    for i, ev in enumerate(study.file.evaluate):
        try:
            option_args(ev.kind, substitute(ev.options, str(study.out), study.file.seeds[0]))
        except InputError as exc:
            raise InputError(f"{study.path}: evaluate.{i}.options: {exc}") from None


def plan_summary(study: Study) -> dict:
    """What `--dry-run` shows and `study.json` records: every run with its hash, status and resolved spec."""
    runs = []
    for run in study.runs:
        spec = run.spec.model_dump(mode="json")
        runs.append({"arm": run.arm, "seed": run.seed, "hash": run.hash, "random_init": run.random_init,
                     "done": run_done(run), "method": run.spec.method.name, "output_dir": run.spec.output_dir,
                     "spec": spec})
    return {"study": study.file.name, "file": shown_path(study.path), "budget": study.budget, "out": str(study.out),
            "arms": study.arm_names, "seeds": study.file.seeds, "runs": runs,
            "min_seeds": study.file.min_seeds, "alpha": study.file.alpha,
            "prepare": study.file.prepare,
            "evaluate": [e.model_dump() for e in study.file.evaluate],
            "expect": [e.model_dump() for e in study.file.expect],
            "estimate": estimate_hours(study)}


# ------------------------------------------------------------------------------------------------------ execution
class TrainingExecutor(Protocol):
    """Where the training runs happen: `LocalExecutor` (subprocesses here) or, in sslcli.study.slurm_executor,
    one Slurm job per run. ``train`` returns once every run is trained (or raises); it returns their devices."""

    def train(self, study: Study, runs: list[PlannedRun], log: Log, verbose: bool, counts: dict) -> set[str | None]:
        ...


class LocalExecutor:
    """Every run as an `sslcli pretrain` subprocess of this process, ``jobs`` at once, each in a slot of its own
    (`sslcli.study.slots`: a device shared round-robin, cores // jobs threads)."""

    def __init__(self, gpus: int = 0, jobs: int = 1, slots: Slots | None = None):
        self.gpus = gpus
        self.slots = slots if slots is not None else Slots(jobs)

    def train(self, study: Study, runs: list[PlannedRun], log: Log, verbose: bool, counts: dict) -> set[str | None]:
        return set(self.slots.map(lambda run, env: _train(study, run, log, verbose, self.gpus, counts, env), runs))


def run_study(study: Study, option_args: OptionArgs, log: Log, gpus: int = 0, verbose: bool = False,
              jobs: int = 1, executor: TrainingExecutor | None = None) -> dict:
    """Run everything that is missing; return a summary (counts of done/skipped work and the results path).
    ``executor``: where the training runs happen (default: ``LocalExecutor(gpus, jobs)``, ``jobs`` runs at once,
    each its own subprocess and folder). Evaluations run here, after all of them. ``jobs`` also runs the per-seed
    prepare steps of different seeds and the evaluations ``jobs`` at once, in the same slots.

    The study folder is locked for the whole call: a second `study run` on it is refused at once."""
    check_options(study, option_args)
    out = study.out
    with FolderLock(out, "study folder"):
        write_json_atomic(out / "study.json", relative_to(plan_summary(study), str(out)))
        write_text_atomic(out / "study.yaml", study.path.read_text())
        counts = {"prepared": 0, "trained": 0, "evaluated": 0, "skipped": 0}
        slots = Slots(jobs)
        _prepare(study, log, verbose, counts, slots)
        for run in study.references:
            _random_init(study, run, log, counts)
        devices = (executor or LocalExecutor(gpus, slots=slots)).train(study, study.trained, log, verbose, counts)
        # One pass over every checkpoint at the end: an analysis builds its inputs once for all of them.
        _evaluate(study, study.runs, option_args, log, verbose, counts, slots)
        rows = write_results(study)
        write_json_atomic(out / "environment.json", environment(sorted(d for d in devices if d)))
        write_json_atomic(out / "provenance.json", relative_to(provenance(study), str(out)))
    return {"out": str(out), "results": str(out / "results.jsonl"), "rows": rows, **counts}


Numbered = tuple[int, PrepareCommand]  # a prepare call and its place in the study's order (for the log)


def prepare_groups(todo: list[PrepareCommand]) -> list[list[list[Numbered]]]:
    """The prepare calls as groups run one after another; a group's chains may run at once, a chain's calls in order.
    Consecutive steps that name {seed} form one group with one chain per seed (seed 1's data never waits for seed
    0's masks); a step without {seed} is a group alone, so it runs after everything before it."""
    groups: list[list[list[Numbered]]] = []
    chains: dict[int, list[Numbered]] = {}
    for numbered in enumerate(todo):
        seed = numbered[1].seed
        if seed is None:
            groups += [list(chains.values())] if chains else []
            groups.append([[numbered]])
            chains = {}
        else:
            chains.setdefault(seed, []).append(numbered)
    return groups + ([list(chains.values())] if chains else [])


def _prepare(study: Study, log: Log, verbose: bool, counts: dict, slots: Slots) -> None:
    todo = prepare_commands(study.file.prepare, study.file.seeds)
    for group in prepare_groups(todo):
        slots.map(lambda chain, env: [_prepare_one(study, i, len(todo), step, log, verbose, counts, env)
                                      for i, step in chain], group)


def _prepare_one(study: Study, i: int, total: int, step: PrepareCommand, log: Log, verbose: bool, counts: dict,
                 env: dict[str, str]) -> None:
    marker = study.out / "prepare" / step.marker
    what = step.step + ("" if step.seed is None else f"  (seed {step.seed})")
    if marker.is_file():
        log(f"[study] prepare {i + 1}/{total}: skipped (done): {what}")
        with _COUNTS_LOCK:
            counts["skipped"] += 1
        return
    args = step.args(str(study.out))
    log(f"[study] prepare {i + 1}/{total}: sslcli prepare {shlex.join(args)}")
    result, seconds, cmd = call(["prepare", *args], log, verbose, env=env)
    write_json_atomic(marker, {"step": step.step, "seed": step.seed, "command": cmd, "wall_s": round(seconds, 3),
                               "result": result})
    with _COUNTS_LOCK:
        counts["prepared"] += 1


def _write_spec(study: Study, run: PlannedRun) -> Path:
    path = study.out / "specs" / f"{run.hash}.yaml"
    write_text_atomic(path, dump_spec(run.spec))
    return path


def _random_init(study: Study, run: PlannedRun, log: Log, counts: dict) -> None:
    """The untrained reference, written in this process by the function behind `sslcli export --random-init`
    (a subprocess per seed would cost more than the tiny study's training)."""
    if run_done(run):
        log(f"[study] {run.key} ({run.hash}): skipped (done)")
        counts["skipped"] += 1
        return
    from sslcli.study.random_init import write_random_init

    spec_path = _write_spec(study, run)
    ckpt = checkpoint_of(study, run)
    log(f"[study] {run.key} ({run.hash}): writing the untrained backbone")
    start = time.perf_counter()
    result = write_random_init(run.spec, ckpt)
    cmd = f"sslcli export --random-init {shlex.quote(str(spec_path))} --out {shlex.quote(str(ckpt))}"
    write_json_atomic(Path(run.spec.output_dir) / RUN_MARKER,
                      {"arm": run.arm, "seed": run.seed, "hash": run.hash, "command": cmd + "  # run in-process: the function behind this command",
                       "wall_s": round(time.perf_counter() - start, 3), "result": result})
    counts["trained"] += 1


def _train(study: Study, run: PlannedRun, log: Log, verbose: bool, gpus: int, counts: dict,
           env: dict[str, str] | None = None) -> str | None:
    out = Path(run.spec.output_dir)
    marker = out / RUN_MARKER
    if run_done(run):
        log(f"[study] {run.key} ({run.hash}): skipped (done)")
        with _COUNTS_LOCK:  # --jobs: several _train calls at once
            counts["skipped"] += 1
        return json.loads(marker.read_text()).get("result", {}).get("device")
    spec_path = _write_spec(study, run)
    resuming = (out / CHECKPOINT).is_file()
    finished = _finished_steps(run) if resuming else None
    if finished is not None:  # killed after the last checkpoint but before the marker: nothing left to train
        log(f"[study] {run.key} ({run.hash}): training had finished ({finished} steps); recording it")
        result, seconds, cmd = {"steps": finished, "checkpoint": str(out / CHECKPOINT), "recovered": True}, 0.0, ""
    else:
        log(f"[study] {run.key} ({run.hash}): {'resuming' if resuming else 'training'} "
            f"({run.spec.method.name}, {run.spec.max_steps or run.spec.epochs} "
            f"{'steps' if run.spec.max_steps else 'epochs'})")
        args = ["pretrain", str(spec_path), "--resume", "auto"] + (["--gpus", str(gpus)] if gpus else [])
        result, seconds, cmd = call(args, log, verbose, env=env)
    record_run(run_identity(run), marker, result, seconds, cmd, resuming)
    with _COUNTS_LOCK:
        counts["trained"] += 1
    return result.get("device")


def run_identity(run: PlannedRun) -> dict:
    return {"arm": run.arm, "seed": run.seed, "hash": run.hash}


def record_run(identity: dict, marker: Path, result: dict, seconds: float, cmd: str, resumed: bool,
               **extra) -> None:
    """The run's marker (RUN_MARKER): written last, once its checkpoint is complete; the run is done from then on."""
    write_json_atomic(marker, {**identity, "command": cmd, "wall_s": round(seconds, 3), "resumed": resumed,
                               **extra, "result": result})


def _finished_steps(run: PlannedRun) -> int | None:
    """The step count of last.pt when it already holds the whole run, else None (then `--resume auto` continues)."""
    import torch  # only on this rare path: the study process itself stays light

    state = torch.load(Path(run.spec.output_dir) / CHECKPOINT, map_location="cpu", weights_only=True)
    return int(state["step"]) if state["step"] >= run.spec.stop_step(state["steps_per_epoch"]) else None


def _evaluate(study: Study, runs: list[PlannedRun], option_args: OptionArgs, log: Log, verbose: bool,
              counts: dict, slots: Slots) -> None:
    """Every missing evaluation of every checkpoint, ``slots.jobs`` commands at once."""
    tasks = []
    for index, ev in enumerate(study.file.evaluate):
        pending = []
        for run in runs:
            if eval_path(study, run, index).is_file():
                counts["skipped"] += 1
                log(f"[study] {ev.prefix} on {run.key}: skipped (done)")
            else:
                pending.append(run)
        tasks += [(index, batch) for batch in _eval_batches(study, ev, pending)]
    slots.map(lambda task, env: _evaluate_batch(study, *task, option_args, log, verbose, counts, env), tasks)
    for index in range(len(study.file.evaluate) if runs else 0):  # also when every evaluation was done before
        _check_evaluation_names(study, runs[0], index)


def _check_evaluation_names(study: Study, run: PlannedRun, index: int) -> None:
    """The metric names are known once one checkpoint is evaluated: an expectation naming another one is an error
    in the study file."""
    prefix = study.file.evaluate[index].prefix
    names = set(flatten(json.loads(eval_path(study, run, index).read_text())["result"], prefix))
    _check_metric_names(study, prefix, names)


def _eval_batches(study: Study, ev, pending: list[PlannedRun]) -> list[list[PlannedRun]]:
    """Probes take one checkpoint a call; an analysis takes every checkpoint whose options resolve alike (its
    inputs are built once), so per-seed data ({seed} in the options) gives one call per seed."""
    if EVAL_KINDS[ev.kind] != "analyze":
        return [[r] for r in pending]
    groups: dict[str, list[PlannedRun]] = {}
    for run in pending:
        key = json.dumps(substitute(ev.options, str(study.out), run.seed), sort_keys=True)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def _evaluate_batch(study: Study, index: int, batch: list[PlannedRun], option_args: OptionArgs, log: Log,
                    verbose: bool, counts: dict, env: dict[str, str] | None = None) -> None:
    ev = study.file.evaluate[index]
    group = EVAL_KINDS[ev.kind]
    ckpts = [str(checkpoint_of(study, r)) for r in batch]
    args = [group, ev.kind, *ckpts, *option_args(ev.kind, substitute(ev.options, str(study.out), batch[0].seed))]
    if group == "analyze":
        args += ["--out", str(study.out / "evals" / "analyses" / f"{ev.kind}-{content_hash(ckpts, 8)}")]
    elif ev.kind in ("knn", "linear", "segment-retrieval") and not {"cache", "no-cache"} & set(ev.options):
        args += ["--cache", str(study.out / "cache")]
    log(f"[study] {ev.prefix} on {', '.join(r.key for r in batch)}")
    result, seconds, cmd = call(args, log, verbose, env=env)
    try:
        parts = per_checkpoint(ev.kind, result, len(batch))
    except ValueError as exc:
        raise SslcliError(f"{cmd}: {exc}") from None
    for run, part in zip(batch, parts):
        write_json_atomic(eval_path(study, run, index),
                          {"kind": ev.kind, "options": ev.options, "run": run.hash, "arm": run.arm,
                           "seed": run.seed, "command": cmd, "wall_s": round(seconds / len(batch), 3),
                           "result": part})
    with _COUNTS_LOCK:
        counts["evaluated"] += len(batch)
        write_results(study)  # results.jsonl always reflects every finished evaluation
    _check_evaluation_names(study, batch[0], index)  # at once: a wrong name stops the study before the rest


def _check_metric_names(study: Study, prefix: str, names: set[str]) -> None:
    for i, exp in enumerate(study.file.expect):
        if exp.metric.split(".", 1)[0] == prefix and exp.metric not in names:
            shown_names = ", ".join(sorted(names)[:12]) + (" ..." if len(names) > 12 else "")
            raise InputError(f"{study.path}: expect.{i}.metric: {exp.metric!r} is not among the metrics "
                             f"{prefix} yielded ({shown_names})")


# --------------------------------------------------------------------------------------------------------- results
def result_rows(study: Study) -> list[dict]:
    """One row per arm x seed x metric, in plan order (arms, seeds, evaluations, sorted metric names)."""
    rows = []
    for run in study.runs:
        marker = Path(run.spec.output_dir) / RUN_MARKER
        train_wall = json.loads(marker.read_text()).get("wall_s") if marker.is_file() else None
        for index, ev in enumerate(study.file.evaluate):
            path = eval_path(study, run, index)
            if not path.is_file():
                continue
            record = json.loads(path.read_text())
            metrics = flatten(record["result"], ev.prefix)
            for name in sorted(metrics):
                value = metrics[name]
                rows.append({"study": study.file.name, "arm": run.arm, "seed": run.seed, "metric": name,
                             "value": None if math.isnan(value) else value, "spec_hash": run.hash,
                             "eval_hash": path.stem, "train_wall_s": train_wall, "eval_wall_s": record.get("wall_s")})
    return rows


def provenance(study: Study) -> dict:
    """What the report needs from the run folders, kept in the study folder itself: every command the study ran, in
    order, and each trained run's loss curve (so the report regenerates from the study folder alone)."""
    return {"commands": commands(study), "losses": loss_curves(study)}


def commands(study: Study) -> list[str]:
    """Prepare steps, runs, then evaluations (each distinct command once), from their record files."""
    cmds = []
    for step in prepare_commands(study.file.prepare, study.file.seeds):
        marker = study.out / "prepare" / step.marker
        if marker.is_file():
            cmds.append(json.loads(marker.read_text())["command"])
    for run in study.runs:
        marker = Path(run.spec.output_dir) / RUN_MARKER
        if marker.is_file() and json.loads(marker.read_text()).get("command"):
            cmds.append(json.loads(marker.read_text())["command"])
    seen = set()
    for path in sorted((study.out / "evals").glob("*.json")):
        cmd = json.loads(path.read_text()).get("command")
        if cmd and cmd not in seen:
            seen.add(cmd)
            cmds.append(cmd)
    return cmds


def loss_curves(study: Study) -> list[dict]:
    """[{"arm", "seed", "steps", "losses"}] per trained run, from its metrics.jsonl step records."""
    curves = []
    for run in study.trained:
        path = Path(run.spec.output_dir) / "metrics.jsonl"
        if not path.is_file():
            continue
        steps, losses = [], []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("type") == "step" and isinstance(rec.get("loss"), (int, float)):
                steps.append(rec["step"])
                losses.append(float(rec["loss"]))
        curves.append({"arm": run.arm, "seed": run.seed, "steps": steps, "losses": losses})
    return curves


def write_results(study: Study) -> int:
    rows = result_rows(study)
    write_text_atomic(study.out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def environment(devices: list[str]) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import sslcli

    def v(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    # CPU float sums depend on the thread count: identical results need the same OMP_NUM_THREADS.
    return {"python": platform.python_version(), "platform": platform.platform(), "sslcli": sslcli.__version__,
            "torch": v("torch"), "torchvision": v("torchvision"), "numpy": v("numpy"), "devices": devices,
            "cpu_count": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def dump_plan_yaml(study: Study) -> str:
    return yaml.safe_dump(plan_summary(study), sort_keys=False)
