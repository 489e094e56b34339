"""The method registry: one entry per pretraining method, the single source of its name, spec class, method class and
cross-field checks (docs/add-a-method.md).

Torch-free on purpose: the run spec (and so `sslcli pretrain --help`, `--dry-run`, `--schema`) reads the spec classes
from here, while a method class (which imports torch) is named by a ``"module:Class"`` string and imported only when a
run builds it. Methods of other installed packages register through the entry-point group ``sslcli.methods``: each
entry point names a callable (called once, with no arguments) or a module (imported) that calls `register_method`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from sslcli.errors import InputError, SslcliError

ENTRY_POINT_GROUP = "sslcli.methods"


@dataclass(frozen=True)
class MethodEntry:
    name: str
    spec: type  # a pydantic model with a field ``name: Literal[<name>]`` (the discriminator of the run spec's method)
    method: str | type  # the Method subclass, or "module:Class" imported on first use
    problems: Callable[[Any], list[str]] | None = None  # run spec -> ["method.field: message", ...]
    ranges: Callable[[Any], dict[str, tuple[float, float]]] | None = None  # method spec -> {path: (lower, upper)}
    gpu_pipeline: bool = False  # its views run on `data.pipeline: gpu` (sslcli.data.device_views)


REGISTRY: dict[str, MethodEntry] = {}
_plugins_loaded = False


def register_method(name: str, spec: type, method: str | type, problems: Callable[[Any], list[str]] | None = None,
                    ranges: Callable[[Any], dict[str, tuple[float, float]]] | None = None,
                    gpu_pipeline: bool = False) -> MethodEntry:
    """Register the method ``name``; its spec class must tag itself with ``name: Literal[name] = name``."""
    if name in REGISTRY:  # a plugin taking over a built-in's name would change what existing specs train
        raise SslcliError(f"method {name!r}: registered already (spec {REGISTRY[name].spec.__module__}."
                          f"{REGISTRY[name].spec.__name__}); a method needs a name of its own")
    field = getattr(spec, "model_fields", {}).get("name")
    if field is None or field.default != name:
        raise InputError(f"method {name!r}: its spec class {spec.__name__} needs a field name: Literal[{name!r}] = "
                         f"{name!r} (the run spec's method.name)")
    entry = MethodEntry(name, spec, method, problems, ranges, gpu_pipeline)
    REGISTRY[name] = entry
    return entry


def method_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def spec_classes() -> tuple[type, ...]:
    return tuple(entry.spec for entry in REGISTRY.values())


def gpu_pipeline_methods() -> tuple[str, ...]:
    return tuple(name for name, entry in REGISTRY.items() if entry.gpu_pipeline)


def method_class(name: str) -> type:
    """The Method class registered as ``name`` (imported on first use)."""
    entry = REGISTRY[name]
    if isinstance(entry.method, str):
        module, _, attr = entry.method.partition(":")
        return getattr(importlib.import_module(module), attr)
    return entry.method


def load_plugins() -> None:
    """Register the methods of installed packages (entry-point group ``sslcli.methods``), once per process."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
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
