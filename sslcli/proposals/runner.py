"""Parallel, resumable, crash-safe precompute of per-image regions into a region store.

How a run survives ``kill -9`` at any moment:

1. Results go to a work folder ``FILE.partial/`` (``job.json`` + one ``shard-NNNNNNNN.npz`` per block of
   ``flush_every`` images, block k = images [k·F, (k+1)·F) in source order). Each shard is written to a temporary name,
   fsynced and renamed, so a shard either exists whole or not at all. A lock file keeps two runs apart.
2. A rerun reads ``job.json``, refuses it if the method, parameters or input list differ, and computes only the
   missing shards (the block size of the first run is kept).
3. When every shard exists, the store is written from the shards in order by `write_store` (temporary file, fsync,
   ``complete=True`` set last, atomic rename). Only then is ``FILE.partial/`` removed. A kill before the rename leaves
   no ``FILE``; a kill after it leaves a complete, correct ``FILE`` (the rerun sees it and only cleans up).

Per-image results do not depend on the worker count or on which run computed them, and the store is a pure function
of the results, so a killed-and-resumed run gives a byte-identical file to an uninterrupted one.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sslcli import __version__
from sslcli.cli.common import current, progress
from sslcli.data.sources import ImageSource
from sslcli.data.store import FORMAT, EncodedResult, ImageResult, encode, write_store
from sslcli.errors import CorruptImageError, InputError, SslcliError
from sslcli.io import atomic_path, write_json_atomic

# (source, index) -> ImageResult. Runs in worker processes: it must be a module-level function (or a partial of one).
ComputeFn = Callable[[ImageSource, int], ImageResult]


@dataclass(frozen=True)
class Job:
    """What a store holds: the kind, the method and every parameter that changes the result."""

    kind: str  # "masks" | "boxes"
    method: str
    parameters: dict[str, Any]
    region_values_name: str | None = None  # "iscrowd" (GT) | "score" (MCG)

    def attrs(self, source: ImageSource) -> dict[str, Any]:
        out = {"method": self.method, "parameters": json.dumps(self.parameters, sort_keys=True),
               "input_hash": input_hash(source), "n_inputs": len(source), "source_kind": source.kind,
               "sslcli_version": __version__}
        if self.region_values_name:
            out["region_values_name"] = self.region_values_name
        return out


def input_hash(source: ImageSource) -> str:
    """sha256 of the ordered (image id, path relative to the root) list: the store's identity of its inputs."""
    digest = hashlib.sha256()
    for rec in source.records:
        try:
            rel = Path(rec.path).relative_to(source.root)
        except ValueError:
            rel = Path(rec.path)
        digest.update(f"{rec.image_id}\t{rel.as_posix()}\n".encode())
    return digest.hexdigest()


# Worker state, inherited through fork: the source (with its annotations) is never pickled per task.
_STATE: dict[str, Any] = {}


def _work(index: int) -> EncodedResult:
    source, compute, kind = _STATE["source"], _STATE["compute"], _STATE["kind"]
    image_id = str(source.records[index].image_id)
    try:
        result = compute(source, index)
    except CorruptImageError as exc:
        result = ImageResult(image_id, error=str(exc))
    result.image_id = image_id
    return encode(result, kind)


def _shard_path(work: Path, k: int) -> Path:
    return work / f"shard-{k:08d}.npz"


def _write_shard(path: Path, results: list[EncodedResult]) -> None:
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


def _read_shard(path: Path) -> list[EncodedResult]:
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


def _shard_totals(path: Path, kind: str) -> tuple[int, int, int]:
    """(stored images, payload rows, values) of one shard, read from its small arrays only."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        lengths, n_values = z["lengths"], z["n_values"]
    ok = np.array([m["error"] is None for m in meta], bool)
    rows = lengths[ok] if kind == "masks" else lengths[ok] // 16  # boxes: 4 float32 per row
    return int(ok.sum()), int(rows.sum()), int(n_values[ok].sum())


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
    """An exclusive advisory lock on the work folder: a second run on the same output fails fast."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fh = open(self.path, "a")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise SslcliError(f"{self.path.parent}: another run is writing this store") from None
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _results_in_order(source: ImageSource, indices: list[int], workers: int) -> Iterator[EncodedResult]:
    """Per-image results in the order of ``indices``; at most 4 images per worker in flight, so memory stays flat
    on millions of images."""
    if workers <= 1:  # in-process: no pickling, no pool start-up
        yield from (_work(i) for i in indices)
        return
    ctx = multiprocessing.get_context("fork")  # workers inherit _STATE (the source, its annotations)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
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


