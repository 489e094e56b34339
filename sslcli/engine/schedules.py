"""Learning-rate schedules: linear warm-up, then cosine / step / piecewise-constant / constant.

Pure functions of the position in training, so a resumed run gets exactly the lr of an uninterrupted one.
Positions are in steps; with ``per_step: false`` (MoCo's code: cosine per epoch) the position is floored to the
start of the current epoch, so the lr only changes at epoch boundaries.
"""

from __future__ import annotations

import math

from sslcli.spec import ScheduleSpec


def lr_at(schedule: ScheduleSpec, peak_lr: float, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The learning rate for global ``step`` (0-based) of a run of ``total_steps`` steps.

    - warm-up: over the first ``warmup_epochs`` epochs, linear from ``peak_lr × warmup_start_factor`` to ``peak_lr``;
    - cosine: ``final + (peak − final)·(1 + cos(π·t))/2`` with t the fraction of the post-warm-up steps done;
    - step / piecewise: ``peak × gamma^(milestones passed)``, milestones as fractions of all training
      (DetCon on COCO: ÷10 at 96 % and 98 %); the two names are the same multiplicative rule;
    - constant: ``peak``.
    """
    if not schedule.per_step:
        step = (step // steps_per_epoch) * steps_per_epoch
    warmup_steps = round(schedule.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        start = peak_lr * schedule.warmup_start_factor
        return start + (peak_lr - start) * step / warmup_steps
    if schedule.name == "cosine":
        t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        t = min(max(t, 0.0), 1.0)
        return schedule.final_lr + (peak_lr - schedule.final_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule.name in ("step", "piecewise"):
        passed = sum(1 for m in schedule.milestones if step >= m * total_steps)
        return peak_lr * schedule.gamma ** passed
    return peak_lr

