"""`study run --executor slurm`: one Slurm job per arm x seed through submitit, re-attached on a rerun, and
`study status`.

Each job runs the same ``sslcli pretrain SPEC --resume auto`` a local study runs (`TrainJob`), writes the run's
marker itself when the command succeeds, and is requeued (same command, so it resumes) on preemption or timeout.
The submitting process records every job id in ``DIR/slurm/jobs.json`` the moment sbatch returns it, then waits for
the jobs, looking at the queue every ``poll_s`` seconds. A rerun (after a kill -9 of the submitting process, say)
re-attaches to the recorded jobs that are still queued or running, submits only the runs that have neither a
finished marker nor a live job (failed jobs are resubmitted: they resume from their last checkpoint), and retrains
nothing. The evaluations run in the submitting process once every job is done (see docs/slurm.md: analyses take all
checkpoints in one call, and a probe is minutes where training is hours).

Layout added to the study folder:
  slurm/jobs.json           {run hash: {"job_id": ..., "log": ...}}
  slurm/logs/               submitit's job scripts, pickles and the jobs' stdout/stderr (<job id>_0_log.err)
"""

from __future__ import annotations

import json
from pathlib import Path

from sslcli.errors import SslcliError
from sslcli.slurm import (
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    TODO,
    CommandJob,
    JobBook,
    SlurmOptions,
    job_states,
    live_job,
    log_path,
    slurm_executor,
    state_of,
    wait_for_jobs,
)
from sslcli.study.runner import RUN_MARKER, Log, _write_spec, record_run, run_done, run_identity
from sslcli.study.spec import PlannedRun, Study, content_hash

JOBS_FILE = Path("slurm") / "jobs.json"
LOGS = Path("slurm") / "logs"


def job_name(study_out: Path, run_hash: str) -> str:
    """Unique per run and study folder: a job submitted just before a kill is found by its name."""
    return f"sslcli-{run_hash}-{content_hash(str(study_out), 8)}"


class TrainJob(CommandJob):
    """One run's training as a Slurm job; on success (first node) it writes the run's marker."""

    def __init__(self, run: PlannedRun, spec_path: Path, options: SlurmOptions):
        super().__init__(["pretrain", str(spec_path), "--resume", "auto"], options.gpus_per_node, options.nodes,
                         distributed=True)
        self.identity = run_identity(run)
        self.marker = Path(run.spec.output_dir) / RUN_MARKER

    def finished(self, result: dict, seconds: float, cmd: str) -> None:
        import os

        record_run(self.identity, self.marker, result, seconds, cmd, resumed=False,
                   slurm_job=os.environ.get("SLURM_JOB_ID"))


class SlurmExecutor:
    """`sslcli.study.runner.TrainingExecutor` on Slurm (``options``: every job's resources)."""

    def __init__(self, options: SlurmOptions):
        self.options = options
        self._submitit = None

    def check(self, study: Study) -> None:
        """Have sbatch judge the job script now (`sbatch --test-only`): bad options fail before any work."""
        self._submitit = slurm_executor(self.options, study.out / LOGS, "sslcli")

    def train(self, study: Study, runs: list[PlannedRun], log: Log, verbose: bool, counts: dict) -> set[str | None]:
        book = JobBook(study.out / JOBS_FILE)
        todo = [r for r in runs if not run_done(r)]
        counts["skipped"] += len(runs) - len(todo)
        for run in runs:
            if run_done(run):
                log(f"[study] {run.key} ({run.hash}): skipped (done)")
        waiting = self._attach_or_submit(study, todo, book, log, counts)
        failures = self._wait(waiting, book, log, counts)
        if failures:
            raise SslcliError(f"{len(failures)} training job(s) failed: " + "; ".join(failures))
        return {json.loads((Path(r.spec.output_dir) / RUN_MARKER).read_text())["result"].get("device")
                for r in runs}

    def _attach_or_submit(self, study: Study, todo: list[PlannedRun], book: JobBook, log: Log,
                          counts: dict) -> list[PlannedRun]:
        states = job_states([j["job_id"] for r in todo if (j := book.get(r.hash))])
        for run in todo:
            job = book.get(run.hash)
            state = states.get(job["job_id"]) if job else None
            if job is None or state not in (QUEUED, RUNNING):
                found = live_job(job_name(study.out, run.hash))
                if found:  # submitted by a run killed before it could record the id
                    book.record(run.hash, found, log_path(study.out / LOGS, found))
                    job, state = book.get(run.hash), QUEUED
            if job is not None and state in (QUEUED, RUNNING):
                log(f"[study] {run.key} ({run.hash}): attached to Slurm job {job['job_id']} ({state})")
                counts["attached"] = counts.get("attached", 0) + 1
                continue
            if self._submitit is None:
                self.check(study)
            executor = self._submitit
            executor.update_parameters(job_name=job_name(study.out, run.hash))
            submitted = executor.submit(TrainJob(run, _write_spec(study, run), self.options))
            book.record(run.hash, submitted.job_id, log_path(study.out / LOGS, submitted.job_id))
            log(f"[study] {run.key} ({run.hash}): submitted as Slurm job {submitted.job_id} "
                f"({run.spec.method.name})")
            counts["submitted"] = counts.get("submitted", 0) + 1
        return todo

    def _wait(self, runs: list[PlannedRun], book: JobBook, log: Log, counts: dict) -> list[str]:
        """Until every job is done or failed; returns one line per failure (the run, the job and its log)."""
        by_hash = {r.hash: r for r in runs}
        failures = wait_for_jobs({h: book.jobs[h] for h in by_hash}, lambda h: run_done(by_hash[h]),
                                 self.options.poll_s, log, lambda h: f"[study] {by_hash[h].key} ({h})")
        counts["trained"] += len(runs) - len(failures)
        return [f.removeprefix("[study] ") for f in failures]


def study_status(folder: Path) -> dict:
    """Each run's state (done / queued / running / failed with its log / to do), from the files and one squeue."""
    from sslcli.errors import InputError

    plan_path = folder / "study.json"
    if not plan_path.is_file():
        raise InputError(f"{folder}: not a study folder (no study.json; run `sslcli study run` first)")
    plan = json.loads(plan_path.read_text())
    book = JobBook(folder / JOBS_FILE)
    states = _squeue_if_any(book)
    runs = []
    for run in plan["runs"]:
        out = folder / run["output_dir"]  # study.json keeps it relative to the study folder
        job = book.get(run["hash"])
        state = state_of(job, states, lambda out=out: (out / RUN_MARKER).is_file())
        entry = {"arm": run["arm"], "seed": run["seed"], "hash": run["hash"], "state": state,
                 "job_id": job["job_id"] if job else None}
        if state == FAILED:
            entry["log"] = job["log"] if job else None
        runs.append(entry)
    totals = {s: sum(r["state"] == s for r in runs) for s in (DONE, RUNNING, QUEUED, FAILED, TODO)}
    return {"study": plan["study"], "out": str(folder), "runs": runs, "totals": totals}


def _squeue_if_any(book: JobBook) -> dict[str, str]:
    ids = [j["job_id"] for j in book.jobs.values()]
    return job_states(ids) if ids else {}
