"""Parallel, resumable, crash-safe precompute of per-image regions into a region store.

How a run survives ``kill -9`` at any moment:

1. Results go to a work folder ``FILE.partial/`` (``job.json`` + one ``block-NNNNNNNN.npz`` per block of
   ``flush_every`` images, block k = images [k·F, (k+1)·F) of the run in source order). Each block is written to a
   temporary name, fsynced and renamed, so a block either exists whole or not at all. An ``flock`` on
   ``FILE.partial/lock`` keeps two runs apart; the kernel releases it when its holder dies, however it dies.
2. A rerun reads ``job.json``, refuses it if the method, parameters or inputs (image bytes included) differ, and
   computes only the missing blocks (the block size of the first run is kept).
3. When every block exists, the store is written from the blocks in order by `write_store` (temporary file, fsync,
   ``complete=True`` set last, atomic rename). Only then is ``FILE.partial/`` removed. A kill before the rename leaves
   no ``FILE``; a kill after it leaves a complete, correct ``FILE`` (the rerun sees it and only cleans up).

Worker processes are spawned (not forked): they inherit no open file of the parent (the lock) and get their state
once, through the pool initializer. On Linux each worker asks the kernel for SIGKILL when the run's process dies
(``prctl(PR_SET_PDEATHSIG)``), so a killed run leaves no worker behind and a rerun can start at once.

``--shard I/N`` runs image range [I·n/N, (I+1)·n/N) into a part store of its own, with the same machinery (so a killed
shard resumes); `sslcli.proposals.shards.merge_parts` joins the parts into the store one unsharded run writes.

Per-image results do not depend on the worker count or on which run computed them, and the store is a pure function
of the results, so a killed-and-resumed run gives a byte-identical file to an uninterrupted one.
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sslcli import __version__
from sslcli.console import current, progress
from sslcli.data.readers.sources import ImageSource
from sslcli.data.stores.store import FORMAT, EncodedResult, ImageResult, encode, write_store
from sslcli.errors import CorruptImageError, InputError, SslcliError
from sslcli.io import atomic_path, check_output_writable, write_json_atomic
from sslcli.process import available_cores
from sslcli.proposals.inputs import content_digests, input_hash, list_hash
from sslcli.proposals.shards import Shard

# (source, index) -> ImageResult. Runs in worker processes: it must be a module-level function (or a partial of one).
ComputeFn = Callable[[ImageSource, int], ImageResult]


@dataclass(frozen=True)
class Job:
    """What a store holds: the kind, the method and every parameter that changes the result."""

    kind: str  # "masks" | "boxes"
    method: str
    parameters: dict[str, Any]
    region_values_name: str | None = None  # "iscrowd" (GT) | "score" (MCG)
    needs_annotations: bool = False  # whether workers need the source's annotations (GT), not only its image list


@dataclass
class Plan:
    """One run, worked out before anything is computed: where it writes, which images, and the store's attributes."""

    out: Path
    work: Path
    indices: range  # source indices of this run (a shard's range, or every image)
    digests: np.ndarray  # (len(indices), 32) sha256 of each image's bytes
    attrs: dict[str, Any]


def plan_job(source: ImageSource, out: Path, job: Job, shard: Shard | None = None) -> Plan:
    """Check the output, hash the inputs and build the attributes of the store (or of the shard's part)."""
    check_output_writable(out)
    n = len(source)
    indices = range(*shard.range(n)) if shard is not None else range(n)
    digests = content_digests(source, indices)
    listed = list_hash(source)
    attrs: dict[str, Any] = {"method": job.method, "parameters": json.dumps(job.parameters, sort_keys=True),
                             "list_hash": listed, "n_inputs": n, "source_kind": source.kind,
                             "sslcli_version": __version__}
    if shard is None:
        attrs["input_hash"] = input_hash(listed, digests)
    else:
        attrs.update(input_hash=input_hash(listed, digests, (indices.start, indices.stop)), shard=str(shard),
                     shard_start=indices.start, shard_stop=indices.stop)
    if job.region_values_name:
        attrs["region_values_name"] = job.region_values_name
    return Plan(out, out.with_name(out.name + ".partial"), indices, digests, attrs)


