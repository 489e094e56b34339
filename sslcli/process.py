"""Process lifetime helpers: child processes that die with their parent, one run per output folder, stop signals.

- `die_with_parent`: a worker or rank process asks the Linux kernel to SIGKILL it when its parent dies (a killed
  ``sslcli pretrain --gpus 2`` would otherwise leave its ranks training on, writing checkpoints).
- `FolderLock`: an exclusive ``fcntl.flock`` on ``<folder>/.sslcli.lock`` that records the holder's pid. The kernel
  releases a flock when its holder dies, however it dies, so a killed run never leaves a stale lock behind (only,
  perhaps, an unlocked file, which the next run takes over).
- Stop signals (`STOP_SIGNALS`: SIGINT, SIGTERM, SIGUSR1; a scheduler's preemption or time limit, Ctrl-C):
  `signals_raise` makes SIGTERM and SIGUSR1 raise `Interrupted` as SIGINT raises KeyboardInterrupt (`pretrain` runs
  under it: one clean line and exit code 128 + the signal's number instead of a silent death); `StopRequests` makes
  all three only record a request that the training loop acts on between steps; `SignalForwarder` passes them from
  a launcher to the ranks it spawned; `ignore_stop_signals` is for DataLoader workers. Python runs signal handlers in the main thread only, so each does nothing
  (leaves the handlers as they are) in another thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from sslcli.errors import InputError, Interrupted

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


class StopRequests:
    """``with StopRequests() as stops:`` a stop signal only sets ``stops.signum`` (the first one received; 0 while
    none came); the training loop reads it between steps, saves and stops. Signals after the first are only counted
    in ``stops.repeats``: a second Ctrl-C or a repeated SIGTERM cannot break into the checkpoint being written. The
    handler neither prints nor raises (either could corrupt what the main thread is in the middle of)."""

    def __init__(self) -> None:
        self.signum = 0
        self.repeats = 0
        self._scope: contextlib.AbstractContextManager[bool] | None = None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:
            self.repeats += 1
        else:
            self.signum = signum

    def __enter__(self) -> StopRequests:
        self._scope = _handling(STOP_SIGNALS, self._record)
        self._scope.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._scope is not None
        self._scope.__exit__(None, None, None)


class SignalForwarder:
    """``with SignalForwarder() as fwd:`` a stop signal to this process (a launcher) is sent on to the processes of
    ``fwd.add(pids)`` (its ranks, which save and stop) instead of stopping it; ``fwd.signum`` is the first one
    received. A signal that comes before the pids are known is sent to them when they are added."""

    def __init__(self) -> None:
        self.signum = 0
        self.pids: list[int] = []
        self._scope: contextlib.AbstractContextManager[bool] | None = None

    def _forward(self, signum: int, frame: FrameType | None) -> None:
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

    def __enter__(self) -> SignalForwarder:
        self._scope = _handling(STOP_SIGNALS, self._forward)
        self._scope.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._scope is not None
        self._scope.__exit__(None, None, None)
