"""Process lifetime helpers: child processes that die with their parent, and one run per output folder.

- `die_with_parent`: a worker or rank process asks the Linux kernel to SIGKILL it when its parent dies (a killed
  ``sslcli pretrain --gpus 2`` would otherwise leave its ranks training on, writing checkpoints).
- `available_cores`: the cores this process may run on (training threads, `prepare` workers).
- `FolderLock`: an exclusive ``fcntl.flock`` on ``<folder>/.sslcli.lock`` that records the holder's pid. The kernel
  releases a flock when its holder dies, however it dies, so a killed run never leaves a stale lock behind (only,
  perhaps, an unlocked file, which the next run takes over).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import sys
from pathlib import Path

from sslcli.errors import InputError

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