def store_matches(path: Path, job: Job, attrs: dict[str, Any]) -> bool:
    """Whether an existing complete store at ``path`` was made by the same job on the same inputs."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            a = dict(f.attrs)
    except OSError:
        return False
    keys = ("method", "parameters", "input_hash")
    return (a.get("format") == FORMAT and bool(a.get("complete", False)) and a.get("kind") == job.kind
            and all(str(a.get(k)) == str(attrs[k]) for k in keys))


def _describe(attrs: dict[str, Any]) -> str:
    return f"method {attrs.get('method')}, parameters {attrs.get('parameters')}"


class _Lock:
    """An exclusive ``flock`` on the work folder: a second run on the same output fails fast. The kernel drops it when
    the holder's last descriptor closes, so a killed run never leaves it held (workers do not inherit it)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fh = open(self.path, "a")  # close-on-exec, and no worker is forked from this process
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise SslcliError(f"{self.path.parent}: another run is writing this store") from None
        return self

    def __exit__(self, *exc):
        self.fh.close()


# -- blocks: the crash-safe unit of progress ----------------------------------------------------------------------
def _block_path(work: Path, k: int) -> Path:
    return work / f"block-{k:08d}.npz"


def _write_block(path: Path, results: list[EncodedResult]) -> None:
    lengths = np.array([len(r.payload) for r in results], np.int64)
    values = [r.values for r in results]
    meta = [{"image_id": r.image_id, "shape": list(r.shape), "dtype_code": r.dtype_code, "error": r.error,
             "counts": list(r.counts)} for r in results]
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), lengths=lengths,
                     payload=np.frombuffer(b"".join(r.payload for r in results), np.uint8),
                     n_values=np.array([len(v) for v in values], np.int64),
                     values=np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32))


def _read_block(path: Path) -> list[EncodedResult]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        payload, lengths = z["payload"].tobytes(), z["lengths"]
        values, n_values = z["values"], z["n_values"]
    out, p, v = [], 0, 0
    for m, length, nv in zip(meta, lengths, n_values):
        out.append(EncodedResult(m["image_id"], payload[p:p + length], tuple(m["shape"]), m["dtype_code"],
                                 values[v:v + nv], m["error"], tuple(m["counts"])))
        p, v = p + int(length), v + int(nv)
    return out


def _block_totals(path: Path, kind: str) -> tuple[int, int, int]:
    """(stored images, payload rows, values) of one block, read from its small arrays only."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        lengths, n_values = z["lengths"], z["n_values"]
    ok = np.array([m["error"] is None for m in meta], bool)
    rows = lengths[ok] if kind == "masks" else lengths[ok] // 16  # boxes: 4 float32 per row
    return int(ok.sum()), int(rows.sum()), int(n_values[ok].sum())


# -- workers --------------------------------------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class _ImageWorker:
    """Computes and encodes one image's result. A pool worker gets its own once, through the initializer (so the
    source, with its annotations, is sent once per worker, never per task); an in-process run calls one directly."""

    source: ImageSource
    compute: ComputeFn
    kind: str

    def __call__(self, index: int) -> EncodedResult:
        image_id = str(self.source.records[index].image_id)
        try:
            result = self.compute(self.source, index)
        except CorruptImageError as exc:
            result = ImageResult(image_id, error=str(exc))
        result.image_id = image_id
        return encode(result, self.kind)


# The worker of a pool process: set once by `_init_worker` in that process, read by `_work` (the tasks a pool runs
# must be module-level functions). The run's own process never sets it.
_pool_worker: _ImageWorker | None = None


def _die_with_parent(run_pid: int) -> None:
    """Linux: have the kernel SIGKILL this worker when the run's process dies (strictly: when the thread that
    started it exits; the pool is created and fed from the run's main thread); then make sure the run did not die
    before the request took effect (the worker would have been re-parented already)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != run_pid:
        os._exit(1)


