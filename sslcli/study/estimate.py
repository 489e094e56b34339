"""Rough GPU-hours and CPU-hours figures for `study run --dry-run`: estimates from throughputs, not measurements.

GPU: training images per second of a ResNet-50 at 224 px on ONE A100/H100-class GPU with mixed precision, per method
(both views forward, the online branch backward), assumed from the papers' reported training times scaled to one
GPU. A study can replace any of these numbers with `estimate.images_per_s: {arm or method: value}`.

CPU: training images per second on ONE core (one thread) of a ResNet-18 of width 16 with two 48 px views, per
method, as measured on the 2-core development machine and reported in docs/results/ (nothing is measured here; see
`MEASURED_CPU_IMAGES_PER_S`). A method without a measurement there gets no CPU figure.

Both scale a run to its own size by the pixels of all its crops (2 x image_size^2, or multi-crop's 2 large + n small
crops), by FLOPs for other depths and by (width / reference width)^2 for other widths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sslcli.study.spec import PlannedRun, Study

# DenseCL: MoCo-v2's figure less 1 % (the DenseCL abstract: "only <1% slower" than MoCo-v2); PixPro: BYOL's
# networks and views plus the PPM's (H·W)² similarity per view, assumed BYOL's figure (no time is reported).
ASSUMED_IMAGES_PER_S = {"moco": 420.0, "simclr": 380.0, "byol": 360.0, "detcon": 330.0, "soco": 230.0,
                        "d3ssl": 220.0, "densecl": 415.0, "pixpro": 360.0}
# CPU training images/s on one core, from docs/results/README.md (ResNet-18 width 16, 48 px views, 1 thread,
# 2-core machine):
# - moco 231: planted-revisiting, "MoCo-v2 runs 316–349 s" for 602 steps x batch 128 = 77,056 images (77,056 / 333 s);
#   the same page measured "about 250 img/s for MoCo-v2 at batch 128" alone.
# - simclr 91, detcon 83: planted-detcon, 301 steps x batch 128 = 38,528 images a run; its seeds 0-1 ("runs of
#   386–531 s"; per run, train_wall_s in docs/results/planted-detcon/results.jsonl): SimCLR 422 and 427 s (mean
#   425 s), DetCon_S with grid / FH / GT masks 387-531 s (mean 463 s).
# - soco 15.7, d3ssl 14.8 (ResNet-18-C4 width 16): "D3SSL 14.2–15.4 img/s and SoCo 14.5–17.0 img/s" (batch 64,
#   4 boxes per image), the midpoints.
# BYOL has no CPU measurement in the docs: no CPU figure for its runs.
MEASURED_CPU_IMAGES_PER_S = {"moco": 231.0, "simclr": 91.0, "detcon": 83.0, "soco": 15.7, "d3ssl": 14.8}
ARCH_FLOPS_VS_R50 = {"resnet18": 1.8 / 4.1, "resnet34": 3.6 / 4.1, "resnet50": 1.0, "resnet101": 7.8 / 4.1,
                     "resnet152": 11.5 / 4.1}
ASSUMPTION = ("estimate only: assumed images/s of each method for a ResNet-50 at 224 px on one A100/H100-class GPU "
              "with mixed precision (moco 420, simclr 380, byol 360, detcon 330, soco 230, d3ssl 220, densecl 415, "
              "pixpro 360), scaled by "
              "pixels per image (all crops), depth and width; divide by the GPUs you use")
CPU_ASSUMPTION = ("estimate only: images/s of each method on one CPU core measured for a ResNet-18 of width 16 with "
                  "48 px views on the 2-core development machine (docs/results/README.md: moco 231, simclr 91, "
                  "detcon 83, soco 15.7, d3ssl 14.8; byol not measured), scaled by pixels per image (all crops), "
                  "depth and width; one core per run (--jobs N runs N at once); more threads per run do not "
                  "scale linearly")


@dataclass(frozen=True)
class Reference:
    """The model and view size a throughput table was given for."""

    arch: str
    width: int
    size: int


GPU_REFERENCE = Reference("resnet50", 64, 224)
CPU_REFERENCE = Reference("resnet18", 16, 48)


STEM_COST = {"imagenet": 1.0, "small": 16.0}


def scaled_rate(run: PlannedRun, base: float, ref: Reference) -> float:
    """``base`` images/s of the reference model and views, scaled to ``run``'s crops, depth and width."""
    spec = run.spec
    pixels = 2 * spec.data.image_size ** 2  # two views per image
    multi_crop = getattr(spec.method, "multi_crop", None)
    if multi_crop is not None and multi_crop.enabled:  # two large crops and n small ones replace the two views
        pixels = 2 * multi_crop.large_size ** 2 + multi_crop.n_small * multi_crop.small_size ** 2
    depth = ARCH_FLOPS_VS_R50[spec.model.arch] / ARCH_FLOPS_VS_R50[ref.arch]
    # The small stem keeps full resolution into res2 (no stride-2 conv1, no max-pool): every stage sees 16x the
    # cells of the ImageNet stem, which the reference rates use.
    stem = STEM_COST[spec.model.stem]
    cost = pixels / (2 * ref.size ** 2) * depth * (spec.model.width / ref.width) ** 2 * stem
    return base / cost


