"""Run specs for `sslcli pretrain`: pydantic v2 models, YAML in, JSON schema out.

A spec is fully explicit: the global batch size, the lr scaling rule (``lr = base_lr × batch / 256`` when
``optimizer.lr_scaling`` is ``linear``) and every method option. Unknown keys are errors; every error names its
field path. Hyperparameter defaults follow METHODS.md (section numbers cited per field).

This module holds the sections every run has (data, model, optimiser, schedule, views, logging) and the `RunSpec`
around them; each method's own section (its spec class and checks) lives in its home, sslcli/methods/<name>/spec.py,
and reaches the run spec through the method registry (`sslcli.method_registry`), never by a static import here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from sslcli.errors import InputError
from sslcli.method_registry import REGISTRY, device_views_methods, load_methods, method_names, spec_classes

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
                                            "only read bytes and sample parameters). gpu: the methods with device "
                                            "views (every built-in; moco without A+).")
    cache: Literal["none", "memory", "device"] = Field(
        "none", description="With data.pipeline: gpu, decode every training image once at start and keep the uint8 "
                            "pixels in host memory (memory) or on the training device (device); views are then cut "
                            "from the cache instead of decoding files each step. none: decode per batch. Needs "
                            "H×W×3 bytes per image (docs/pretrain.md).")


class ModelSpec(Strict):
    arch: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] = "resnet50"
    width: int = Field(64, ge=4, le=256, description="Channels of the first stage (64 = torchvision's ResNets; "
                                                     "smaller values make tiny test models).")
    c4: bool = Field(False, description="Split at res4 (ResNet-C4) for region-level methods: RoIAlign on res4, "
                                        "then res5 as the head (METHODS.md §4).")
    stem: Literal["imagenet", "small"] = Field(
        "imagenet", description="imagenet: torchvision's 7×7/2 conv + max-pool (res5 at stride 32); small: a 3×3/1 conv "
                                "and no max-pool (res5 at stride 8: 48 px → 6×6), a deviation from the papers.")


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


def memory_problems(field: str, value: int, columns: int, what: str) -> list[str]:
    """Refuse a queue or bank that cannot be built: a ``columns`` × ``value`` float32 buffer is drawn at random and
    then normalised into a second one, so building it takes twice its size, all in host memory (methods are built
    on the CPU, then moved to the device)."""
    needed, limit = 2 * 4 * columns * value, available_memory()
    if needed <= limit:
        return []
    return [f"{field}: {value} {what} of {columns} float32 need about {needed / 1e9:.1f} GB while the method is built "
            f"(the buffer twice over), above the {limit / 1e9:.1f} GB of memory available on this machine"]


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
    """One view's photometric pipeline (sslcli.data.views.colour.ColourAug): jitter (p) → grayscale (p) → blur (p) →
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
    load_methods()
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
    if spec.batch_size % world_size:
        problems.append(f"batch_size: must be divisible by the number of processes {world_size}")
    problems.extend(_method_problems(spec))
    if spec.data.cache != "none" and spec.data.pipeline != "gpu":
        problems.append(f"data.cache: {spec.data.cache!r} holds decoded images for the device views; it needs "
                        "data.pipeline: gpu")
    problems.extend(_views_problems(spec))
    if spec.schedule.name in ("step", "piecewise"):
        if any(not 0.0 < m < 1.0 for m in spec.schedule.milestones) or spec.schedule.milestones != sorted(
                spec.schedule.milestones):
            problems.append("schedule.milestones: must be increasing fractions of training in (0, 1)")
    if spec.schedule.warmup_epochs >= spec.epochs and spec.max_steps is None:
        problems.append(f"schedule.warmup_epochs: must be below epochs ({spec.epochs})")
    return problems


def _method_problems(spec: RunSpec) -> list[str]:
    """The rules its registry entry declares for the spec's method: its own checks, its ranges, c4, gpu pipeline."""
    method = spec.method
    entry = REGISTRY[method.name]
    problems = entry.problems(spec) if entry.problems is not None else []
    if entry.needs_c4 and not spec.model.c4:
        problems.append(f"model.c4: method {method.name} is a ResNet-C4 method (RoIAlign on res4, res5 as the box "
                        "head); set model.c4: true")
    if spec.data.pipeline == "gpu" and entry.device_views is None:
        gpu = ", ".join(device_views_methods())
        problems.append(f"data.pipeline: 'gpu' runs the views of {gpu}; method {method.name} needs data.pipeline: cpu")
    for path, (lo, hi) in (entry.ranges(method) if entry.ranges is not None else {}).items():
        if lo > hi:
            problems.append(f"{path}: lower bound {lo} is above upper bound {hi}")
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
        if REGISTRY[method.name].own_crop_scale:
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
HASH_NEUTRAL_DEFAULTS = {("model", "stem"): "imagenet", ("data", "cache"): "none"}


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
