"""Aggregate training img/s of `sslcli study run --jobs N` for several N: N runs sharing the machine's device(s).

For each N, one study of N copies of a study file's first arm (seeds 0..N-1, all on the same prepared data, no
evaluation, every step logged with its time) runs through the real CLI, `sslcli study run --jobs N`, so the runs get
their devices and threads from the same slots a study does (round-robin CUDA_VISIBLE_DEVICES, cores // N threads).
The aggregate img/s is the machine's rate while all N train at once: the images of the steps that ended inside the
window in which every run was past its first step and none had finished, divided by the window's length (from the
runs' metrics.jsonl). Runs that do not overlap (too few steps for their start-ups) give no figure. The wall figure
(N x steps x batch / the study's whole wall time, start-up included) is printed beside it.

    python bench/jobs_throughput.py studies/gpu-planted-revisiting.yaml --jobs 1,4,8 --steps 40 --out OUT
    python bench/jobs_throughput.py studies/gpu-planted-revisiting.yaml --budget tiny --jobs 1,2 --steps 2 --out OUT

One line per N: ``jobs N: aggregate X img/s (sum of N runs' own img/s; ...)``; the last line compares N = 1 with the
largest N.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sslcli.study.spec import apply_budget, prepare_commands, read_yaml, substitute  # noqa: E402


def sslcli(args: list[str]) -> dict:
    """`python -m sslcli ARGS --json --quiet`; its JSON result, or exit with its last error line."""
    proc = subprocess.run([sys.executable, "-m", "sslcli", *args, "--json", "--quiet"], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "(no message)").splitlines()
        sys.exit(f"sslcli {' '.join(args)}: exit {proc.returncode}: {lines[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_data(study: dict, out: Path) -> None:
    """Run the study's prepare steps for its first seed, with OUT as the study folder."""
    for step in prepare_commands(study.get("prepare", []), study["seeds"][:1]):
        sslcli(["prepare", *step.args(str(out))])


def jobs_study(study: dict, out: Path, jobs: int, steps: int) -> dict:
    """N runs of the first arm, all on the first seed's data (its {out} and {seed} filled in): seeds 0..N-1,
    ``steps`` steps each, nothing evaluated."""
    arm, overrides = next(iter(study["arms"].items()))
    base = substitute(study["base"], str(out), study["seeds"][0])
    base["max_steps"] = steps
    base["logging"] = {**base.get("logging", {}), "every_steps": 1}  # every step's end time, for the window
    return {"name": f"jobs-{jobs}", "base": base, "arms": {arm: overrides}, "seeds": list(range(jobs))}


def measure(study: dict, jobs: int, steps: int, out: Path) -> dict:
    folder = out / f"jobs-{jobs}"
    path = out / f"jobs-{jobs}.yaml"
    path.write_text(yaml.safe_dump(jobs_study(study, out, jobs, steps), sort_keys=False))
    start = time.perf_counter()
    sslcli(["study", "run", str(path), "--out", str(folder), "--jobs", str(jobs)])
    wall = time.perf_counter() - start
    results = [json.loads(p.read_text())["result"] for p in sorted(folder.glob("runs/*/study-run.json"))]
    batch = study["base"]["batch_size"]
    window, images = overlap([step_times(p) for p in sorted(folder.glob("runs/*/metrics.jsonl"))], batch)
    return {"jobs": jobs, "runs": len(results), "aggregate": images / window if window > 0 else None,
            "window_s": window, "wall_rate": len(results) * steps * batch / wall, "wall_s": wall,
            "devices": sorted({str(r.get("device")) for r in results})}


def step_times(path: Path) -> list[float]:
    """The end times of a run's steps, in order (its metrics.jsonl step records)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["time"] for r in records if r.get("type") == "step"]


def overlap(runs: list[list[float]], batch: int) -> tuple[float, int]:
    """(seconds, images): the window from the latest first-step end to the earliest last-step end, and the images of
    the steps of every run that ended inside it (after its start)."""
    start, end = max(times[0] for times in runs), min(times[-1] for times in runs)
    if end <= start:
        return 0.0, 0
    return end - start, batch * sum(1 for times in runs for t in times if start < t <= end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a study file; its first arm and base spec are trained")
    parser.add_argument("--budget", default=None, help="the study's budget to apply first (e.g. tiny)")
    parser.add_argument("--jobs", default="1,4,8", help="the N to measure, comma-separated")
    parser.add_argument("--steps", type=int, default=40, help="training steps per run")
    parser.add_argument("--out", type=Path, required=True, help="a scratch folder (data, the N studies)")
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps: at least 3 (the window starts after every run's first step, the workers' start-up)")
    study = read_yaml(args.study, "study file")
    if args.budget:
        study = apply_budget(args.study, study, args.budget)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    prepare_data(study, out)
    rows = []
    for jobs in [int(n) for n in args.jobs.split(",")]:
        row = measure(study, jobs, args.steps, out)
        rows.append(row)
        rate = (f"aggregate {row['aggregate']:.1f} img/s over the {row['window_s']:.1f} s all {row['runs']} ran"
                if row["aggregate"] else f"no aggregate: the {row['runs']} runs never trained at the same time (raise "
                                         "--steps)")
        print(f"jobs {jobs}: {rate} ({args.steps} steps of batch {study['base']['batch_size']} each on "
              f"{', '.join(row['devices'])}); wall {row['wall_s']:.1f} s = {row['wall_rate']:.1f} img/s with "
              "start-up", flush=True)
    first, last = rows[0], rows[-1]
    if first["aggregate"] and last["aggregate"]:
        print(f"jobs: {last['jobs']} runs at once give {last['aggregate'] / first['aggregate']:.2f}x the aggregate "
              f"img/s of {first['jobs']} ({args.study.name}, arm {next(iter(study['arms']))})")


if __name__ == "__main__":
    main()
