"""The method registry: one entry per pretraining method, the single source of everything sslcli knows about it
outside its home (docs/add-a-method.md).

A method lives in one package, ``sslcli/methods/<name>/`` (or a plugin's own package): its torch-free spec class and
cross-field checks, its Method class, its views. The package's ``register()`` calls `register_method` once with all
of it; built-ins and plugins use the same call. The built-ins are the modules of `BUILTIN_METHODS`, imported (and
their ``register()`` called) by `load_methods`; methods of other installed packages register through the entry-point
group ``sslcli.methods``: each entry point names a callable (called once, with no arguments) that calls
`register_method`.

Torch-free on purpose: the run spec (and so `sslcli pretrain --help`, `--dry-run`, `--schema`) reads the spec classes
from here, while everything that imports torch is named by a ``"module:attribute"`` string and imported on first use.

The facts of an entry (`register_method`'s arguments):

- ``name``: the run spec's ``method.name``; ``spec``: the pydantic class of the ``method`` section, with a field
  ``name: Literal[<name>] = <name>``; ``method``: the `sslcli.methods.base.Method` subclass, or ``"module:Class"``.
- ``problems``: run spec -> ``["path: message", ...]``, the method's cross-field rules (checked at spec validation);
  ``ranges``: method spec -> ``{path: (lower, upper)}``, the ranges whose bounds must be in order.
- ``gpu_images_per_s``: assumed training images/s of a ResNet-50 at 224 px (two views) on one A100/H100-class GPU with
  mixed precision, for `study run --dry-run`'s GPU-hours (`sslcli.study.estimate`); None = unknown (the estimate
  says so unless the study gives its own figure in ``estimate.images_per_s``).
- ``cpu_images_per_s``: measured training images/s on one CPU core of a ResNet-18 of width 16 with two 48 px views
  (docs/results/README.md), for the CPU-hours; None = not measured (the estimate says so).
- ``crop_iou_views``: ``"module:function"`` turning a run spec into the method's `sslcli.data.views.crops.CropViews`
  (its two-crop sampler), for `analyze crop-iou --spec`; None = the method has no image-level crop pair.
- ``needs_c4``: the method reads res4 (RoIAlign) and needs ``model.c4: true`` (checked at spec validation).
- ``own_crop_scale``: the method sets its crop with ``method.crop_scale``, so ``views.crop_scale`` is refused.
- ``device_views``: ``"module:function"`` (a class works too) building the method's device views
  (`sslcli.data.views.device_ops.DeviceViews`) from its CPU transform, for ``data.pipeline: gpu``; None = the method
  runs on ``data.pipeline: cpu`` only (the spec says so).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from sslcli.errors import InputError, SslcliError

ENTRY_POINT_GROUP = "sslcli.methods"
# The built-in methods, in the order `--schema` and the error messages list them: each module's register() registers
# one method. Adding a built-in method is one line here; its package holds everything else.
BUILTIN_METHODS = ("sslcli.methods.moco", "sslcli.methods.simclr", "sslcli.methods.byol", "sslcli.methods.detcon",
                   "sslcli.methods.soco", "sslcli.methods.d3ssl", "sslcli.methods.densecl", "sslcli.methods.pixpro",
                   "sslcli.methods.plrc")

Problems = Callable[[Any], list[str]]
Ranges = Callable[[Any], dict[str, tuple[float, float]]]


@dataclass(frozen=True)
class MethodEntry:
    """One registered method (the module docstring describes each field)."""

    name: str
    spec: type
    method: str | type
    problems: Problems | None = None
    ranges: Ranges | None = None
    gpu_images_per_s: float | None = None
    cpu_images_per_s: float | None = None
    crop_iou_views: str | None = None
    needs_c4: bool = False
    own_crop_scale: bool = False
    device_views: str | None = None


# Read it through the functions below (they load every method first); tests patch entries with monkeypatch.setitem.
REGISTRY: dict[str, MethodEntry] = {}
_loaded = False


def register_method(name: str, spec: type, method: str | type, problems: Problems | None = None,
                    ranges: Ranges | None = None, *, gpu_images_per_s: float | None = None,
                    cpu_images_per_s: float | None = None, crop_iou_views: str | None = None,
                    needs_c4: bool = False, own_crop_scale: bool = False,
                    device_views: str | None = None) -> MethodEntry:
    """Register the method ``name`` with its facts; its spec class must tag itself with ``name: Literal[name] = name``."""
    if name in REGISTRY:  # a plugin taking over a built-in's name would change what existing specs train
        raise SslcliError(f"method {name!r}: registered already (spec {REGISTRY[name].spec.__module__}."
                          f"{REGISTRY[name].spec.__name__}); a method needs a name of its own")
    field = getattr(spec, "model_fields", {}).get("name")
    if field is None or field.default != name:
        raise InputError(f"method {name!r}: its spec class {spec.__name__} needs a field name: Literal[{name!r}] = "
                         f"{name!r} (the run spec's method.name)")
    for fact, target in (("crop_iou_views", crop_iou_views), ("device_views", device_views)):
        if target is not None and ":" not in target:
            raise InputError(f"method {name!r}: {fact} {target!r} is not a 'module:function' name")
    entry = MethodEntry(name, spec, method, problems, ranges, gpu_images_per_s, cpu_images_per_s, crop_iou_views,
                        needs_c4, own_crop_scale, device_views)
    REGISTRY[name] = entry
    return entry


def method_names() -> tuple[str, ...]:
    """Every registered method's name (every method loaded)."""
    load_methods()
    return tuple(REGISTRY)


def spec_classes() -> tuple[type, ...]:
    """Every registered method's spec class (every method loaded)."""
    load_methods()
    return tuple(entry.spec for entry in REGISTRY.values())


def method_entry(name: str) -> MethodEntry:
    """The entry of a registered method (every method loaded)."""
    load_methods()
    if name not in REGISTRY:
        raise InputError(f"method {name!r}: not a registered method; expected one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def import_target(target: str) -> Any:
    """The attribute a ``"module:attribute"`` name points at, imported now."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def method_class(name: str) -> type:
    """The Method class registered as ``name`` (imported on first use)."""
    method = method_entry(name).method
    return import_target(method) if isinstance(method, str) else method


def device_views_methods() -> tuple[str, ...]:
    """The methods with device views (``data.pipeline: gpu``)."""
    load_methods()
    return tuple(name for name, entry in REGISTRY.items() if entry.device_views is not None)


def crop_iou_methods() -> tuple[str, ...]:
    """The methods whose crop pair `analyze crop-iou --spec` can sample."""
    load_methods()
    return tuple(name for name, entry in REGISTRY.items() if entry.crop_iou_views is not None)


def load_methods() -> None:
    """Register the built-in methods (`BUILTIN_METHODS`), then those of installed packages (entry-point group
    ``sslcli.methods``), once per process."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_METHODS:
        importlib.import_module(module).register()
    for point in _entry_points():
        try:
            target = point.load()
        except Exception as exc:  # a broken plugin names itself instead of failing somewhere in spec validation
            raise SslcliError(f"method plugin {point.name!r} ({point.value}): cannot load ({type(exc).__name__}: "
                              f"{exc})") from exc
        if callable(target):
            target()


def _entry_points() -> Iterable:
    return entry_points(group=ENTRY_POINT_GROUP)
