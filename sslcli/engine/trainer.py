"""The training loop shared by every method (one process; `launch.py` starts one per rank).

Per step: move the batch to the device → ``losses = method(batch, StepInfo)`` under autocast (GPU, bf16/fp16) →
check the loss is finite on every rank → backward (GradScaler for fp16) → optional gradient-norm clipping →
optimiser step → ``method.after_step`` (momentum encoders, queues). The lr comes from a pure schedule function of the
step, so resumed runs match uninterrupted ones; at each epoch end rank 0 writes ``last.pt`` (and
``epoch_XXXX.pt`` every ``checkpoint_every`` epochs) atomically, and mid-epoch every ``checkpoint_every_steps`` steps
or ``checkpoint_every_minutes`` minutes.

Stop signals (SIGINT, SIGTERM, SIGUSR1; `sslcli.process.StopRequests`): the handler only records the signal; after
each step the ranks agree on it (an all-reduce, so all stop after the same step and none waits alone in a
collective), write ``last.pt`` (rank 0, every rank gathering its RNG state, then a barrier) and raise
`sslcli.errors.Interrupted`: exit code 128 + the signal's number. ``--resume auto`` continues from that step
bit-identically.

Distributed: the method is wrapped in DDP without per-forward buffer sync (``broadcast_buffers=False``, called
``forward_sync_buffers=False`` since torch 2.14; buffers are still synced once when wrapping): queues are kept identical on every rank by
construction (each rank enqueues the same all-gathered keys), so broadcasting them every step would only cost time
(MoCo's 65536×128 queue: 32 MB per step, kNN's feature queue 512 MB); BatchNorm running statistics stay per rank
(rank 0's are checkpointed); they never enter the training loss. Parameters without gradients (momentum encoders,
EMA targets) are invisible to DDP; ``find_unused_parameters`` is off unless a method sets the attribute
``find_unused_parameters = True`` (for parameters that are trainable but skipped in some steps).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as torch_dist
from torch import nn

import sslcli
from sslcli import distributed as dist
from sslcli.console import current
from sslcli.engine.data import SKIPPED_KEY, EpochBatchSampler, Sample, build_loader, derive_seed, stop_workers
from sslcli.engine.metrics import MetricsLog, TrainProgress
from sslcli.engine.optim import build_optimizer, set_lr
from sslcli.engine.schedules import lr_at
from sslcli.engine.threads import keep_thread_count
from sslcli.engine.training_checkpoint import (
    FORMAT,
    LAST,
    VERSION,
    capture_rng,
    check_resumable,
    epoch_name,
    load_checkpoint,
    remove_stale_temporaries,
    resolve_resume,
    restore_rng,
    save_checkpoint,
)
from sslcli.errors import InputError, Interrupted, SslcliError
from sslcli.io import write_text_atomic
from sslcli.methods import build_method
from sslcli.methods.base import Method, StepInfo
from sslcli.process import StopRequests
from sslcli.spec import RunSpec, dump_spec

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(SslcliError):
    """The loss became NaN or infinite; the run stops, the last good checkpoint is left untouched."""


# |value| no healthy run's parameters, floating buffers or eval-mode features approach: weights start below 1 and
# weight decay keeps them near it, BatchNorm's running variance of normalised inputs stays within a few orders of 1,
# queues hold unit vectors and features are O(1), while a diverged run passes it within an epoch (MoCo-v2 at lr 1000 on tiny-COCO: conv weights of ~200
# and BN running variances of 1.5e8 after one epoch, at a chance-level loss that never became NaN; such a checkpoint
# gives NaN features). Above it a checkpoint is not written.
WEIGHT_LIMIT = 1e6


class DivergedWeights(SslcliError):
    """A parameter, floating buffer or eval-mode feature became non-finite or exceeded WEIGHT_LIMIT; the run stops
    before writing that state, so the last checkpoint on disk is the last healthy one."""


@dataclass
class StepResult:
    losses: dict[str, float]
    lr: float


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Owns the method, its optimiser, AMP and (when distributed) the DDP wrapper; `step` trains on one batch."""

    def __init__(self, spec: RunSpec, device: torch.device):
        self.spec, self.device = spec, device
        on_gpu = device.type == "cuda"
        self.amp_dtype = _AMP_DTYPES.get(spec.precision) if on_gpu else None
        self.channels_last = on_gpu and spec.channels_last
        if on_gpu:
            torch.backends.cudnn.benchmark = True
        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's at wrap time).
        seed_everything(spec.seed)
        method = build_method(spec).to(device)
        if self.channels_last:
            method = method.to(memory_format=torch.channels_last)
        self.method: Method = method
        self.optimizer = build_optimizer(method, spec.optimizer, spec.lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.model: nn.Module = method
        self.trainable = [p for p in method.parameters() if p.requires_grad]

    def wrap_distributed(self) -> None:
        if not dist.is_distributed():
            return
        from torch.nn.parallel import DistributedDataParallel

        # Buffers are synced once at wrap time, never per forward (see the module docstring). torch ≥ 2.14 renamed
        # broadcast_buffers to forward_sync_buffers.
        no_buffer_sync: dict[str, Any] = ({"forward_sync_buffers": False}
                          if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})
        self.model = DistributedDataParallel(
            self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=getattr(self.method, "find_unused_parameters", False), **no_buffer_sync)

    def to_device(self, batch: Any) -> Any:
        """Move every tensor of a (nested) batch to the device; images (4-D float, 3 channels) to channels_last."""
        if isinstance(batch, torch.Tensor):
            batch = batch.to(self.device, non_blocking=True)
            if self.channels_last and batch.ndim == 4 and batch.is_floating_point() and batch.shape[1] == 3:
                batch = batch.contiguous(memory_format=torch.channels_last)
            return batch
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(v) for v in batch)
        return batch

    def lr_at(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        return lr_at(self.spec.schedule, self.spec.lr, step, steps_per_epoch, total_steps)

    def step(self, batch: Sample, info: StepInfo) -> StepResult:
        """One optimisation step on ``batch`` (already on the device). Raises NonFiniteLoss before any update."""
        lr = self.lr_at(info.step, info.steps_per_epoch, info.total_steps)
        set_lr(self.optimizer, lr)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            losses = self.model(batch, info)
        if "loss" not in losses:
            name = self.spec.method.name  # type: ignore[attr-defined]  # every registered method spec has one
            raise SslcliError(f"method {name!r} returned no 'loss' (got {sorted(losses)})")
        names = list(losses)
        values = dist.all_reduce_mean(torch.stack([losses[k].detach().float() for k in names])).tolist()
        logged = dict(zip(names, values))
        if not math.isfinite(logged["loss"]):
            raise NonFiniteLoss(f"loss is {logged['loss']} at step {info.step + 1} (epoch {info.epoch + 1}); "
                                "training stopped, the last good checkpoint is kept")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        if self.spec.optimizer.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.spec.optimizer.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_step(info)
        return StepResult(logged, lr)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def state(self, epoch: int, step: int, steps_per_epoch: int,
              epoch_stats: dict[str, float] | None = None) -> dict[str, Any]:
        """The checkpoint dict (call on every rank: the RNG states are gathered to all). ``epoch_stats`` holds the
        running sums of the epoch in progress (a run stopped mid-epoch logs the whole epoch's mean when resumed)."""
        rng = capture_rng()
        ranks: list[dict[str, Any] | None] = [rng]
        if dist.is_distributed():
            ranks = [None] * dist.world_size()
            torch_dist.all_gather_object(ranks, rng)
        return {"format": FORMAT, "version": VERSION, "spec": self.spec.model_dump(mode="json"),
                "arch": self.spec.model.arch, "width": self.spec.model.width,
                "stem": self.spec.model.stem,
                "backbone": _cpu(self.method.backbone().state_dict()), "method": _cpu(self.method.state_dict()),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": epoch, "step": step, "steps_per_epoch": steps_per_epoch, "world_size": dist.world_size(),
                "rng": {"ranks": ranks}, "epoch_stats": epoch_stats or {"loss_sum": 0.0, "steps": 0},
                "threads": torch.get_num_threads(),
                "sslcli_version": sslcli.__version__}

    def health_problem(self) -> str | None:
        """Why the current state is not worth a checkpoint (diverged), or None: a parameter or floating buffer that is
        non-finite or beyond WEIGHT_LIMIT, or eval-mode backbone features (what probes compute) that are."""
        tensors = [*self.method.named_parameters(), *self.method.named_buffers()]
        names, values = zip(*[(n, t) for n, t in tensors if t.is_floating_point() and t.numel()])
        peaks = torch.stack([t.detach().abs().amax().float() for t in values]).tolist()  # one device sync
        for name, peak in zip(names, peaks):
            if not math.isfinite(peak) or peak > WEIGHT_LIMIT:
                return f"{name} reached |value| {peak:.3g}"
        peak = self.eval_feature_peak()
        if not math.isfinite(peak) or peak > WEIGHT_LIMIT:
            return f"the backbone's eval-mode features reached |value| {peak:.3g}"
        return None

    def eval_feature_peak(self) -> float:
        """Largest |feature| of the backbone in eval mode, as probes run it, on two fixed noise images. Weights that
        jumped in one step leave BatchNorm's running statistics behind, so eval-mode activations overflow although
        every weight is moderate. Uses its own generator: the run's random streams are untouched."""
        backbone = self.method.backbone()
        modes = {module: module.training for module in backbone.modules()}
        size = self.spec.data.image_size
        noise = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(self.device)
        backbone.eval()
        try:
            with torch.no_grad():
                return float(backbone(noise).abs().amax().float())
        finally:
            for module, training in modes.items():
                module.training = training

    def load_state(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])