def _init_worker(run_pid: int, worker: _ImageWorker) -> None:
    global _pool_worker
    _die_with_parent(run_pid)
    _pool_worker = worker


def _work(index: int) -> EncodedResult:
    if _pool_worker is None:
        raise RuntimeError("_work runs in pool processes started with _init_worker")
    return _pool_worker(index)


def _pool_context() -> multiprocessing.context.SpawnContext:
    """Spawn: workers are children of the run's process (the parent-death signal follows it; a fork server would
    stand between, and it outlives the run while its children hold its pipe) and inherit none of its open files
    (the lock) or threads. They receive their state once, through the initializer."""
    return multiprocessing.get_context("spawn")


def _worker_source(source: ImageSource, job: Job) -> ImageSource:
    """What workers need of the source: the image list, plus the annotations only for methods that read them."""
    if job.needs_annotations:
        return source
    return ImageSource(root=source.root, kind=source.kind, records=source.records, classes=source.classes)


def _results_in_order(source: ImageSource, job: Job, compute: ComputeFn, indices: list[int],
                      workers: int) -> Iterator[EncodedResult]:
    """Per-image results in the order of ``indices``; at most 4 images per worker in flight, so memory stays flat
    on millions of images."""
    if workers <= 1:  # in-process: no pickling, no pool start-up
        yield from map(_ImageWorker(source, compute, job.kind), indices)
        return
    worker = _ImageWorker(_worker_source(source, job), compute, job.kind)
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(), initializer=_init_worker,
                             initargs=(os.getpid(), worker)) as pool:
        todo = iter(indices)
        pending = deque(pool.submit(_work, i) for i in itertools.islice(todo, 4 * workers))
        try:
            while pending:
                result = pending.popleft().result()
                following = next(todo, None)
                if following is not None:
                    pending.append(pool.submit(_work, following))
                yield result
        finally:
            for future in pending:
                future.cancel()


# -- the run ----------------------------------------------------------------------------------------------------------
def run_job(source: ImageSource, out: str | os.PathLike, job: Job, compute: ComputeFn, workers: int | None = None,
            flush_every: int = 64, overwrite: bool = False, shard: Shard | None = None) -> dict[str, Any]:
    """Compute ``job`` for every image of ``source`` (or the range of ``shard``) into the store ``out``; resumable,
    parallel (``workers`` processes; None: one per core this process may use), atomic. Returns a report: path,
    images stored, skipped images (with reasons), the status (computed, resumed or already complete) and, when it
    computed, the images it computed, its workers and images/s."""
    workers = available_cores() if workers is None else workers
    if workers < 1:
        raise InputError(f"--workers {workers}: expected a positive number of processes")
    if flush_every < 1:
        raise InputError(f"--flush-every {flush_every}: expected a positive number of images")
    plan = plan_job(source, Path(out), job, shard)
    if plan.out.exists() and not overwrite:
        if store_matches(plan.out, job, plan.attrs):
            if plan.work.exists():  # killed after the final rename: only the cleanup is left
                shutil.rmtree(plan.work)
            return _report(plan.out, "already complete")
        raise InputError(f"{plan.out}: a store with other parameters or inputs exists (wanted {_describe(plan.attrs)}"
                         "); pass --overwrite or choose another --out")
    plan.work.mkdir(exist_ok=True)
    with _Lock(plan.work / "lock"):
        flush_every, status = _open_work_folder(plan, job, flush_every, overwrite)
        start = time.perf_counter()
        missing, speed = _compute_missing_blocks(source, plan, job, compute, workers, flush_every)
        speed["images_per_s"] = round(speed["computed_images"] / max(time.perf_counter() - start, 1e-9), 3)
        if status == "resumed" and missing == _n_blocks(plan, flush_every):
            status = "computed"
        _write_from_blocks(plan, job, flush_every)
    shutil.rmtree(plan.work)
    return {**_report(plan.out, status), **speed}


