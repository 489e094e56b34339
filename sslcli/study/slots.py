"""`study run --jobs N`: N commands at once, each in a slot that owns a device and a share of the cores.

A slot is one of N places a command (a training run, a prepare chain, an evaluation) runs in. Slot k gives its
commands ``CUDA_VISIBLE_DEVICES`` = the visible CUDA devices' k-th, round-robin (8 jobs on one GPU: all eight share
it; on two GPUs: four each), so a run's `cuda:0` is its slot's device, and ``OMP_NUM_THREADS`` = cores // N (at
least 1), the thread policy of `sslcli.engine.threads` split between N processes. A command takes a free slot and
gives it back when it ends, so the N commands running at any moment always hold N different slots (the devices stay
balanced however long each command takes).

With ``--jobs 1`` nothing is set: the one command inherits this process's environment, as before --jobs existed.
An ``OMP_NUM_THREADS`` set by the user is kept (an explicit choice, as in the engine's policy), and so is a
``CUDA_VISIBLE_DEVICES`` list: its entries are the devices shared out.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sslcli.process import available_cores

T = TypeVar("T")
R = TypeVar("R")


def visible_devices(env: Mapping[str, str] | None = None) -> list[str]:
    """The CUDA devices this process may use, named as CUDA_VISIBLE_DEVICES names them: that variable's entries
    when it is set, else "0" … "n-1" for the n devices torch counts (none on a machine without CUDA)."""
    env = os.environ if env is None else env
    given = env.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip()]
    import torch  # only here: the study process needs torch for nothing else

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def slot_env(slot: int, jobs: int, devices: list[str], cores: int,
             env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables slot ``slot`` of ``jobs`` sets for its commands (see the module docstring)."""
    env = os.environ if env is None else env
    if jobs == 1:
        return {}
    out = {}
    if not env.get("OMP_NUM_THREADS", "").strip():
        out["OMP_NUM_THREADS"] = str(max(1, cores // jobs))
    if devices:
        out["CUDA_VISIBLE_DEVICES"] = devices[slot % len(devices)]
    return out


class Slots:
    """``jobs`` slots; ``map(fn, items)`` calls ``fn(item, env)`` for every item, ``jobs`` at once, each call in a
    free slot whose variables are ``env``; results in the items' order, the first exception re-raised."""

    def __init__(self, jobs: int, devices: list[str] | None = None, cores: int | None = None,
                 env: Mapping[str, str] | None = None):
        if jobs < 1:
            raise ValueError(f"jobs={jobs}: expected at least 1")
        if devices is None:
            devices = visible_devices(env) if jobs > 1 else []
        cores = available_cores() if cores is None else cores
        self.jobs = jobs
        self.envs = [slot_env(k, jobs, devices, cores, env) for k in range(jobs)]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for k in range(jobs):
            self._free.put(k)

    def map(self, fn: Callable[[T, dict[str, str]], R], items: Iterable[T]) -> list[R]:
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:  # threads only wait on the subprocesses
            return list(pool.map(lambda item: self._in_slot(fn, item), items))

    def _in_slot(self, fn: Callable[[T, dict[str, str]], R], item: T) -> R:
        slot = self._free.get()  # never waits: the pool runs at most `jobs` calls at once
        try:
            return fn(item, self.envs[slot])
        finally:
            self._free.put(slot)
