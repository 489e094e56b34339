"""How many compute threads each training process uses.

torch defaults to one intra-op thread per physical core in every process. With several ranks on a node, or DataLoader
workers decoding in parallel, the processes then fight for the same cores: a 2-core CPU run with torch's default ran
9x slower than with one thread (issue 14). The policy: split the cores evenly between the ranks of the node, and give
each DataLoader worker of a rank one of its cores (workers run one thread each, see `worker_threads`); the rank's
compute gets what is left, at least one thread. The choice depends only on the cores this process may use, never on
the machine's momentary load, so the same spec on the same machine always computes with the same thread count (CPU
float reductions depend on it, and studies compare runs number for number). On a machine shared with other jobs an
OpenMP thread that waits for a core stalls its siblings at every barrier (measured: 2 threads on a 2-core machine
running other jobs trained up to 40x slower than 1 thread): there, set ``data.threads: 1`` or ``OMP_NUM_THREADS=1``.

Overrides, strongest first: the spec field ``data.threads``, then ``OMP_NUM_THREADS`` when set in the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from sslcli.process import available_cores

if TYPE_CHECKING:
    from sslcli.spec import RunSpec

WORKER_THREADS = 1  # DataLoader workers decode and augment single images: one thread each


def compute_threads(cores: int, ranks_per_node: int, workers: int) -> int:
    """Intra-op threads for one rank: its share of the node's cores minus one core per DataLoader worker, ≥ 1."""
    if cores < 1 or ranks_per_node < 1 or workers < 0:
        raise ValueError(f"compute_threads: cores={cores}, ranks_per_node={ranks_per_node}, workers={workers}: "
                         "expected cores ≥ 1, ranks_per_node ≥ 1, workers ≥ 0")
    return max(1, cores // ranks_per_node - workers)


def choose_threads(spec_threads: int | None, ranks_per_node: int, workers: int,
                   env: Mapping[str, str] | None = None, cores: int | None = None) -> tuple[int, str]:
    """The thread count for this rank and where it came from (for the log line)."""
    if env is None:
        env = os.environ
    if spec_threads is not None:
        return spec_threads, "data.threads"
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp:
        if not omp.isdigit() or int(omp) < 1:
            from sslcli.errors import InputError

            raise InputError(f"OMP_NUM_THREADS={omp!r}: expected a positive integer")
        return int(omp), "OMP_NUM_THREADS"
    cores = available_cores() if cores is None else cores
    return (compute_threads(cores, ranks_per_node, workers),
            f"{cores} core(s) / {ranks_per_node} rank(s) on this node − {workers} DataLoader worker(s)")


def configure_threads(spec: RunSpec) -> str:
    """Set this rank's intra-op (and inter-op) thread counts from the policy; return the line that says what was
    chosen and why (the trainer logs it once the run's inputs are checked, so a refused run prints one line only)."""
    ranks_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads, why = choose_threads(spec.data.threads, ranks_per_node, spec.data.workers)
    torch.set_num_threads(threads)
    # The inter-op pool only serves TorchScript forks and a few async ops; no larger than the compute budget. torch
    # fixes it once any inter-op work has run in this process, so a second run in one process keeps the first value.
    interop = min(threads, torch.get_num_interop_threads())
    try:
        torch.set_num_interop_threads(interop)
    except RuntimeError:
        interop = torch.get_num_interop_threads()
    return (f"threads: {threads} compute thread(s) per rank ({why}), {interop} inter-op, {WORKER_THREADS} per "
            "DataLoader worker; set data.threads or OMP_NUM_THREADS to change")


def keep_thread_count(saved: int | None, spec_threads: int | None) -> bool:
    """On resume, compute with the thread count the checkpoint was written with (CPU float reductions depend on it,
    so this keeps a resume bit-identical when e.g. ``data.workers`` changed), unless the count was set explicitly."""
    if saved and spec_threads is None and not os.environ.get("OMP_NUM_THREADS", "").strip():
        changed = int(saved) != torch.get_num_threads()
        torch.set_num_threads(int(saved))
        return changed
    return False


def worker_threads() -> None:
    """Called in each DataLoader worker: one compute thread (torch and OpenCV)."""
    import cv2

    torch.set_num_threads(WORKER_THREADS)
    cv2.setNumThreads(WORKER_THREADS)
