"""`sslcli study run|report`: compare arms (spec overrides) over seeds, evaluate, and test the papers' orderings.

The work happens in `sslcli.study`; this module wires it to the CLI: it turns an evaluation's options mapping into
the options of the real `sslcli probe|analyze KIND` command (checked against that command's parameters, so a
typo fails before any training) and prints progress through the command's output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sslcli.cli import render
from sslcli.cli.apps import study_app
from sslcli.cli.common import command, current
from sslcli.errors import InputError

SLURM = "Slurm (--executor slurm; docs/slurm.md)"
# Options the study sets itself on every evaluation command.
RESERVED = {"out", "json", "quiet", "debug", "help"}


def _click_command(kind: str):
    """The click command typer builds for `sslcli probe|analyze KIND` (its parameters are the truth)."""
    import typer.main

    from sslcli.cli.apps import analyze_app, probe_app
    from sslcli.study.metrics import EVAL_KINDS

    group = typer.main.get_command(probe_app if EVAL_KINDS[kind] == "probe" else analyze_app)
    return group.commands[kind]  # type: ignore[attr-defined]


def option_args(kind: str, options: dict[str, Any]) -> list[str]:
    """``{"max-images": 100, "disturbed": true}`` -> ``["--max-images", "100", "--disturbed"]`` for `KIND`'s
    command; bool options use the command's own on/off flags (e.g. --masked/--box)."""
    cmd = _click_command(kind)
    by_flag = {}
    for param in cmd.params:
        if param.param_type_name == "option":
            for flag in [*param.opts, *param.secondary_opts]:
                by_flag[flag] = param
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if str(key) in RESERVED:
            raise InputError(f"{key}: set by the study itself; remove it")
        param = by_flag.get(flag)
        if param is None:
            known = sorted(f[2:] for f in by_flag if f.startswith("--") and f[2:] not in RESERVED)
            raise InputError(f"{key}: not an option of `sslcli {_group(kind)} {kind}` (options: {', '.join(known)})")
        if param.is_flag:
            if not isinstance(value, bool):
                raise InputError(f"{key}: {value!r} is not true or false")
            if value:
                args.append(param.opts[0])
            elif param.secondary_opts:
                args.append(param.secondary_opts[0])
            elif param.default not in (False, None):
                raise InputError(f"{key}: cannot be switched off")
        elif isinstance(value, (dict, list)) or value is None:
            raise InputError(f"{key}: expected a single value, found {value!r}")
        else:
            args += [param.opts[0], str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def _group(kind: str) -> str:
    from sslcli.study.metrics import EVAL_KINDS

    return EVAL_KINDS[kind]


@command(study_app, "run", human=render.study_run)
def study_run(
    study_file: Path = typer.Argument(..., metavar="STUDY.yaml", help="Study file (see studies/, docs/study.md)."),
    out: Path = typer.Option(None, "--out", help="Study folder (default: studies-out/<study name>)."),
    gpus: int = typer.Option(0, "--gpus", min=0, help="Passed to every `sslcli pretrain` (processes per run)."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Commands at once (training runs; also per-seed prepare "
                             "steps and evaluations), each with cores / jobs threads and one of the visible GPUs "
                             "round-robin (N runs share one GPU); not with --gpus."),
    budget: str = typer.Option(None, "--budget", help="Run the study at one of its named sizes (the file's "
                               "budgets section, e.g. tiny); default out: studies-out/<name>-<budget>."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate; list the runs, their spec hashes and the "
                                                          "estimated GPU- and CPU-hours; run nothing."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Forward every command's log lines."),
    executor: str = typer.Option(None, "--executor", help="local (subprocesses here) | slurm (one Slurm job per "
                                 "run, submitit; default: the study file's executor.kind, else local)."),
    partition: str = typer.Option(None, "--partition", help="slurm: sbatch --partition.", rich_help_panel=SLURM),
    account: str = typer.Option(None, "--account", help="slurm: sbatch --account.", rich_help_panel=SLURM),
    time_limit: str = typer.Option(None, "--time", help="slurm: sbatch --time per job (minutes, HH:MM:SS, "
                                   "D-HH:MM:SS; default 24:00:00).", rich_help_panel=SLURM),
    gpus_per_node: int = typer.Option(None, "--gpus-per-node", min=0, help="slurm: GPUs (training processes) per "
                                      "node.", rich_help_panel=SLURM),
    nodes: int = typer.Option(None, "--nodes", min=1, help="slurm: nodes per run (multi-node torch.distributed).",
                              rich_help_panel=SLURM),
    cpus_per_task: int = typer.Option(None, "--cpus-per-task", min=1, help="slurm: CPUs per node.",
                                      rich_help_panel=SLURM),
    mem: str = typer.Option(None, "--mem", help="slurm: memory per node, e.g. 64G.", rich_help_panel=SLURM),
    sbatch: list[str] = typer.Option(None, "--sbatch", help="slurm: an extra sbatch option, e.g. --sbatch=--qos=high "
                                     "(repeatable).", rich_help_panel=SLURM),
):
    """Run a study: every arm x seed trained, every evaluation run, results.jsonl and the report written.

    Each run and evaluation is a real `sslcli pretrain|probe|analyze ... --json` subprocess (with --executor slurm
    each training is a Slurm job), content-addressed in the study folder: a rerun (also after a kill) redoes only
    what is missing or changed, and re-attaches to Slurm jobs still queued or running.

    Example: sslcli study run studies/tiny.yaml --out tiny-study
    Example: sslcli study run studies/gpu-planted-detcon.yaml --budget tiny --jobs 2
    """
    from sslcli.study.runner import check_options, plan_summary, run_study
    from sslcli.study.spec import load_study

    out_ctx = current()
    _check_jobs(jobs, gpus)
    flags = {"partition": partition, "account": account, "time": time_limit, "gpus_per_node": gpus_per_node,
             "nodes": nodes, "cpus_per_task": cpus_per_task, "mem": mem, "sbatch": sbatch}
    kind, options = _executor_choice(study_file, executor, flags)
    world = max(gpus, 1) if kind == "local" else max(options.gpus_per_node, 1) * options.nodes
    study = load_study(study_file, out, world_size=world, budget=budget)
    check_options(study, option_args)
    if dry_run:
        return _dry_run(plan_summary(study), out_ctx.json)
    summary = run_study(study, option_args, out_ctx.info, gpus=gpus, verbose=verbose, jobs=jobs,
                        executor=_slurm_executor(study, options) if kind == "slurm" else None)
    from sslcli.study.report import write_report

    summary["report"] = write_report(study.out)
    out_ctx.info(f"[study] report: {summary['report']['html']}")
    return summary


def _check_jobs(jobs: int, gpus: int) -> None:
    if jobs > 1 and gpus:
        raise InputError(f"--jobs {jobs} with --gpus {gpus}: --jobs shares the visible GPUs between one-device runs, "
                         "--gpus gives every run several; use one of them")


def _dry_run(plan: dict, as_json: bool) -> dict | None:
    """--dry-run: the plan as JSON, or printed."""
    if as_json:
        return {"valid": True, **plan}
    _print_plan(plan)
    return None


def _executor_choice(study_file: Path, executor: str | None, flags: dict):
    """(local | slurm, the Slurm options) from the flags over the study file's executor section; one-line errors."""
    from sslcli.slurm import options_from
    from sslcli.study.spec import read_yaml

    raw = read_yaml(study_file, "study file")
    section = raw.get("executor") if isinstance(raw, dict) and isinstance(raw.get("executor"), dict) else {}
    kind = executor or section.get("kind", "local")
    if kind not in ("local", "slurm"):
        raise InputError(f"--executor {kind!r}: expected local or slurm")
    given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v not in (None, [], ())]
    if kind == "local" and given:
        raise InputError(f"{', '.join(given)}: Slurm options need --executor slurm")
    section = {k: v for k, v in section.items() if k != "kind"}
    return kind, options_from(section, flags, f"{study_file}: executor" if not given else "slurm options")


def _slurm_executor(study, options):
    """The Slurm executor, its job script already accepted by `sbatch --test-only` (before anything runs)."""
    from sslcli.study.slurm_executor import SlurmExecutor

    executor = SlurmExecutor(options)
    executor.check(study)
    return executor


def _print_plan(plan: dict) -> None:
    est = plan["estimate"]
    print(f"study {plan['study']} ({plan['file']}): {len(plan['runs'])} runs -> {plan['out']}")
    for run in plan["runs"]:
        key = f"{run['arm']} seed {run['seed']}"
        extra = "untrained reference" if run["random_init"] else (
            f"{run['method']}, {run['spec']['epochs']} epochs, batch {run['spec']['batch_size']}, "
            f"{_hours(est['per_run'].get(key), 'GPU')}, {_hours(est['cpu_per_run'].get(key), 'CPU')} (1 core)")
        print(f"  {run['arm']:<24} seed {run['seed']:<4} {run['hash']}  {'done' if run['done'] else 'to do':<6} "
              f"{extra}")
    print(f"evaluations: {', '.join(e['name'] or e['kind'] for e in plan['evaluate']) or 'none'}; "
          f"expectations: {len(plan['expect'])}")
    for total, device, assumption in ((est["gpu_hours"], "GPU", est["assumption"]),
                                      (est["cpu_hours"], "CPU", est["cpu_assumption"])):
        print(f"estimated {device} time, all runs: {_hours(total, device)} ({assumption})")
    if est["note"]:
        print(f"  {est['note']}: {', '.join(est['unknown'])}")
    if est["cpu_unknown"]:
        print(f"  no measured CPU rate for the method of: {', '.join(est['cpu_unknown'])}")
    print("resolved specs: sslcli study run ... --dry-run --json prints each run's full spec")


def _hours(hours: float | None, device: str) -> str:
    """``~1.2 GPU-h``; under 6 minutes in minutes or seconds (a tiny study's runs are seconds, not 0.0 hours)."""
    if hours is None:
        return f"{device}-time unknown"
    if hours >= 0.1:
        return f"~{hours:,.1f} {device}-h" if hours < 100 else f"~{hours:,.0f} {device}-h"
    if hours * 60 >= 1:
        return f"~{hours * 60:.0f} {device}-min"
    return f"~{hours * 3600:.0f} {device}-s" if hours * 3600 >= 1 else f"<1 {device}-s"


@command(study_app, "report", human=render.study_report)
def study_report(
    folder: Path = typer.Argument(..., metavar="DIR", help="A study folder written by `sslcli study run`."),
):
    """Write DIR/report.md and DIR/report.html (tables, expectation verdicts, PNG plots, commands, versions).

    Example: sslcli study report tiny-study
    """
    from sslcli.study.report import write_report

    if not (folder / "study.json").is_file():
        raise InputError(f"{folder}: not a study folder (no study.json; run `sslcli study run` first)")
    return write_report(folder)


@command(study_app, "status")
def study_status(
    folder: Path = typer.Argument(..., metavar="DIR", help="A study folder written by `sslcli study run`."),
):
    """Each run's state: done, queued, running (Slurm jobs), failed (with the job's log), or to do.

    Example: sslcli study status studies-out/detcon
    """
    from sslcli.study.slurm_executor import study_status as status

    result = status(folder)
    out = current()
    if out.json:
        return result
    print(f"study {result['study']} ({result['out']}): "
          + ", ".join(f"{n} {s}" for s, n in result["totals"].items() if n))
    for run in result["runs"]:
        job = f"job {run['job_id']}" if run["job_id"] else ""
        log = f"  log: {run['log']}" if run.get("log") else ""
        print(f"  {run['arm']:<24} seed {run['seed']:<4} {run['hash']}  {run['state']:<8} {job}{log}")
    return None