def _n_blocks(plan: Plan, flush_every: int) -> int:
    return (len(plan.indices) + flush_every - 1) // flush_every


def _open_work_folder(plan: Plan, job: Job, flush_every: int, overwrite: bool) -> tuple[int, str]:
    """Record the job in ``job.json`` or check it against an interrupted run's; (block size, "computed"|"resumed")."""
    job_file = plan.work / "job.json"
    wanted = {"kind": job.kind, "attrs": plan.attrs, "flush_every": flush_every}
    status = "computed"
    if job_file.exists():
        previous = json.loads(job_file.read_text())
        if overwrite or previous.get("kind") != job.kind or previous.get("attrs") != plan.attrs:
            if not overwrite:
                raise InputError(f"{plan.work}: an interrupted run with other parameters or inputs is here "
                                 f"({_describe(previous.get('attrs', {}))}); pass --overwrite to discard it")
            for stale in [*plan.work.glob("block-*.npz"), *plan.work.glob("shard-*.npz")]:
                stale.unlink()
        else:
            flush_every = int(previous["flush_every"])  # keep the first run's blocks
            wanted["flush_every"] = flush_every
            status = "resumed"
    write_json_atomic(job_file, wanted)
    for stale in plan.out.parent.glob(f".{plan.out.name}.*.tmp"):  # temporaries of a killed final write
        stale.unlink()
    return flush_every, status


def _compute_missing_blocks(source: ImageSource, plan: Plan, job: Job, compute: ComputeFn, workers: int,
                            flush_every: int) -> tuple[int, dict[str, Any]]:
    """Compute the blocks not on disk yet, writing each as soon as its images are done; returns how many, and
    the images computed and the workers that computed them (no more workers than images)."""
    n = len(plan.indices)
    missing = [k for k in range(_n_blocks(plan, flush_every)) if not _block_path(plan.work, k).exists()]
    positions = [p for k in missing for p in range(k * flush_every, min((k + 1) * flush_every, n))]
    workers = max(1, min(workers, len(positions)))
    current().info(f"{job.method}: {n} images, {n - len(positions)} already done, {len(positions)} to compute "
                   f"with {workers} worker(s)")
    buffer: list[EncodedResult] = []
    blocks = iter(missing)
    k = next(blocks, None)
    for result in progress(_results_in_order(source, job, compute, [plan.indices[p] for p in positions], workers),
                           total=len(positions), description=f"prepare {job.kind} ({job.method})", unit="images"):
        buffer.append(result)
        if k is not None and len(buffer) == min((k + 1) * flush_every, n) - k * flush_every:
            _write_block(_block_path(plan.work, k), buffer)
            buffer, k = [], next(blocks, None)
    return len(missing), {"computed_images": len(positions), "workers": workers}


def _write_from_blocks(plan: Plan, job: Job, flush_every: int) -> None:
    """Merge the blocks, in order, into the final store (atomic: see `write_store`)."""
    blocks = [_block_path(plan.work, k) for k in range(_n_blocks(plan, flush_every))]
    totals = np.zeros(3, np.int64)
    for path in blocks:
        totals += _block_totals(path, job.kind)
    write_store(plan.out, job.kind, plan.attrs, (r for path in blocks for r in _read_block(path)),
                {"images": int(totals[0]), "payload": int(totals[1]), "values": int(totals[2])}, plan.digests)


def _report(out: Path, status: str) -> dict[str, Any]:
    from sslcli.data.stores.store import RegionStore

    store = RegionStore(out)
    try:
        skipped = store.skipped
        report = {"store": str(out), "status": status, "kind": store.kind, "method": store.method,
                  "parameters": store.parameters, "images": len(store), "skipped": len(skipped),
                  "skipped_images": skipped}
        if "shard" in store.attrs:
            report["shard"] = store.attrs["shard"]
        return report
    finally:
        store.close()
