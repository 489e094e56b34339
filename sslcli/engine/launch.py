"""Start training in one or several processes with torch.distributed (the env:// rendezvous torchrun uses).

- ``--gpus 0`` (default): one process on the best device (GPU 0 if there is one, else the CPU).
- ``--gpus N``: N local processes, one per GPU with NCCL; on a machine without GPUs, N CPU processes with gloo.
- multi-node: ``--nodes M --node-rank i --master-addr H --master-port P`` on every node gives ranks
  ``i·N … i·N+N−1`` of ``M·N`` (MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE/LOCAL_RANK, as torchrun sets them).
- under ``torchrun`` (RANK, WORLD_SIZE and LOCAL_RANK already in the environment) this process is one rank and
  nothing is spawned.
Errors in any rank come back as one line (the first rank to report); the other ranks are stopped.
A stop signal (SIGINT, SIGTERM, SIGUSR1) to the launcher is forwarded to its ranks, which save a step checkpoint and
stop together (engine/trainer.py); the launcher then raises the ranks' `Interrupted`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.queues import SimpleQueue
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, start_processes

from sslcli import console
from sslcli.errors import InputError, Interrupted, SslcliError
from sslcli.io import check_writable_dir
from sslcli.process import FolderLock, SignalForwarder, die_with_parent
from sslcli.spec import RunSpec, consistency_problems

# A rank that dies leaves the others blocked in a collective; the parent stops them, this is only the backstop.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def _under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def launch(spec: RunSpec, resume: str | None = None, gpus: int = 0, nodes: int = 1, node_rank: int = 0,
           master_addr: str = "127.0.0.1", master_port: int = 29500,
           init_hook: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train ``spec`` on this machine's share of the ranks; returns rank 0's result dict (on node 0).

    ``init_hook`` (a picklable module-level function) runs first in every process that trains (each spawned rank, or
    this process for a single-process run), e.g. to put a stand-in method in the method registry; the launcher's own
    preflight checks of a multi-process run build the method this process registers.
    """
    if gpus < 0 or nodes < 1 or not 0 <= node_rank < nodes:
        raise InputError(f"--gpus {gpus} --nodes {nodes} --node-rank {node_rank}: expected gpus ≥ 0, nodes ≥ 1 and "
                         "0 ≤ node-rank < nodes")
    if _under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        _check_spec(spec, world)
        with _output_lock(spec, int(os.environ["RANK"]) == 0):
            return _run_rank(int(os.environ["LOCAL_RANK"]), spec, resume, world > 1)
    if torch.cuda.is_available() and gpus > torch.cuda.device_count():
        raise InputError(f"--gpus {gpus}: this machine has {torch.cuda.device_count()} GPU(s)")
    procs = max(gpus, 1)
    world = procs * nodes
    _check_spec(spec, world)
    with _output_lock(spec, node_rank == 0):
        if world == 1:
            if init_hook is not None:
                init_hook()
            return _run_rank(0, spec, resume, distributed=False)
        _preflight(spec, resume)
        return _spawn(spec, resume, procs, nodes, node_rank, master_addr, master_port, init_hook)


def _output_lock(spec: RunSpec, holder: bool) -> contextlib.AbstractContextManager[Any]:
    """One run per output folder, held by the process that writes it (node 0's launcher, or torchrun's rank 0) for
    the whole run: two `--resume auto` runs on one folder would otherwise both train into it."""
    if not holder:
        return contextlib.nullcontext()
    check_writable_dir(spec.output_dir, "output_dir")
    return FolderLock(spec.output_dir, "output_dir")


def _preflight(spec: RunSpec, resume: str | None) -> None:
    """Check the input once here, before N processes each fail on it and torch stops the others noisily. The method
    is the one this process registers: ``init_hook`` runs in the spawned ranks only, so it cannot change this
    process's method registry."""
    from pathlib import Path

    from sslcli.data.readers.sources import open_source
    from sslcli.engine.trainer import checkpoint_to_resume
    from sslcli.methods import build_method

    checkpoint_to_resume(resume, Path(spec.output_dir))
    open_source(spec.data.root, spec.data.split, spec.data.format)
    build_method(spec).transform()  # methods validate their options, their transforms the region stores


def _check_spec(spec: RunSpec, world: int) -> None:
    problems = consistency_problems(spec, world)
    if problems:
        raise InputError("; ".join(problems))


