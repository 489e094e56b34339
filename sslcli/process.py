"""Process lifetime helpers: child processes that die with their parent, one run per output folder, stop
signals, and `sslcli ... --json` child commands.

- `die_with_parent`: a worker or rank process asks the Linux kernel to SIGKILL it when its parent dies (a killed
  ``sslcli pretrain --gpus 2`` would otherwise leave its ranks training on, writing checkpoints).
- `available_cores`: the cores this process may run on (training threads, `prepare` workers).
- `FolderLock`: an exclusive ``fcntl.flock`` on ``<folder>/.sslcli.lock`` that records the holder's pid. The kernel
  releases a flock when its holder dies, however it dies, so a killed run never leaves a stale lock behind (only,
  perhaps, an unlocked file, which the next run takes over).
- Stop signals (`STOP_SIGNALS`: SIGINT, SIGTERM, SIGUSR1; a scheduler's preemption or time limit, Ctrl-C):
  `signals_raise` makes SIGTERM and SIGUSR1 raise `Interrupted` as SIGINT raises KeyboardInterrupt (`pretrain` runs
  under it: one clean line and exit code 128 + the signal's number instead of a silent death); `StopRequests` makes
  all three only record a request that the training loop acts on between steps; `SignalForwarder` passes them from
  a launcher to the ranks it spawned; `ignore_stop_signals` is for DataLoader workers. Python runs signal handlers in the main thread only, so each does nothing
  (leaves the handlers as they are) in another thread.
- `call`: run ``sslcli ARGS --json`` as a child that dies with this process (a killed ``study run`` must not leave
  its ``sslcli pretrain`` training on, holding the run folder's lock) and return its JSON result.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from sslcli.errors import InputError, Interrupted, SslcliError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LOCK_NAME = ".sslcli.lock"


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent exits (Linux; elsewhere a no-op).

    ``parent_pid`` is the parent's pid as the parent saw it: if the parent already died before this call, the process
    has been re-parented and exits now instead of waiting for a signal that will never come.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which taskset, cpusets and SLURM restrict), else cpu_count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class FolderLock:
    """``with FolderLock(folder, "output_dir"):`` holds the folder for this run; a second run exits 2 naming the
    folder and the pid of the run that holds it."""

    def __init__(self, folder: str | os.PathLike, what: str):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.created = False

    def __enter__(self) -> FolderLock:
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise InputError(f"{self.what} {self.folder}: another run (pid {holder}) is using this folder; wait "
                                 f"for it to finish or choose another {self.what}") from None
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)  # the holder removed the file between our open and our lock: take the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            # Removed while still locked (a newcomer that opened the old file sees it gone and retries), then
            # released. A killed holder leaves the file, unlocked: harmless, the next run takes it.
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None
            if self.created and not any(self.folder.iterdir()):
                with contextlib.suppress(OSError):  # something appeared meanwhile: keep it
                    self.folder.rmdir()  # a run that failed before writing anything leaves no trace


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
Handler = Callable[[int, FrameType | None], Any]


@contextlib.contextmanager
def _handling(signals: Iterable[int], handler: Handler) -> Iterator[bool]:
    """Install ``handler`` for ``signals`` inside the block and restore the previous handlers after it; yields
    whether it could (only the main thread can)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        yield True
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def signals_raise() -> contextlib.AbstractContextManager[bool]:
    """Inside the block SIGTERM and SIGUSR1 raise `Interrupted` (SIGINT keeps raising KeyboardInterrupt), so a
    stopped command unwinds: its atomic writes drop their temporary files, locks are released, the error is reported."""
    return _handling((signal.SIGTERM, signal.SIGUSR1), _raise_interrupted)


