"""Run specs for `sslcli pretrain`: pydantic v2 models, YAML in, JSON schema out.

A spec is fully explicit: the global batch size, the lr scaling rule (``lr = base_lr × batch / 256`` when
``optimizer.lr_scaling`` is ``linear``) and every method option. Unknown keys are errors; every error names its
field path. Hyperparameter defaults follow METHODS.md (section numbers cited per field).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from sslcli.errors import InputError
from sslcli.method_registry import (
    REGISTRY,
    gpu_pipeline_methods,
    load_plugins,
    method_names,
    register_method,
    spec_classes,
)

SPEC_VERSION = 1


class Strict(BaseModel):
    # inf/nan are never a meaningful setting (a `base_lr: inf` trained to NaN); pydantic accepts them by default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------------------------------- data, model
class DataSpec(Strict):
    root: str = Field(..., description="Data-set root (COCO, ImageFolder, plain folder) or a manifest file.")
    format: Literal["auto", "coco", "imagefolder", "folder", "manifest"] = "auto"
    split: str = Field("train2017", description="COCO split name (train2017, val2017, ...).")
    image_size: int = Field(224, ge=16, le=1024, description="Side of the (large) training crops in pixels.")
    workers: int = Field(4, ge=0, le=256, description="DataLoader worker processes per rank.")
    threads: int | None = Field(None, ge=1, le=1024, description="Compute threads per rank. None: OMP_NUM_THREADS "
                                "if set, else the node's cores / ranks − workers, at least 1 (docs/pretrain.md).")
    pin_memory: bool = True
    pipeline: Literal["cpu", "gpu"] = Field("cpu", description="Where views are decoded and augmented: cpu (in the "
                                            "DataLoader workers) or gpu (batched on the training device; workers "
                                            "only read bytes and sample parameters). gpu: moco (no A+), simclr, byol.")


class ModelSpec(Strict):
    arch: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] = "resnet50"
    width: int = Field(64, ge=4, le=256, description="Channels of the first stage (64 = torchvision's ResNets; "
                                                     "smaller values make tiny test models).")
    c4: bool = Field(False, description="Split at res4 (ResNet-C4) for region-level methods: RoIAlign on res4, "
                                        "then res5 as the head (METHODS.md §4).")
    stem: Literal["imagenet", "small"] = Field(
        "imagenet", description="imagenet: torchvision's 7×7/2 conv + max-pool (res5 at stride 32); small: a 3×3/1 conv "
                                "and no max-pool (res5 at stride 8: 48 px → 6×6), a deviation from the papers.")


# ------------------------------------------------------------------------------------------------------ augmentation
class MultiCropSpec(Strict):
    """Multi-crop (METHODS.md §2): 2 large crops + n small ones; small crops are queries only."""

    enabled: bool = False
    large_size: int = Field(160, ge=16)
    large_scale: tuple[float, float] = (0.2, 1.0)
    small_size: int = Field(96, ge=8)
    small_scale: tuple[float, float] = (0.05, 0.14)
    n_small: int = Field(4, ge=1, le=16)


class ConstrainedCropSpec(Strict):
    """Constrained multi-crop (CC): a small crop must overlap the key crop by ≥ min_overlap of its own area."""

    enabled: bool = False
    min_overlap: float = Field(0.2, gt=0.0, le=1.0, description="Paper: 0.2; the authors' code uses 0.1.")
    max_tries: int = Field(10, ge=1)


class APlusSpec(Strict):
    """A+ (METHODS.md §2): query crops get Flip → AutoAugment(ImageNet) with probability p instead of the standard."""

    enabled: bool = False
    p: float = Field(0.5, ge=0.0, le=1.0)


class KnnSpec(Strict):
    """kNN-MoCo (METHODS.md §2): a queue of backbone features; neighbours' keys as extra positives."""

    enabled: bool = False
    k: int = Field(20, ge=1)
    weight: float = Field(0.4, ge=0.0, description="λ; 0.8 collapses (paper).")
    warmup_epochs: int = Field(5, ge=0)
    bank_first: bool = Field(False, description="Enable from epoch 0 with the bank updated before the loss.")


