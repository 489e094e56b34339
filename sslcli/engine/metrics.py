"""Training metrics: JSON lines in ``output_dir/metrics.jsonl``, optional TensorBoard, and the progress display.

Each line is one record: ``{"type": "step", "step": completed steps, "epoch", "loss", <other losses>, "lr",
"images_per_s", "time"}`` every ``logging.every_steps`` steps and ``{"type": "epoch", ...}`` at each epoch end.
On resume, records after the checkpoint's step are dropped first (and the row of a stop off the ``every_steps``
grid), so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sslcli.console import current
from sslcli.io import write_text_atomic

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends records to metrics.jsonl (and TensorBoard scalars when enabled). Only rank 0 creates one."""

    def __init__(self, output_dir: str | Path, tensorboard: bool, resume_step: int | None = None,
                 every_steps: int = 1):
        self.path = Path(output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if _step_of(line) <= resume_step and not _stop_row(line, resume_step, every_steps)]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        elif resume_step is None:
            write_text_atomic(self.path, "")
        self.file = open(self.path, "a")  # noqa: SIM115 - kept open for the run, closed in close()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                current().warn("logging.tensorboard: the tensorboard package is not installed; "
                               f"metrics go to {self.path} only (pip install tensorboard)")
            else:
                self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            prefix = record["type"]
            for key, value in record.items():
                if isinstance(value, float) and key != "time":
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _stop_row(line: str, resume_step: int, every_steps: int) -> bool:
    """The step row a run stopped off the logging grid wrote at its last step (``max_steps``): an uninterrupted run
    has no such row, so a resumed one drops it."""
    if resume_step % every_steps == 0:
        return False
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    return bool(record.get("type") == "step" and record.get("step") == resume_step)


def _step_of(line: str) -> float:
    try:
        step: float = json.loads(line).get("step", float("inf"))
    except (json.JSONDecodeError, AttributeError):
        return float("inf")  # a half-written last line of a killed run: drop it
    return step


class TrainProgress:
    """A rich progress bar (loss, lr, images/s, ETA) on a TTY; a plain line every ``every`` steps otherwise."""

    def __init__(self, total_steps: int, done_steps: int, every: int, enabled: bool = True):
        out = current()
        self.total, self.every = total_steps, every
        self.enabled = enabled and not out.quiet
        self.bar = None
        self.start_time, self.start_done = time.perf_counter(), done_steps
        if self.enabled and out.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[ips]} img/s"),
                                TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("pretrain", total=total_steps, completed=done_steps, loss="-", lr="-",
                                          ips="-")

    def update(self, done: int, epoch: int, epochs: int, loss: float, lr: float, images_per_s: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=done, description=f"epoch {epoch + 1}/{epochs}", loss=f"{loss:.4f}",
                            lr=f"{lr:.3g}", ips=f"{images_per_s:.0f}")
        elif done % self.every == 0 or done == self.total:
            rate = (done - self.start_done) / max(time.perf_counter() - self.start_time, 1e-9)
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            current().info(f"epoch {epoch + 1}/{epochs} step {done}/{self.total} loss {loss:.4f} lr {lr:.4g} "
                           f"{images_per_s:.1f} img/s eta {_hms(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _hms(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
