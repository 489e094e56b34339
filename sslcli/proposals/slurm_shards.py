"""`prepare masks|boxes ... --executor slurm --shards N`: the N shards (``--shard I/N``) as one Slurm job array,
then `merge_parts` in the submitting process (a few seconds of copying: not worth a job and its queue wait).

The array's job ids go to ``<store>.slurm.json`` ({"I/N": {"job_id", "log"}}) when sbatch returns them. A rerun
(after a kill of the submitting process, say) skips the shards whose part is complete, re-attaches to those whose
job is still queued or running, and submits only the rest (a failed shard resumes its part's finished blocks).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sslcli.errors import InputError, SslcliError
from sslcli.proposals.shards import Shard, _read_part, merge_parts
from sslcli.slurm import (
    QUEUED,
    RUNNING,
    CommandJob,
    JobBook,
    SlurmOptions,
    job_states,
    log_path,
    slurm_executor,
    wait_for_jobs,
)


def book_path(store: Path) -> Path:
    return store.with_name(store.name + ".slurm.json")


def part_complete(path: Path) -> bool:
    try:
        _read_part(path)
    except InputError:
        return False
    return True


def prepare_on_slurm(shard_args: Callable[[Shard], list[str]], store: Path, count: int, options: SlurmOptions,
                     overwrite: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Compute the ``count`` shards of one `prepare masks|boxes` command as a Slurm job array, wait, and merge them
    into ``store``; ``shard_args(shard)`` is that shard's `sslcli prepare ...` argument list."""
    if count < 1:
        raise InputError(f"--shards {count}: expected a positive number of shards")
    if store.exists() and not overwrite:
        raise InputError(f"{store}: exists; pass --overwrite to replace it")
    shards = [Shard(i, count) for i in range(count)]
    parts = {str(s): s.part_path(store) for s in shards}
    book = JobBook(book_path(store))
    logs = store.parent / "slurm-logs"
    executor = slurm_executor(options, logs, f"sslcli-prepare-{store.stem}", array=count)
    todo = [s for s in shards if not part_complete(parts[str(s)])]
    states = job_states([j["job_id"] for s in todo if (j := book.get(str(s)))])
    submit = []
    for shard in todo:
        job = book.get(str(shard))
        if job is not None and states.get(job["job_id"]) in (QUEUED, RUNNING):
            log(f"[prepare] shard {shard}: attached to Slurm job {job['job_id']} ({states[job['job_id']]})")
        else:
            submit.append(shard)
    if submit:
        with executor.batch():
            jobs = [executor.submit(CommandJob(shard_args(shard))) for shard in submit]
        for shard, job in zip(submit, jobs):
            book.record(str(shard), job.job_id, log_path(logs, job.job_id))
        log(f"[prepare] {len(submit)} shard(s) submitted as Slurm job array {jobs[0].job_id.split('_')[0]}")
    failures = wait_for_jobs({str(s): book.jobs[str(s)] for s in todo}, lambda key: part_complete(parts[key]),
                             options.poll_s, log, lambda key: f"[prepare] shard {key}")
    if failures:
        raise SslcliError(f"{len(failures)} shard job(s) failed: " + "; ".join(failures))
    result = merge_parts(list(parts.values()), store, overwrite=overwrite)
    return {**result, "shards": {k: v["job_id"] for k, v in book.jobs.items()}, "shard_parts": [os.fspath(p) for p
                                                                                              in parts.values()]}