class CropIouSpec(Strict):
    """Revisiting §3.1: rejection-sample the second crop until IoU(view1, view2) < max_iou."""

    max_iou: float | None = Field(None, gt=0.0, le=1.0)
    max_tries: int = Field(50, ge=1)


# ----------------------------------------------------------------------------------------------------------- methods
class MocoSpec(Strict):
    """MoCo-v2 and the Revisiting additions (METHODS.md §1–2)."""

    name: Literal["moco"] = "moco"
    dim: int = Field(128, ge=1)
    hidden_dim: int = Field(2048, ge=1)
    queue_size: int = Field(65536, ge=1, description="K; must be divisible by the global batch size.")
    temperature: float = Field(0.2, gt=0.0)
    momentum: float = Field(0.999, ge=0.0, le=1.0, description="0.995 is the Revisiting 'lower momentum' (+m).")
    shuffle_bn: bool = True
    multi_crop: MultiCropSpec = MultiCropSpec()
    constrained: ConstrainedCropSpec = ConstrainedCropSpec()
    aplus: APlusSpec = APlusSpec()
    knn: KnnSpec = KnnSpec()
    crop_iou: CropIouSpec = CropIouSpec()


class SimclrSpec(Strict):
    """SimCLR (NT-Xent), the base of DetCon_S."""

    name: Literal["simclr"] = "simclr"
    dim: int = Field(128, ge=1)
    hidden_dim: int = Field(2048, ge=1)
    temperature: float = Field(0.1, gt=0.0)


class ByolSpec(Strict):
    """BYOL (predictor, EMA target with cosine momentum schedule), the base of DetCon_B."""

    name: Literal["byol"] = "byol"
    dim: int = Field(256, ge=1)
    hidden_dim: int = Field(4096, ge=1)
    base_momentum: float = Field(0.996, ge=0.0, le=1.0, description="τ₀; τ_t = 1 − (1 − τ₀)(cos(πt/T)+1)/2.")


class MaskSourceSpec(Strict):
    """Where DetCon's masks come from (METHODS.md §3)."""

    kind: Literal["store", "grid", "gt"] = "store"
    path: str | None = Field(None, description="Mask store (.h5) from `prepare masks` (FH or MCG).")
    scales: list[int] | None = Field(None, description="FH scales to use from the store; several = one sampled "
                                                       "per image and step. None = every scale in the store.")
    grid: int = Field(5, ge=1, le=32, description="n for n×n grid masks (1×1 = SimCLR/BYOL).")

    @model_validator(mode="after")
    def _path_for_store(self) -> MaskSourceSpec:
        if self.kind == "store" and not self.path:
            raise ValueError("path: required when kind is 'store' (a file from `sslcli prepare masks`)")
        return self


class DetconSpec(Strict):
    """DetCon_S (SimCLR-based) and DetCon_B (BYOL-based) (METHODS.md §3)."""

    name: Literal["detcon"] = "detcon"
    variant: Literal["S", "B"] = "S"
    masks: MaskSourceSpec = MaskSourceSpec(kind="grid")
    num_samples: int = Field(16, ge=1, description="Mask ids sampled per image and view.")
    temperature: float = Field(0.1, gt=0.0)
    dim: int | None = Field(None, description="Default 128 (S) / 256 (B).")
    hidden_dim: int | None = Field(None, description="Default 2048 (S) / 4096 (B).")
    base_momentum: float = Field(0.996, ge=0.0, le=1.0, description="DetCon_B only: 0.996 (1000 ep) / 0.99 (300 ep).")
    crop_sampler: Literal["authors", "torchvision"] = Field(
        "authors", description="authors: DetCon's crop (one draw of area and aspect ratio, window clipped to the "
                               "image); torchvision: RandomResizedCrop (rejects and retries: smaller crops).")