def _cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def checkpoint_to_resume(resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint a run continues from (None: a new run); refuses to start over an existing run."""
    resume_path = resolve_resume(resume, output_dir)
    if resume_path is None and (output_dir / LAST).is_file():
        raise InputError(f"output_dir {output_dir}: already holds a checkpoint ({LAST}); pass --resume auto to "
                         "continue it or choose another output_dir")
    return resume_path


@dataclass
class Position:
    """Where the run stands: steps done, and the running sums of the epoch in progress (a run stopped mid-epoch logs
    the whole epoch's mean when resumed)."""

    steps_per_epoch: int
    total_steps: int
    done: int = 0
    epoch_stats: dict[str, float] = field(default_factory=lambda: {"loss_sum": 0.0, "steps": 0})
    last_loss: float = float("nan")

    @property
    def epoch_done(self) -> bool:
        return self.done % self.steps_per_epoch == 0

    def add_step(self, loss: float) -> None:
        self.done += 1
        self.last_loss = loss
        self.epoch_stats["loss_sum"] += loss
        self.epoch_stats["steps"] += 1

    def epoch_mean(self) -> float:
        return self.epoch_stats["loss_sum"] / max(self.epoch_stats["steps"], 1)

    def new_epoch(self) -> None:
        self.epoch_stats = {"loss_sum": 0.0, "steps": 0}


@dataclass
class Throughput:
    """Training images per second of the run; its first step is left out (it pays for worker start-up and
    allocator warm-up)."""

    batch_size: int
    images: int = 0
    seconds: float = 0.0

    def add(self, done: int, step_seconds: float) -> float:
        """Count step number ``done`` (1-based) that took ``step_seconds``; returns that step's images/s."""
        if done > 1:
            self.images += self.batch_size
            self.seconds += step_seconds
        return self.batch_size / max(step_seconds, 1e-9)

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds else None


def train(spec: RunSpec, device: torch.device, resume: str | None = None,
          threads_note: str | None = None) -> dict[str, Any]:
    """Train ``spec`` in this process (rank and world from `sslcli.distributed`); returns the run's result dict.
    A stop signal ends it after the current step with ``last.pt`` saved, raising `Interrupted`."""
    with StopRequests() as stops:
        return _train(spec, device, resume, threads_note, stops)


def _train(spec: RunSpec, device: torch.device, resume: str | None, threads_note: str | None,
           stops: StopRequests) -> dict[str, Any]:
    rank, world = dist.rank(), dist.world_size()
    output_dir = Path(spec.output_dir)
    resume_path = checkpoint_to_resume(resume, output_dir)
    _announce(spec, device, resume, resume_path)
    trainer = Trainer(spec, device)
    state = load_checkpoint(resume_path) if resume_path is not None else None
    start_epoch = state["step"] // state["steps_per_epoch"] if state else 0
    loader, sampler = build_loader(spec, trainer.method.transform(), rank, world, start_epoch,
                                   pin_memory=spec.data.pin_memory and device.type == "cuda")
    position = Position(sampler.steps_per_epoch, spec.schedule_steps(sampler.steps_per_epoch))
    if rank == 0:
        _announce_length(spec, sampler.steps_per_epoch)
    if state is not None:
        assert resume_path is not None
        threads_note = resume_from(state, resume_path, trainer, position, threads_note)
        del state  # the loop holds its own copies; free the checkpoint's tensors
    else:
        # Per-rank random stream for training-time randomness (e.g. shuffle-BN permutations).
        seed_everything(derive_seed(spec.seed, rank, 0))
    if rank == 0 and threads_note:
        current().info(threads_note)
    trainer.wrap_distributed()
    if rank == 0:
        _prepare_output_dir(output_dir, spec)
    loop = EpochLoop(trainer, loader, sampler, position, resumed=resume_path is not None, stops=stops)
    loop.run()
    return {"output_dir": str(output_dir), "epochs": position.done / position.steps_per_epoch,
            "steps": position.done, "final_loss": position.last_loss,
            "images_per_s": loop.throughput.images_per_s, "checkpoint": str(output_dir / LAST),
            "corrupt_images": len(_corrupt_on_all_ranks(loop.corrupt)), "world_size": world, "device": str(device)}


def _announce(spec: RunSpec, device: torch.device, resume: str | None, resume_path: Path | None) -> None:
    out = current()
    if resume == "auto" and resume_path is None:
        out.info(f"--resume auto: no {Path(spec.output_dir) / LAST} yet, starting a new run")
    if device.type != "cuda" and spec.precision != "fp32" and dist.rank() == 0:
        out.info(f"precision {spec.precision}: mixed precision is for GPUs; this CPU run computes in fp32")


def _announce_length(spec: RunSpec, steps_per_epoch: int) -> None:
    """Say so when max_steps takes the run past its epochs (the data set's size decides it, so only now)."""
    epochs_steps = spec.epochs * steps_per_epoch
    if spec.max_steps is not None and spec.max_steps > epochs_steps:
        current().info(f"max_steps {spec.max_steps} is more than epochs x steps per epoch ({spec.epochs} x "
                       f"{steps_per_epoch} = {epochs_steps}): the run trains {spec.max_steps} steps "
                       f"({-(-spec.max_steps // steps_per_epoch)} epochs) and its schedule spans them")


def resume_from(state: dict[str, Any], path: Path, trainer: Trainer, position: Position,
                threads_note: str | None) -> str | None:
    """Check ``state`` fits this run, load it into ``trainer`` and ``position`` and restore this rank's random
    streams; returns the threads note to print (the checkpoint's thread count may replace the chosen one)."""
    spec, spe, rank, world = trainer.spec, position.steps_per_epoch, dist.rank(), dist.world_size()
    check_resumable(state, spec.model_dump(mode="json"), path, spe)
    trainer.load_state(state)
    if keep_thread_count(state.get("threads"), spec.data.threads) and threads_note:
        threads_note = f"threads: {torch.get_num_threads()} compute thread(s) per rank (kept from the checkpoint)"
    position.done = state["step"]
    if position.done % spe:  # stopped mid-epoch: the epoch's mean goes on from the steps before the stop
        position.epoch_stats = dict(state.get("epoch_stats") or position.epoch_stats)
    if position.done >= position.total_steps:
        raise InputError(f"{path}: already trained {position.done} steps of {position.total_steps}; raise epochs "
                         "or max_steps to continue")
    ranks = state["rng"]["ranks"]
    if len(ranks) == world:
        restore_rng(ranks[rank])
    else:
        current().warn(f"{path}: saved by {len(ranks)} processes, resumed with {world}: random streams reseeded")
        seed_everything(derive_seed(spec.seed, rank, position.done))
    if rank == 0:
        current().info(f"resuming from {path} at step {position.done} (epoch {position.done // spe + 1})")
    return threads_note


def _prepare_output_dir(output_dir: Path, spec: RunSpec) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir)
    write_text_atomic(output_dir / "spec.yaml", dump_spec(spec))


def _corrupt_on_all_ranks(corrupt: set[str]) -> set[str]:
    """Each rank saw other images: every distinct corrupt file (its path), counted once."""
    if not dist.is_distributed():
        return corrupt
    seen: list[Any] = [None] * dist.world_size()
    torch_dist.all_gather_object(seen, sorted(corrupt))
    return {path for paths in seen for path in paths}


class EpochLoop:
    """The epochs of one process: steps, metrics lines, the progress display, the checkpoints (rank 0 writes them;
    every rank takes part in gathering the RNG states) and the stop on a signal."""

    def __init__(self, trainer: Trainer, loader: Iterable[Sample], sampler: EpochBatchSampler, position: Position,
                 resumed: bool, stops: StopRequests):
        spec = trainer.spec
        self.trainer, self.spec, self.loader, self.sampler, self.position = trainer, spec, loader, sampler, position
        self.output_dir = Path(spec.output_dir)
        self.is_main = dist.rank() == 0
        self.stop_at = spec.stop_step(position.steps_per_epoch)
        # The epochs the schedule spans: more than spec.epochs when max_steps runs past them.
        self.epochs = -(-position.total_steps // position.steps_per_epoch)
        self.log = (MetricsLog(self.output_dir, spec.logging.tensorboard,
                               resume_step=position.done if resumed else None, every_steps=spec.logging.every_steps)
                    if self.is_main else None)
        self.bar = TrainProgress(self.stop_at, position.done, spec.logging.every_steps, enabled=self.is_main)
        self.throughput = Throughput(spec.batch_size)
        self.corrupt: set[str] = set()  # paths of the corrupt images met so far, each warned about once
        self.stops = stops
        self.stop_signal = 0  # the signal all ranks agreed to stop on (0: none)
        # The step last.pt holds (a resumed run's checkpoint; a new run has none, and 0 steps need no save) and when.
        self.saved_step, self.saved_time = position.done, time.monotonic()

    def run(self) -> None:
        try:
            for epoch in range(self.position.done // self.position.steps_per_epoch, self.epochs):
                if self.position.done >= self.stop_at:
                    break
                self.run_epoch(epoch)
                self.end_epoch(epoch)
                if self.stop_signal:
                    self.stop_here()
        finally:
            stop_workers(self.loader)
            self.bar.close()
            if self.log is not None:
                self.log.close()

    def run_epoch(self, epoch: int) -> None:
        """The steps of ``epoch`` from where the run stands, until the epoch ends or the run reaches ``stop_at``."""
        position = self.position
        self.sampler.set_epoch(epoch, skip=position.done - epoch * position.steps_per_epoch)
        tick = time.perf_counter()
        for batch in self.loader:
            self._warn_corrupt(batch.pop(SKIPPED_KEY))
            info = StepInfo(step=position.done, epoch=epoch, steps_per_epoch=position.steps_per_epoch,
                            total_steps=position.total_steps)
            result = self.trainer.step(self.trainer.to_device(batch), info)
            position.add_step(result.losses["loss"])
            now = time.perf_counter()
            images_per_s = self.throughput.add(position.done, now - tick)
            tick = now
            self._log_step(epoch, result, images_per_s)
            if position.done >= self.stop_at or self._between_steps():
                break

    def _between_steps(self) -> bool:
        """After a step: agree with the other ranks on a stop signal (any rank's) and on a periodic checkpoint, and
        write that checkpoint. True: stop now (`run` ends the epoch's bookkeeping, then `stop_here`)."""
        self.stop_signal, save_due = self._agree(self.stops.signum, self._periodic_save_due())
        if save_due and not self.stop_signal and not self.position.epoch_done:  # stops and epoch ends save anyway
            self.save_checkpoints()
        return self.stop_signal != 0

    def _periodic_save_due(self) -> bool:
        every_steps, every_minutes = self.spec.checkpoint_every_steps, self.spec.checkpoint_every_minutes
        if every_steps is not None and self.position.done % every_steps == 0:
            return True
        # Rank 0's clock decides: the ranks' clocks differ, `_agree` hands its decision to all.
        return (every_minutes is not None and self.is_main
                and time.monotonic() - self.saved_time >= 60 * every_minutes)

    def _agree(self, signum: int, save_due: bool) -> tuple[int, bool]:
        """Over all ranks: the largest stop signal number received (0: none) and whether a save is due."""
        if not dist.is_distributed():
            return signum, save_due
        flags = torch.tensor([signum, int(save_due)], device=self.trainer.device)
        torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MAX)
        agreed_signum, agreed_save = flags.tolist()
        return int(agreed_signum), bool(agreed_save)

    def stop_here(self) -> NoReturn:
        """Save the run where it stands (unless last.pt holds this step already) and raise `Interrupted`. Every rank
        takes part in the save (RNG states are gathered) and waits at a barrier until rank 0 has written last.pt."""
        if self.saved_step != self.position.done:
            self.save_checkpoints()
        if dist.is_distributed():
            torch_dist.barrier()
        if self.is_main and self.stops.repeats:
            current().info(f"{self.stops.repeats} further stop signal(s) ignored while stopping")
        raise Interrupted(self.stop_signal, self.position.done, str(self.output_dir / LAST))

    def _warn_corrupt(self, skipped: list[tuple[str, str]]) -> None:
        for path, msg in skipped:  # keyed by path: one file may fail with different messages (header, decode)
            if path not in self.corrupt:
                self.corrupt.add(path)
                current().warn(f"skipped corrupt image: {msg}")

    def _log_step(self, epoch: int, result: StepResult, images_per_s: float) -> None:
        done = self.position.done
        if self.log is not None and (done % self.spec.logging.every_steps == 0 or done == self.stop_at):
            self.log.write({"type": "step", "step": done, "epoch": epoch, **result.losses, "lr": result.lr,
                            "images_per_s": images_per_s, "time": time.time()})
        self.bar.update(done, epoch, self.epochs, self.position.last_loss, result.lr, images_per_s)

    def end_epoch(self, epoch: int) -> None:
        """After an epoch (or a stop inside one): its metrics line, then the checkpoints."""
        position = self.position
        if self.log is not None and position.epoch_done:
            self.log.write({"type": "epoch", "step": position.done, "epoch": epoch, "loss": position.epoch_mean(),
                            "time": time.time()})
        if position.epoch_done or position.done >= self.stop_at:
            self.save_checkpoints()
        if position.epoch_done:
            position.new_epoch()

    def _refuse_diverged_weights(self) -> None:
        """Stop instead of checkpointing weights that diverged (the same weights on every rank: all stop together)."""
        problem = self.trainer.health_problem()
        if problem is not None:
            raise DivergedWeights(f"{problem} by step {self.position.done}, beyond "
                                  f"{WEIGHT_LIMIT:.0e}: training diverged (lower optimizer.base_lr, or set "
                                  "optimizer.grad_clip); stopped without writing this state, the last good "
                                  "checkpoint is kept")

    def save_checkpoints(self) -> None:
        """``epoch_XXXX.pt`` every ``checkpoint_every`` epochs, then ``last.pt``. last.pt is written last: it is what
        a resume starts from, so a run killed before it is complete redoes the epoch and writes its metrics line and
        epoch checkpoint again (the log is cut back to last.pt's step on resume)."""
        position, spe = self.position, self.position.steps_per_epoch
        epochs = position.done // spe
        self._refuse_diverged_weights()
        state = self.trainer.state(epochs, position.done, spe, None if position.epoch_done else position.epoch_stats)
        if self.is_main:
            if position.epoch_done and epochs % self.spec.checkpoint_every == 0:
                save_checkpoint(self.output_dir / epoch_name(epochs), state)
            save_checkpoint(self.output_dir / LAST, state)
        self.saved_step, self.saved_time = position.done, time.monotonic()
