"""Slurm through submitit: the options of a job, checking them before anything is submitted, the job that runs an
``sslcli`` command (requeued on preemption or timeout), the record of submitted jobs, and their states.

- `SlurmOptions`: partition, account, time, GPUs per node, nodes, CPUs, memory and extra sbatch options; the
  study file's ``executor:`` section and the CLI flags of `study run` and `prepare masks|boxes`.
- `slurm_executor` builds a ``submitit.SlurmExecutor`` from them and has ``sbatch --test-only`` judge the job script
  it would submit: a bad partition, account, time or sbatch option is refused in one line, before any submission.
- `CommandJob` runs ``sslcli ARGS --json`` inside the job (multi-node: one task per node, torch.distributed from
  Slurm's environment). Slurm signals the job (``--signal=USR1@90`` before its time limit, or ``scancel
  --signal=USR1``, or a preemption): the command saves a step checkpoint and exits, submitit calls
  `CommandJob.checkpoint`, which waits for that and requeues the same command; the requeued job resumes it.
- `JobBook`: ``{key: job id, log}`` in a JSON file of the study (or store) folder, written atomically after each
  submission, so a rerun re-attaches to the queued and running jobs instead of submitting them again.
- `job_states`: one ``squeue`` call for many jobs. Slurm forgets a finished job after MinJobAge (no accounting
  database is needed): a job it no longer lists is judged by the files it writes (done, or failed with its log).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sslcli.errors import InputError, SslcliError
from sslcli.io import write_json_atomic

# The signal Slurm sends before a time limit and `scancel --signal=USR1` sends: the one the engine checkpoints on
# (submitit's default is USR2). Read by submitit at import, so it is set before submitit is imported, here and in
# the job (its script exports it).
PREEMPT_SIGNAL = "USR1"
os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", PREEMPT_SIGNAL)

QUEUED, RUNNING, DONE, FAILED, TODO = "queued", "running", "done", "failed", "to do"
# squeue's job states (squeue(1) "JOB STATE CODES") as sslcli reports them.
_SQUEUE_STATES = {
    **dict.fromkeys(["PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD",
                     "SPECIAL_EXIT", "SUSPENDED"], QUEUED),
    **dict.fromkeys(["RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"], RUNNING),
    "COMPLETED": DONE,
    **dict.fromkeys(["FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
                     "DEADLINE", "REVOKED", "STOPPED"], FAILED),
}
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(text: str | int) -> int:
    """Slurm's time formats (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) as whole minutes (at least 1)."""
    match = _TIME.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:  # MM
        seconds = int(a) * 60
    if seconds <= 0:
        raise ValueError(f"{text!r}: expected a positive time")
    return max(1, -(-seconds // 60))


def sbatch_option(line: str) -> tuple[str, Any]:
    """``"--qos=high"`` (or ``"#SBATCH --qos high"``) -> ``("qos", "high")``; ``"--exclusive"`` -> ``("exclusive",
    True)``: the form submitit's ``additional_parameters`` takes."""
    text = line.strip().removeprefix("#SBATCH").strip()
    match = re.fullmatch(r"--([A-Za-z][A-Za-z0-9-]*)(?:[= ](.+))?", text)
    if not match:
        raise ValueError(f"{line!r}: expected a long sbatch option such as --qos=high or --exclusive")
    key = match[1].replace("-", "_")
    return key, True if match[2] is None else match[2].strip()


class SlurmOptions(BaseModel):
    """Resources of each Slurm job (`sbatch` options); `study run --executor slurm` and `prepare --executor slurm`."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = Field(None, description="sbatch --partition")
    account: str | None = Field(None, description="sbatch --account")
    time: str = Field("24:00:00", description="sbatch --time per job (minutes, HH:MM:SS or D-HH:MM:SS); a job "
                      "that reaches it checkpoints and is requeued (at most 3 times)")
    gpus_per_node: int = Field(0, ge=0, description="sbatch --gpus-per-node; one training process per GPU")
    nodes: int = Field(1, ge=1, description="sbatch --nodes (multi-node training: torch.distributed over them)")
    cpus_per_task: int | None = Field(None, ge=1, description="sbatch --cpus-per-task (one task per node)")
    mem: str | None = Field(None, description="sbatch --mem per node, e.g. 64G")
    sbatch: list[str] = Field(default_factory=list, description="extra sbatch options, e.g. ['--qos=high']")
    poll_s: float = Field(30.0, gt=0, description="seconds between two looks at the queue while waiting")

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, value: Any) -> str:
        parse_time(value)
        return str(value)

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+[KMGT]?B?", value.strip(), re.IGNORECASE):
            raise ValueError(f"{value!r}: expected a size such as 64G or 16000M")
        return value

    @field_validator("sbatch")
    @classmethod
    def _sbatch(cls, value: list[str]) -> list[str]:
        for line in value:
            sbatch_option(line)
        return value

    @property
    def minutes(self) -> int:
        return parse_time(self.time)

    def parameters(self, job_name: str) -> dict[str, Any]:
        """submitit.SlurmExecutor parameters (its names are sbatch's)."""
        params: dict[str, Any] = {"job_name": job_name, "time": self.minutes, "nodes": self.nodes,
                                  "ntasks_per_node": 1, "signal_delay_s": 90,
                                  "setup": [f"export SUBMITIT_PREEMPT_SIGNAL={PREEMPT_SIGNAL}"],
                                  "additional_parameters": dict(sbatch_option(line) for line in self.sbatch)}
        for key in ("partition", "account", "cpus_per_task", "mem"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        return params


def options_from(base: dict[str, Any] | None, overrides: dict[str, Any], where: str) -> SlurmOptions:
    """The study file's section (or {}) with the CLI flags that were given on top; one-line errors."""
    from pydantic import ValidationError

    data = {**(base or {}), **{k: v for k, v in overrides.items() if v not in (None, [], ())}}
    try:
        return SlurmOptions.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        value = data.get(str(err["loc"][0])) if err["loc"] else None
        msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise InputError(f"{where}: {field}: {msg}" + (f" (got {value!r})" if value is not None else "")) from None


def slurm_executor(options: SlurmOptions, folder: Path, job_name: str, array: int = 0) -> Any:
    """A submitit SlurmExecutor for these options whose job script ``sbatch --test-only`` has accepted."""
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise InputError("--executor slurm: sbatch/srun not found on PATH (run on a Slurm login node, or use "
                         "--executor local)")
    import submitit

    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
    executor.update_parameters(**options.parameters(job_name))
    if array:
        executor.parameters["map_count"] = array
    text = executor._make_submission_file_text(executor._submitit_command_str, "test-only")
    executor.parameters.pop("map_count", None)
    with tempfile.NamedTemporaryFile("w", suffix=".sh", dir=folder, delete=False) as script:
        script.write(text)
    try:
        proc = subprocess.run(["sbatch", "--test-only", script.name], capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(script.name)
    if proc.returncode != 0:
        reason = next((line for line in proc.stderr.splitlines() if "error" in line.lower()), proc.stderr.strip())
        raise InputError(f"slurm refused the job's options ({_shown_options(options)}): "
                         f"{reason.removeprefix('sbatch: ').removeprefix('error: ')}")
    return executor


def _shown_options(options: SlurmOptions) -> str:
    data = options.model_dump(exclude_defaults=True, exclude={"poll_s"})
    return ", ".join(f"{k}={v}" for k, v in data.items()) or "defaults"


# ----------------------------------------------------------------------------------------------------- the job
def master_port(job_id: str) -> int:
    """A rendezvous port every node of one job derives alike (jobs sharing a node get different ones)."""
    return 20000 + int(re.sub(r"\D", "", job_id) or 0) % 20000


def rank_args(gpus_per_node: int, nodes: int, node: int, hostnames: list[str], job_id: str) -> list[str]:
    """The `sslcli pretrain` options of this node's share of a (multi-node) run, from Slurm's environment."""
    if nodes == 1:
        return ["--gpus", str(gpus_per_node)] if gpus_per_node > 1 else []
    return ["--gpus", str(max(gpus_per_node, 1)), "--nodes", str(nodes), "--node-rank", str(node),
            "--master-addr", hostnames[0], "--master-port", str(master_port(job_id))]


class CommandJob:
    """``sslcli ARGS --json`` as a Slurm job (one task per node); the result is the command's JSON.

    ``distributed``: add the node's `rank_args` (training). Preemption and timeouts go through `checkpoint`."""

    def __init__(self, args: list[str], gpus_per_node: int = 0, nodes: int = 1, distributed: bool = False):
        self.args, self.gpus_per_node, self.nodes, self.distributed = args, gpus_per_node, nodes, distributed
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _proc=None)

    def command_args(self) -> list[str]:
        if not self.distributed:
            return list(self.args)
        import submitit

        env = submitit.JobEnvironment()
        return [*self.args, *rank_args(self.gpus_per_node, env.num_nodes, env.node, env.hostnames, env.job_id)]

    def __call__(self) -> dict:
        from sslcli.process import call

        result, seconds, cmd = call(self.command_args(), _to_stderr, verbose=True, on_start=self._started)
        self.finished(result, seconds, cmd)
        return result

    def _started(self, proc: subprocess.Popen) -> None:
        self._proc = proc

    def finished(self, result: dict, seconds: float, cmd: str) -> None:
        """After a successful command, on the first node (subclasses record it)."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Slurm signalled the job (all its processes): the command is finishing its step and saving a checkpoint.
        Wait for it to exit, then requeue the same command; run again, it resumes (`--resume auto`)."""
        import submitit

        if self._proc is not None:
            self._proc.wait()
        return submitit.helpers.DelayedSubmission(self)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # the job's .err log: the command's lines beside submitit's


# ------------------------------------------------------------------------------------------------ job records
class JobBook:
    """``{key: {"job_id": ..., "log": ...}}`` in one JSON file, rewritten atomically after each change."""

    def __init__(self, path: Path):
        self.path = path
        self.jobs: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str) -> dict[str, str] | None:
        return self.jobs.get(key)

    def record(self, key: str, job_id: str, log: str) -> None:
        self.jobs[key] = {"job_id": job_id, "log": log}
        write_json_atomic(self.path, self.jobs)


def log_path(folder: Path, job_id: str) -> str:
    """Where submitit's job writes its stderr (the command's log lines and errors)."""
    return str(folder / f"{job_id}_0_log.err")


def job_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: queued | running | done | failed} for the jobs squeue still lists (one call)."""
    if not job_ids:
        return {}
    proc = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(job_ids)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        raise SslcliError(f"squeue failed: {proc.stderr.strip() or proc.returncode}")
    states = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.partition("|")
        words = state.split()
        for one in expand_ids(job_id.strip()):
            states[one] = _SQUEUE_STATES.get(words[0] if words else "", QUEUED)
    return states


def expand_ids(job_id: str) -> list[str]:
    """squeue's ``123_[0-2,5%4]`` (array tasks not started yet) -> ``123_0 123_1 123_2 123_5``."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id]
    ids = []
    for part in match[2].split("%")[0].split(","):
        first, _, last = part.partition("-")
        ids += [f"{match[1]}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids


def live_job(name: str) -> str | None:
    """The id of a queued or running job of this user named ``name`` (one submitted before a kill that came before
    its id was recorded), else None."""
    proc = subprocess.run(["squeue", "-h", "--me", "-n", name, "-o", "%i"], capture_output=True, text=True,
                          timeout=120)
    ids = proc.stdout.split() if proc.returncode == 0 else []
    return ids[0] if ids else None


def wait_for_jobs(jobs: dict[str, dict[str, str]], done: Callable[[str], bool], poll_s: float,
                  log: Callable[[str], None], label: Callable[[str], str] = str) -> list[str]:
    """Wait until every job (``{key: {"job_id", "log"}}``) is done (``done(key)``: its output is there) or failed,
    logging each change of state; return one line per failure: what, the job and its log."""
    shown: dict[str, str] = {}
    failures: list[str] = []
    pending = list(jobs)
    while pending:
        states = job_states([jobs[k]["job_id"] for k in pending])
        for key in list(pending):
            job = jobs[key]
            state = state_of(job, states, lambda key=key: done(key))
            if state != shown.get(key):
                shown[key] = state
                log(f"{label(key)}: Slurm job {job['job_id']} {state}")
            if state in (DONE, FAILED):
                pending.remove(key)
            if state == FAILED:
                failures.append(f"{label(key)}: job {job['job_id']}, log {job['log']}")
        if pending:
            time.sleep(poll_s)
    return failures


def state_of(job: dict[str, str] | None, states: dict[str, str], done: Callable[[], bool]) -> str:
    """One job's state: squeue's while it lists the job; after that, done when its output is there, else failed."""
    if done():
        return DONE
    if job is None:
        return TODO
    state = states.get(job["job_id"])
    if state in (QUEUED, RUNNING):
        return state
    return FAILED