class SocoSpec(Strict):
    """SoCo, the region-level baseline (METHODS.md §4; docs/soco.md)."""

    name: Literal["soco"] = "soco"
    view_pairs: Literal["soco", "all"] = Field("soco", description="soco: V1↔V2 and V1↔V3 (SoCo); all: + V2↔V3.")
    boxes: str = Field(..., description="Box store (.h5) from `prepare boxes`.")
    boxes_per_image: int = Field(4, ge=1)
    roi_size: int = Field(14, ge=1)
    jitter_p: float = Field(0.5, ge=0.0, le=1.0)
    jitter_scale: float = Field(0.1, ge=0.0)
    crop_scale: tuple[float, float] = (0.6, 1.0)
    recipe: Literal["paper", "c4-code", "fpn-code"] = Field(
        "paper", description="Views (docs/soco.md): paper (SoCo's text: V3 = V2 downsampled, centre jitter on V1), "
                             "c4-code (the released C4 recipe: V1, V2, cutout in V2's boxes, no jitter), fpn-code "
                             "(the released FPN recipe: V3 its own S/2 crop, boxes per pair, corner jitter, cutout).")
    padding: Literal["authors", "slots"] = Field(
        "authors", description="Fewer than K boxes: authors (each view pads with its own copies; every copy of a "
                               "box is a positive of every copy in the other view) or slots (one padding, slot k "
                               "pairs with slot k).")
    cutout_p: float = Field(0.5, ge=0.0, le=1.0, description="Code recipes: cutout probability per box.")
    cutout_scale: tuple[float, float] = Field((0.1, 0.3), description="Code recipes: cutout area / box area.")
    dim: int = 256
    hidden_dim: int = 4096
    base_momentum: float = Field(0.99, ge=0.0, le=1.0)


class PrcSpec(Strict):
    side_fraction: tuple[float, float] = (0.2, 0.5)
    max_cover: float = Field(0.5, gt=0.0, le=1.0)
    fill: Literal["mean", "zero", "noise"] = Field("mean", description="What fills a cutout (the paper does not "
                                                                      "say): ImageNet mean colour, black or noise.")


class PrmSpec(Strict):
    scale: tuple[float, float] = (0.2, 0.6)
    ratio: tuple[float, float] = (0.75, 4 / 3)


class RbjSpec(Strict):
    scale: tuple[float, float] = (0.9, 1.0)
    shift: float = 0.1


class D3sslSpec(Strict):
    """D3SSL (METHODS.md §5; docs/d3ssl.md)."""

    name: Literal["d3ssl"] = "d3ssl"
    boxes: str = Field(..., description="Box store (.h5) from `prepare boxes`.")
    boxes_per_image: int = Field(4, ge=1)
    roi_size: int = Field(14, ge=1)
    temperature: float = Field(0.2, gt=0.0)
    bank_size: int = Field(65536, ge=1)
    crop_scale: tuple[float, float] = (0.4, 1.0)
    prc: PrcSpec = PrcSpec()
    prm: PrmSpec = PrmSpec()
    rbj: RbjSpec = RbjSpec()
    decoupling: bool = True
    depositioning: bool = True
    dim: int = 256
    hidden_dim: int = 4096
    base_momentum: float = Field(0.99, ge=0.0, le=1.0)


