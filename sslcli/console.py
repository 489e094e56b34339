"""What the running command says to the user: log lines, warnings and progress, under its --json/--quiet/--debug.

Library code calls `current()` and `progress`; the CLI only configures them (`set_current` when a command starts,
and in each spawned training rank). Human text goes to stderr so stdout stays machine-readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Output:
    """How the running command talks to the user. Human text goes to stderr so stdout stays machine-readable."""

    json: bool = False
    quiet: bool = False
    debug: bool = False
    said: set[str] = field(default_factory=set)  # messages `info_once` already printed in this command

    @property
    def interactive(self) -> bool:
        return sys.stderr.isatty() and not self.quiet and not self.json

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def info_once(self, message: str) -> None:
        """`info`, but at most once per command (e.g. a location several steps use)."""
        if message not in self.said:
            self.said.add(message)
            self.info(message)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)


# The options of the command being run; library code reaches it through `current()`.
_CURRENT = Output()


def current() -> Output:
    return _CURRENT


def set_current(output: Output) -> None:
    """Make ``output`` the options every later `current()` and `progress` call uses (one per command or rank)."""
    global _CURRENT
    _CURRENT = output


def progress(items: Iterable[T], total: int | None = None, description: str = "working",
             unit: str | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on a TTY, plain log lines (every 10 %) otherwise, nothing with --quiet.
    ``unit`` (e.g. "images"): also show the rate, items per second since the start."""
    out = current()
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if out.quiet:
        yield from items
        return
    if out.interactive:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        rate = (TextColumn(f"{{task.fields[rate]}} {unit}/s"),) if unit else ()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *rate, TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(description, total=total, rate="-")
            start, done = time.perf_counter(), 0
            for item in items:
                yield item
                done += 1
                bar.update(task, advance=1, rate=f"{_rate(done, start):.1f}")
        return
    step = max(1, (total or 0) // 10) if total else 100
    start, done = time.perf_counter(), 0
    for item in items:
        yield item
        done += 1
        if done % step == 0 or done == total:
            shown = f" ({_rate(done, start):.1f} {unit}/s)" if unit else ""
            out.info(f"{description}: {done}/{total if total is not None else '?'}{shown}")


def _rate(done: int, start: float) -> float:
    """Items per second since ``start`` (a perf_counter reading)."""
    return done / max(time.perf_counter() - start, 1e-9)