def _run_rank(local_rank: int, spec: RunSpec, resume: str | None, distributed: bool) -> dict[str, Any]:
    from sslcli.engine.threads import configure_threads
    from sslcli.engine.trainer import train

    threads_note = configure_threads(spec)  # every rank sets its threads; rank 0 logs the line once checks pass
    device = _device(local_rank)
    if distributed:
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                      timeout=COLLECTIVE_TIMEOUT)
    try:
        return train(spec, device, resume, threads_note=threads_note)
    finally:
        if distributed:
            torch_dist.destroy_process_group()


def _spawn(spec: RunSpec, resume: str | None, procs: int, nodes: int, node_rank: int, master_addr: str,
           master_port: int, init_hook: Callable[[], None] | None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    reports = ctx.SimpleQueue()
    out = console.current()
    args = (procs, nodes, node_rank, master_addr, master_port, spec, resume, init_hook, reports,
            (out.json, out.quiet, out.debug), os.getpid())
    # A stop signal goes on to the ranks, which save and stop; this process waits for them instead of dying.
    with SignalForwarder() as forwarder:
        processes = start_processes(_child, args=args, nprocs=procs, join=False, start_method="spawn")
        forwarder.add(processes.pids())
        failure = _join(processes, out.debug)
    results: list[tuple[Any, ...]] = []
    errors: list[tuple[Any, ...]] = []
    while not reports.empty():
        kind, rank, *rest = reports.get()
        if kind == "interrupted":  # rank 0 saved after the step every rank stopped at
            raise Interrupted(*rest)
        (results if kind == "ok" else errors).append((rank, *rest))
    if forwarder.signum and (errors or failure is not None):  # the signal stopped the ranks before they could save
        raise Interrupted(forwarder.signum)
    if errors:
        _, code, message = errors[0]
        raise (InputError if code == 2 else SslcliError)(message)
    if failure is not None:
        raise SslcliError(f"training process {failure.error_index} of node {node_rank} failed: {failure}")
    return results[0][1] if results else {"node_rank": node_rank, "world_size": procs * nodes}


def _join(processes: Any, debug: bool) -> ProcessExitedException | ProcessRaisedException | None:
    """Wait for every rank; the exception of the first rank that failed, or None."""
    failure = None
    # When one rank fails torch stops the others with a logged "Terminating process … via signal SIGTERM": that is
    # the expected clean-up, the user gets the failing rank's one-line error instead (and the log with --debug).
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    if not debug:
        spawn_log.setLevel(logging.ERROR)
    try:
        while not processes.join():
            pass
    except (ProcessExitedException, ProcessRaisedException) as exc:
        failure = exc
    finally:
        spawn_log.setLevel(level)
    return failure


def _child(local_rank: int, procs: int, nodes: int, node_rank: int, master_addr: str, master_port: int,
           spec: RunSpec, resume: str | None, init_hook: Callable[[], None] | None,
           reports: SimpleQueue[tuple[Any, ...]], flags: tuple[bool, bool, bool], parent_pid: int) -> None:
    """One spawned rank: set torchrun's environment, train, report the result or the error on ``reports``."""
    die_with_parent(parent_pid)  # a killed launcher takes its ranks with it (they would train on, unseen)
    console.set_current(console.Output(*flags))
    rank = node_rank * procs + local_rank
    os.environ.update({"MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "RANK": str(rank),
                       "WORLD_SIZE": str(procs * nodes), "LOCAL_RANK": str(local_rank),
                       "LOCAL_WORLD_SIZE": str(procs)})
    try:
        if init_hook is not None:
            init_hook()
        result = _run_rank(local_rank, spec, resume, distributed=True)
        if rank == 0:
            reports.put(("ok", rank, result))
    except Interrupted as exc:  # every rank stopped after the same step; exit 0, or torch would stop the others
        if rank == 0:
            reports.put(("interrupted", rank, exc.signum, exc.step, exc.checkpoint))
    except SslcliError as exc:
        reports.put(("error", rank, exc.exit_code, str(exc)))
        sys.exit(exc.exit_code)
    except BaseException as exc:  # noqa: BLE001 - reported as one line, the parent raises it
        if flags[2]:
            traceback.print_exc()
        reports.put(("error", rank, 1, f"rank {rank}: {type(exc).__name__}: {exc}"))
        sys.exit(1)