def available_memory() -> int:
    """Bytes of memory a new process can take here: Linux's MemAvailable (free memory plus reclaimable caches);
    the physical memory where /proc/meminfo does not exist."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _memory_problems(field: str, value: int, columns: int, what: str) -> list[str]:
    """Refuse a queue or bank that cannot be built: a ``columns`` × ``value`` float32 buffer is drawn at random and
    then normalised into a second one, so building it takes twice its size, all in host memory (methods are built
    on the CPU, then moved to the device)."""
    needed, limit = 2 * 4 * columns * value, available_memory()
    if needed <= limit:
        return []
    return [f"{field}: {value} {what} of {columns} float32 need about {needed / 1e9:.1f} GB while the method is built "
            f"(the buffer twice over), above the {limit / 1e9:.1f} GB of memory available on this machine"]


def _resnet_feature_channels(arch: str, width: int) -> int:
    """Channels of res5 (the backbone feature): 8·width, ×4 for the bottleneck ResNets (50 and deeper)."""
    return 8 * width * (1 if arch in ("resnet18", "resnet34") else 4)


def _moco_problems(spec) -> list[str]:
    method, problems = spec.method, []
    if method.queue_size % spec.batch_size:
        problems.append(f"method.queue_size: must be divisible by the global batch size {spec.batch_size}")
    columns = method.dim + (_resnet_feature_channels(spec.model.arch, spec.model.width) if method.knn.enabled else 0)
    problems.extend(_memory_problems("method.queue_size", method.queue_size, columns,
                                     "keys" + (" (and kNN backbone features)" if method.knn.enabled else "")))
    if method.constrained.enabled and not method.multi_crop.enabled:
        problems.append("method.constrained.enabled: constrained multi-crop needs method.multi_crop.enabled: true")
    for name in ("large_scale", "small_scale"):  # crop areas as fractions of the image (a negative one failed in
        lo, hi = getattr(method.multi_crop, name)  # the workers)
        if not (0.0 < lo and 0.0 < hi <= 1.0):
            problems.append(f"method.multi_crop.{name}: [{lo}, {hi}] is not a range of area fractions in (0, 1]")
    if spec.data.pipeline == "gpu" and method.aplus.enabled:
        problems.append("data.pipeline: 'gpu' does not run A+ (AutoAugment); set method.aplus.enabled: false or "
                        "data.pipeline: cpu")
    return problems


def _moco_ranges(method: MocoSpec) -> dict[str, tuple[float, float]]:
    return {"method.multi_crop.large_scale": method.multi_crop.large_scale,
            "method.multi_crop.small_scale": method.multi_crop.small_scale}


def _soco_problems(spec) -> list[str]:
    method, problems = spec.method, []
    if not 0.0 <= method.cutout_scale[0] <= method.cutout_scale[1] <= 1.0:
        problems.append(f"method.cutout_scale: {list(method.cutout_scale)} is not a range of box-area fractions "
                        "in [0, 1]")
    if method.view_pairs == "all" and method.recipe != "paper":
        problems.append(f"method.view_pairs: 'all' (V2↔V3) needs recipe 'paper'; the {method.recipe} recipe "
                        "pairs V1 with each other view only")
    return problems


def _d3ssl_problems(spec) -> list[str]:
    method, problems = spec.method, []
    if method.bank_size % spec.batch_size:
        problems.append(f"method.bank_size: must be divisible by the global batch size {spec.batch_size}")
    problems.extend(_memory_problems("method.bank_size", method.bank_size, method.dim, "region features"))
    return problems


def _d3ssl_ranges(method: D3sslSpec) -> dict[str, tuple[float, float]]:
    return {"method.crop_scale": method.crop_scale, "method.prc.side_fraction": method.prc.side_fraction,
            "method.prm.scale": method.prm.scale, "method.rbj.scale": method.rbj.scale}


# The built-in methods, in the order `--schema` and the error messages list them. A method from another package
# registers the same way (docs/add-a-method.md); the run spec's method union is built from this registry.
register_method("moco", MocoSpec, "sslcli.methods.moco:MoCo", _moco_problems, _moco_ranges, gpu_pipeline=True)
register_method("simclr", SimclrSpec, "sslcli.methods.simclr:SimCLR", gpu_pipeline=True)
register_method("byol", ByolSpec, "sslcli.methods.byol:BYOL", gpu_pipeline=True)
register_method("detcon", DetconSpec, "sslcli.methods.detcon:Detcon", gpu_pipeline=True)
register_method("soco", SocoSpec, "sslcli.methods.soco:Soco", _soco_problems,
                lambda method: {"method.crop_scale": method.crop_scale}, gpu_pipeline=True)
register_method("d3ssl", D3sslSpec, "sslcli.methods.d3ssl:D3ssl", _d3ssl_problems, _d3ssl_ranges,
                gpu_pipeline=True)


# ----------------------------------------------------------------------------------------------- optimiser, schedule
class OptimizerSpec(Strict):
    name: Literal["sgd", "lars"] = "sgd"
    base_lr: float = Field(0.3, gt=0.0, description="Learning rate for a global batch of 256 (see lr_scaling).")
    lr_scaling: Literal["linear", "none"] = Field("linear", description="linear: lr = base_lr × batch / 256.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    exclude_bias_and_norm: bool = Field(True, description="No weight decay (and, for LARS, no adaptation) on "
                                                          "biases and normalisation parameters.")
    lars_eta: float = Field(1e-3, gt=0.0)
    grad_clip: float | None = Field(None, gt=0.0, description="Clip the global gradient norm to this value.")


class ScheduleSpec(Strict):
    name: Literal["cosine", "step", "piecewise", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    warmup_start_factor: float = Field(0.0, ge=0.0, le=1.0, description="Warm-up starts at lr × this factor.")
    final_lr: float = Field(0.0, ge=0.0, description="cosine: the lr reached at the end.")
    milestones: list[float] = Field([0.96, 0.98], description="step/piecewise: fractions of training where the "
                                                              "lr is multiplied by gamma.")
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    per_step: bool = Field(True, description="Update the lr every step (True) or once per epoch (MoCo's code).")


class ColourSpec(Strict):
    """One view's photometric pipeline (sslcli.data.color.ColorAug): jitter (p) → grayscale (p) → blur (p) →
    solarize (p)."""

    brightness: float = Field(0.4, ge=0.0)
    contrast: float = Field(0.4, ge=0.0)
    saturation: float = Field(0.4, ge=0.0)
    hue: float = Field(0.1, ge=0.0, le=0.5)
    jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    gray_p: float = Field(0.2, ge=0.0, le=1.0)
    blur_p: float = Field(0.5, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = Field(0.0, ge=0.0, le=1.0)


class ViewsSpec(Strict):
    """Overrides of the method's view recipe (default: the paper's), for ablations of the views and small budgets
    (docs/pretrain.md "View overrides")."""

    colour: Literal["recipe", "moco-v2", "simclr", "byol"] | list[ColourSpec] = Field(
        "recipe", description="The views' colour pipelines: recipe (the method's own), a preset (moco-v2: both views "
                              "(0.4, 0.4, 0.4, 0.1), blur 0.5; simclr: (0.8, 0.8, 0.8, 0.2), blur 1.0 / 0.0; byol: "
                              "(0.4, 0.4, 0.2, 0.1), blur 1.0 / 0.1, solarize 0 / 0.2), or a list of one (both views) "
                              "or two (view 1, view 2) explicit pipelines.")
    crop_scale: tuple[float, float] | None = Field(
        None, description="Area range (fractions of the image) of the two main crops; None = the recipe's "
                          "(MoCo 0.2-1, SimCLR/BYOL/DetCon 0.08-1). SoCo/D3SSL: use method.crop_scale.")


class LoggingSpec(Strict):
    every_steps: int = Field(10, ge=1)
    tensorboard: bool = False


# ---------------------------------------------------------------------------------------------------------- the spec
# Fields that only say when a run saves: they change no number it computes, so a resume may change them and a study's
# run hash leaves them out (a study planned before they existed keeps its hashes).
SAVE_SCHEDULE_FIELDS = ("checkpoint_every_steps", "checkpoint_every_minutes")


class RunSpec(Strict):
    # `method` is any registered method's spec: `run_spec_model` derives the model that validates it (the union of
    # the registered spec classes, discriminated by `name`); every validated spec is an instance of that subclass.
    spec_version: Literal[1] = SPEC_VERSION
    name: str = Field("run", description="Short run name, used in logs.")
    data: DataSpec
    model: ModelSpec = ModelSpec()
    method: BaseModel
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    batch_size: int = Field(256, ge=1, description="Global batch size, over all ranks.")
    epochs: int = Field(200, ge=1)
    max_steps: int | None = Field(None, ge=1, description=(
        "The run's length in steps when given: it trains exactly this many, past `epochs` if need be. Below "
        "epochs x steps per epoch it stops early on the schedule of `epochs` (smoke tests; resumable); above it, "
        "the schedule spans max_steps."))
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = Field(True, description="On GPU only; ignored on CPU.")
    seed: int = 0
    output_dir: str = "runs/run"
    checkpoint_every: int = Field(10, ge=1, description="Keep a checkpoint every N epochs (plus `last`).")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Also overwrite `last` every N steps, mid-epoch too (long epochs; preemption).")
    checkpoint_every_minutes: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="Also overwrite `last` once this many minutes passed since the last save (rank 0's clock).")
    logging: LoggingSpec = LoggingSpec()
    views: ViewsSpec = ViewsSpec()

    @property
    def lr(self) -> float:
        """The actual peak learning rate after the scaling rule."""
        if self.optimizer.lr_scaling == "linear":
            return self.optimizer.base_lr * self.batch_size / 256
        return self.optimizer.base_lr

    def stop_step(self, steps_per_epoch: int) -> int:
        """The step the run stops at: ``max_steps`` when given, else ``epochs`` x ``steps_per_epoch``. The trainer,
        its resume and the study runner's "already finished" check all use this one rule."""
        return self.max_steps or self.epochs * steps_per_epoch

    def schedule_steps(self, steps_per_epoch: int) -> int:
        """The steps the learning-rate and momentum schedules span: ``epochs`` x ``steps_per_epoch``, or the stop
        step when that is later. An earlier stop keeps the schedule of ``epochs``, so a run stopped early by
        ``max_steps`` and resumed with a larger one trains as if it had never stopped."""
        return max(self.epochs * steps_per_epoch, self.stop_step(steps_per_epoch))

    def __reduce__(self):  # the derived class is not importable by name: a spawned rank rebuilds it from the fields
        return _restore_spec, (self.model_dump(),)


