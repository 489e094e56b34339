"""A rough GPU-hours figure for `study run --dry-run`: an estimate from assumed throughputs, not a measurement.

Assumption: training images per second of a ResNet-50 at 224 px on ONE A100/H100-class GPU with mixed precision,
per method (both views forward, the online branch backward), from the papers' reported training times scaled to
one GPU. Other sizes scale by the pixels of all crops of an image (2 x image_size^2, or multi-crop's 2 large + n small
crops) against 2 x 224^2, by FLOPs for other depths and by (width / 64)^2 for other widths. A study can replace any of these numbers with
`estimate.images_per_s: {arm or method: value}`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sslcli.study.spec import PlannedRun, Study

ASSUMED_IMAGES_PER_S = {"moco": 420.0, "simclr": 380.0, "byol": 360.0, "detcon": 330.0, "soco": 230.0,
                        "d3ssl": 220.0}
ARCH_FLOPS_VS_R50 = {"resnet18": 1.8 / 4.1, "resnet34": 3.6 / 4.1, "resnet50": 1.0, "resnet101": 7.8 / 4.1,
                     "resnet152": 11.5 / 4.1}
ASSUMPTION = ("estimate only: assumed images/s of each method for a ResNet-50 at 224 px on one A100/H100-class GPU "
              "with mixed precision (moco 420, simclr 380, byol 360, detcon 330, soco 230, d3ssl 220), scaled by "
              "pixels per image (all crops), depth and width; divide by the GPUs you use")


def images_per_s(run: PlannedRun, overrides: dict[str, float]) -> float:
    spec = run.spec
    method = spec.method
    if run.arm in overrides:
        return overrides[run.arm]
    base = overrides.get(method.name, ASSUMED_IMAGES_PER_S[method.name])
    pixels = 2 * spec.data.image_size ** 2  # two views per image
    multi_crop = getattr(method, "multi_crop", None)
    if multi_crop is not None and multi_crop.enabled:  # two large crops and n small ones replace the two views
        pixels = 2 * multi_crop.large_size ** 2 + multi_crop.n_small * multi_crop.small_size ** 2
    cost = pixels / (2 * 224 ** 2) * ARCH_FLOPS_VS_R50[spec.model.arch] * (spec.model.width / 64) ** 2
    return base / cost


def dataset_images(run: PlannedRun, given: int | None) -> int | None:
    """Images per epoch: the study's `estimate.dataset_images`, else a count of the split folder if it is here."""
    if given is not None:
        return given
    folder = Path(run.spec.data.root) / run.spec.data.split
    if folder.is_dir():
        return sum(1 for e in os.scandir(folder) if e.is_file())
    return None


def estimate_gpu_hours(study: Study) -> dict:
    """Per-run and total GPU-hours (None where the data set size is unknown here)."""
    per_run, total, unknown = {}, 0.0, []
    for run in study.trained:
        spec = run.spec
        steps = spec.max_steps
        if steps is None:
            n = dataset_images(run, study.file.estimate.dataset_images)
            if n is None:
                unknown.append(run.key)
                per_run[run.key] = None
                continue
            steps = spec.epochs * max(1, n // spec.batch_size)
        hours = steps * spec.batch_size / images_per_s(run, study.file.estimate.images_per_s) / 3600
        per_run[run.key] = round(hours, 4)
        total += hours
    return {"gpu_hours": None if unknown else round(total, 3), "per_run": per_run,
            "unknown": unknown, "assumption": ASSUMPTION,
            "note": "set estimate.dataset_images in the study where the data is not on this machine" if unknown
            else None}