def run_job(source: ImageSource, out: str | os.PathLike, job: Job, compute: ComputeFn, workers: int = 1,
            flush_every: int = 64, overwrite: bool = False) -> dict[str, Any]:
    """Compute ``job`` for every image of ``source`` into the store ``out``; resumable, parallel, atomic.

    Returns a report: path, images stored, skipped images (with reasons), whether it resumed or was already done.
    """
    out = Path(out)
    if workers < 1:
        raise InputError(f"--workers {workers}: expected a positive number of processes")
    if flush_every < 1:
        raise InputError(f"--flush-every {flush_every}: expected a positive number of images")
    attrs = job.attrs(source)
    work = out.with_name(out.name + ".partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.probe"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{out}: output is not writable ({exc.strerror})") from None
    if out.exists() and not overwrite:
        if store_matches(out, job, attrs):
            if work.exists():  # killed after the final rename: only the cleanup is left
                shutil.rmtree(work)
            return _report(out, "already complete")
        raise InputError(f"{out}: a store with other parameters or inputs exists (wanted {_describe(attrs)}); "
                         "pass --overwrite or choose another --out")
    work.mkdir(exist_ok=True)
    with _Lock(work / "lock"):
        job_file = work / "job.json"
        wanted = {"kind": job.kind, "attrs": attrs, "flush_every": flush_every}
        status = "computed"
        if job_file.exists():
            previous = json.loads(job_file.read_text())
            if overwrite or previous.get("kind") != job.kind or previous.get("attrs") != attrs:
                if not overwrite:
                    raise InputError(f"{work}: an interrupted run with other parameters or inputs is here "
                                     f"({_describe(previous.get('attrs', {}))}); pass --overwrite to discard it")
                for stale in work.glob("shard-*.npz"):
                    stale.unlink()
            else:
                flush_every = int(previous["flush_every"])  # keep the first run's blocks
                wanted["flush_every"] = flush_every
                status = "resumed"
        write_json_atomic(job_file, wanted)
        for stale in out.parent.glob(f".{out.name}.*.tmp"):  # temporaries of a killed final write
            stale.unlink()

        n = len(source)
        n_shards = (n + flush_every - 1) // flush_every
        missing = [k for k in range(n_shards) if not _shard_path(work, k).exists()]
        if status == "resumed" and len(missing) == n_shards:
            status = "computed"
        todo = [i for k in missing for i in range(k * flush_every, min((k + 1) * flush_every, n))]
        current().info(f"{job.method}: {n} images, {n - len(todo)} already done, {len(todo)} to compute "
                       f"with {workers} worker(s)")
        _STATE.update(source=source, compute=compute, kind=job.kind)
        try:
            buffer: list[EncodedResult] = []
            shard_iter = iter(missing)
            k = next(shard_iter, None)
            for result in progress(_results_in_order(source, todo, workers), total=len(todo),
                                   description=f"prepare {job.kind} ({job.method})"):
                buffer.append(result)
                if k is not None and len(buffer) == min((k + 1) * flush_every, n) - k * flush_every:
                    _write_shard(_shard_path(work, k), buffer)
                    buffer, k = [], next(shard_iter, None)
        finally:
            _STATE.clear()

        shards = [_shard_path(work, k) for k in range(n_shards)]
        totals = np.zeros(3, np.int64)
        for path in shards:
            totals += _shard_totals(path, job.kind)
        write_store(out, job.kind, attrs, (r for path in shards for r in _read_shard(path)),
                    {"images": int(totals[0]), "payload": int(totals[1]), "values": int(totals[2])})
    shutil.rmtree(work)
    return _report(out, status)


def _report(out: Path, status: str) -> dict[str, Any]:
    from sslcli.data.store import RegionStore

    store = RegionStore(out)
    try:
        skipped = store.skipped
        return {"store": str(out), "status": status, "kind": store.kind, "method": store.method,
                "parameters": store.parameters, "images": len(store), "skipped": len(skipped),
                "skipped_images": skipped}
    finally:
        store.close()