_RUN_SPEC_MODELS: dict[tuple[type, ...], type[RunSpec]] = {}


def run_spec_model() -> type[RunSpec]:
    """The RunSpec model whose ``method`` is the union of the registered methods' spec classes (plugins loaded)."""
    load_plugins()
    classes = spec_classes()
    model = _RUN_SPEC_MODELS.get(classes)
    if model is None:
        method = classes[0] if len(classes) == 1 else Annotated[Union[classes], Field(discriminator="name")]  # noqa: UP007
        model = create_model("RunSpec", __base__=RunSpec, __module__=__name__, method=(method, ...))
        _RUN_SPEC_MODELS[classes] = model
    return model


def _restore_spec(data: dict) -> RunSpec:
    return run_spec_model().model_validate(data)


def consistency_problems(spec: RunSpec, world_size: int = 1) -> list[str]:
    """Cross-field rules pydantic cannot check field by field, as ``path: message`` lines."""
    problems = []
    method = spec.method
    if spec.batch_size % world_size:
        problems.append(f"batch_size: must be divisible by the number of processes {world_size}")
    entry = REGISTRY[method.name]
    if entry.problems is not None:  # the method's own rules (registered with it)
        problems.extend(entry.problems(spec))
    if spec.data.pipeline == "gpu" and method.name not in gpu_pipeline_methods():
        gpu = ", ".join(gpu_pipeline_methods())
        problems.append(f"data.pipeline: 'gpu' runs the views of {gpu}; method {method.name} needs data.pipeline: cpu")
    for path, (lo, hi) in (entry.ranges(method) if entry.ranges is not None else {}).items():
        if lo > hi:
            problems.append(f"{path}: lower bound {lo} is above upper bound {hi}")
    problems.extend(_views_problems(spec))
    if spec.schedule.name in ("step", "piecewise"):
        if any(not 0.0 < m < 1.0 for m in spec.schedule.milestones) or spec.schedule.milestones != sorted(
                spec.schedule.milestones):
            problems.append("schedule.milestones: must be increasing fractions of training in (0, 1)")
    if spec.schedule.warmup_epochs >= spec.epochs and spec.max_steps is None:
        problems.append(f"schedule.warmup_epochs: must be below epochs ({spec.epochs})")
    return problems