def images_per_s(run: PlannedRun, overrides: dict[str, float]) -> float:
    """Assumed GPU images/s of ``run``: the study's own figure for its arm, else for its method, else the table's."""
    if run.arm in overrides:
        return overrides[run.arm]
    name = run.spec.method.name
    return scaled_rate(run, overrides.get(name, ASSUMED_IMAGES_PER_S[name]), GPU_REFERENCE)


def cpu_images_per_s(run: PlannedRun) -> float | None:
    """Estimated images/s of ``run`` on one CPU core, or None for a method the docs have no measurement of."""
    base = MEASURED_CPU_IMAGES_PER_S.get(run.spec.method.name)
    return None if base is None else scaled_rate(run, base, CPU_REFERENCE)


def dataset_images(run: PlannedRun, given: int | None) -> int | None:
    """Images per epoch: the study's `estimate.dataset_images`, else a count of the split folder if it is here."""
    if given is not None:
        return given
    folder = Path(run.spec.data.root) / run.spec.data.split
    if folder.is_dir():
        return sum(1 for e in os.scandir(folder) if e.is_file())
    return None


def planned_steps(run: PlannedRun, given: int | None) -> int | None:
    """The steps ``run`` will train (`RunSpec.stop_step`), or None when that needs a data set size not known here."""
    spec = run.spec
    if spec.max_steps is not None:
        return spec.max_steps  # the run's length whatever the data set's size
    n = dataset_images(run, given)
    return None if n is None else spec.stop_step(max(1, n // spec.batch_size))


def estimate_hours(study: Study) -> dict:
    """Per-run and total GPU-hours (one GPU) and CPU-hours (one core); None where the data set size, or for CPU the
    method's measured rate, is unknown here."""
    per_run: dict[str, float | None] = {}
    cpu_per_run: dict[str, float | None] = {}
    unknown, cpu_unknown = [], []
    for run in study.trained:
        steps = planned_steps(run, study.file.estimate.dataset_images)
        if steps is None:
            unknown.append(run.key)
            per_run[run.key] = cpu_per_run[run.key] = None
            continue
        images = steps * run.spec.batch_size
        per_run[run.key] = images / images_per_s(run, study.file.estimate.images_per_s) / 3600
        cpu_rate = cpu_images_per_s(run)
        cpu_per_run[run.key] = None if cpu_rate is None else images / cpu_rate / 3600
        if cpu_rate is None:
            cpu_unknown.append(run.key)
    return {"gpu_hours": _total(per_run), "per_run": _rounded(per_run), "unknown": unknown, "assumption": ASSUMPTION,
            "note": "set estimate.dataset_images in the study where the data is not on this machine" if unknown
            else None,
            "cpu_hours": _total(cpu_per_run), "cpu_per_run": _rounded(cpu_per_run), "cpu_unknown": cpu_unknown,
            "cpu_assumption": CPU_ASSUMPTION}


def _total(hours: dict[str, float | None]) -> float | None:
    values = list(hours.values())
    return None if any(v is None for v in values) else float(f"{sum(v for v in values if v is not None):.4g}")


def _rounded(hours: dict[str, float | None]) -> dict[str, float | None]:
    return {key: None if v is None else float(f"{v:.4g}") for key, v in hours.items()}