def ignore_stop_signals() -> None:
    """For a helper process whose parent decides when to stop (a DataLoader worker): a scheduler signals every process
    of a job, and a worker that died of it would fail the step its parent is finishing before the checkpoint."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


_Scope = TypeVar("_Scope", bound="_StopSignalScope")


class _StopSignalScope:
    """While entered, the stop signals call ``self._on_signal``; the previous handlers come back on exit."""

    _scope: contextlib.AbstractContextManager[bool] | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        raise NotImplementedError

    def __enter__(self: _Scope) -> _Scope:
        self._scope = _handling(STOP_SIGNALS, self._on_signal)
        self._scope.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._scope is not None
        self._scope.__exit__(None, None, None)


class StopRequests(_StopSignalScope):
    """``with StopRequests() as stops:`` a stop signal only sets ``stops.signum`` (the first one received; 0 while
    none came); the training loop reads it between steps, saves and stops. Signals after the first are only counted
    in ``stops.repeats``: a second Ctrl-C or a repeated SIGTERM cannot break into the checkpoint being written. The
    handler neither prints nor raises (either could corrupt what the main thread is in the middle of)."""

    def __init__(self) -> None:
        self.signum = 0
        self.repeats = 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:
            self.repeats += 1
        else:
            self.signum = signum


class SignalForwarder(_StopSignalScope):
    """``with SignalForwarder() as fwd:`` a stop signal to this process (a launcher) is sent on to the processes of
    ``fwd.add(pids)`` (its ranks, which save and stop) instead of stopping it; ``fwd.signum`` is the first one
    received. A signal that comes before the pids are known is sent to them when they are added."""

    def __init__(self) -> None:
        self.signum = 0
        self.pids: list[int] = []

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum
        self._send(signum)

    def _send(self, signum: int) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):  # a rank that has already exited
                os.kill(pid, signum)

    def add(self, pids: Iterable[int]) -> None:
        self.pids.extend(pids)
        if self.signum:
            self._send(self.signum)


# ------------------------------------------------------------------------------------------ sslcli child commands
def sslcli_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "sslcli", *args, "--json"]


def shown(cmd: list[str]) -> str:
    """A command as the user would type it."""
    return "sslcli " + shlex.join(cmd[3:]) if cmd[1:3] == ["-m", "sslcli"] else shlex.join(cmd)


def _dies_with(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` (runs in the forked child before exec) that ties the child's life to ``parent_pid``. prctl
    is looked up here, in the parent: the child only makes the call (no loader lock taken after fork)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

    def tie() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died between fork and here
            os._exit(1)

    return tie


def call(args: list[str], log: Callable[[str], None], verbose: bool,
         on_start: Callable[[subprocess.Popen], None] | None = None,
         env: Mapping[str, str] | None = None) -> tuple[dict, float, str]:
    """Run ``sslcli ARGS --json``; return (its JSON result, wall seconds, the command line). stderr is forwarded
    line by line when ``verbose``; a failure raises with the child's last error line and its exit code class.

    The child is SIGKILLed by the kernel when the thread that started it dies (kill -9 of this process included).
    ``on_start`` gets the child process (e.g. to wait for it from a signal handler). ``env``: variables set for the
    child on top of this process's environment (e.g. the device and threads of a `study run --jobs` slot)."""
    cmd = sslcli_command(args)
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env,
                                preexec_fn=_dies_with(os.getpid()))
        if on_start is not None:
            on_start(proc)
        tail: list[str] = []
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip("\n")
            tail = [*tail[-19:], line]
            if verbose:
                log(f"    {line}")
        code = proc.wait()
        stdout.seek(0)
        text = stdout.read()
    seconds = time.perf_counter() - start
    if code != 0:
        last = next((t for t in reversed(tail) if t.strip()), "(no message)")
        error = InputError if code == 2 else SslcliError
        raise error(f"{last.removeprefix('error: ')} [from: {shown(cmd)}]")
    lines = text.strip().splitlines()
    try:
        return json.loads(lines[-1]), seconds, shown(cmd)
    except (IndexError, json.JSONDecodeError):
        raise SslcliError(f"{shown(cmd)}: printed no JSON result") from None