def _views_problems(spec: RunSpec) -> list[str]:
    views, method = spec.views, spec.method
    problems = []
    if isinstance(views.colour, list) and len(views.colour) not in (1, 2):
        problems.append(f"views.colour: {len(views.colour)} pipelines; expected 1 (both views) or 2 (view 1, view 2)")
    if views.crop_scale is not None:
        lo, hi = views.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            problems.append(f"views.crop_scale: {list(views.crop_scale)} is not a range of area fractions in (0, 1]")
        if method.name in ("soco", "d3ssl"):
            problems.append(f"views.crop_scale: method {method.name} sets its crop with method.crop_scale")
        multi_crop = getattr(method, "multi_crop", None)
        if multi_crop is not None and multi_crop.enabled:
            problems.append("views.crop_scale: with multi-crop the large crops use method.multi_crop.large_scale")
    return problems


# ----------------------------------------------------------------------------------------------------- load, report
class SpecError(InputError):
    """A spec that does not validate; ``problems`` holds one ``path: message`` line per error."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"{source}: {problems[0]}")
        else:  # still one line: scripts and logs read errors line by line
            super().__init__(f"{source}: {len(problems)} problems in the run spec: {'; '.join(problems)}")


def _format_pydantic(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        # Drop the discriminator tag pydantic inserts into union paths (method.moco.queue_size -> method.queue_size).
        loc = [str(p) for p in err["loc"]]
        if len(loc) >= 2 and loc[0] == "method" and loc[1] in REGISTRY:
            loc = [loc[0], *loc[2:]]
        path = ".".join(loc) or "(spec)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the spec; check spelling)"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown method {err.get('ctx', {}).get('tag', err['input'])!r}: expected one of {', '.join(method_names())}"
        elif err["type"] == "union_tag_not_found":
            msg = f"missing 'name': expected one of {', '.join(method_names())}"
        elif err["type"] == "literal_error":
            msg = f"{err['input']!r} is not allowed: {msg}"
        problems.append(f"{path}: {msg}")
    return problems


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML scalars) to a raw spec dict."""
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:  # a tag (!!python/...), an unclosed bracket: the option, not a traceback
            raise InputError(f"--set {item!r}: the value is not plain YAML ({str(exc).splitlines()[0]})") from None
    return data


def parse_spec(data: Any, source: str = "spec", world_size: int = 1) -> RunSpec:
    if not isinstance(data, dict):
        raise SpecError(source, ["(spec): expected a mapping at the top level"])
    try:
        spec = run_spec_model().model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, _format_pydantic(exc)) from None
    problems = consistency_problems(spec, world_size)
    if problems:
        raise SpecError(source, problems)
    return spec


def load_spec(path: str | os.PathLike, overrides: list[str] | None = None, world_size: int = 1) -> RunSpec:
    """Read, override and validate a YAML spec; raise SpecError listing every problem with its field path."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read spec ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise SpecError(str(path), [f"(spec): expected a mapping of spec fields at the top level, got a YAML "
                                    f"{type(data).__name__}"])
    return parse_spec(apply_overrides(data, overrides or []), str(path), world_size)


def spec_schema() -> dict:
    return run_spec_model().model_json_schema()


# Fields added after study run hashes were first computed, with the value every spec had before: a study hashes its runs
# without them while they hold that value (`hashed_spec`), so adding one keeps existing study folders' run hashes.
HASH_NEUTRAL_DEFAULTS = {("model", "stem"): "imagenet"}


def hashed_spec(dumped: dict) -> dict:
    """A ``model_dump(mode="json")`` of a run spec as study run hashes see it: where and when the run saves
    (`output_dir`, `SAVE_SCHEDULE_FIELDS`: they change none of its numbers) and `HASH_NEUTRAL_DEFAULTS` (fields added
    later, at their default) left out, so adding a field does not make `study run` retrain finished studies."""
    out = {section: dict(value) if isinstance(value, dict) else value for section, value in dumped.items()
           if section not in ("output_dir", *SAVE_SCHEDULE_FIELDS)}
    for (section, name), default in HASH_NEUTRAL_DEFAULTS.items():
        if isinstance(out.get(section), dict) and out[section].get(name) == default:
            del out[section][name]
    return out


def dump_spec(spec: RunSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)



# DenseCL and PixPro register from their homes (sslcli/methods/<name>/), after the six above, imported by name as
# homes' BUILTIN_METHODS list will (a static import would make spec and methods import each other).
for _home in ("sslcli.methods.densecl", "sslcli.methods.pixpro"):  # until the built-in list
    importlib.import_module(_home).register()  # until the built-in list
