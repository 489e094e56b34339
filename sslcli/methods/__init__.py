"""Pretraining methods. A method owns its networks and returns losses; the engine owns loops and devices.

`METHODS` maps a spec's ``method.name`` to its class; `build_method` instantiates one for a run spec.
"""

from __future__ import annotations

from sslcli.errors import NotImplementedYet
from sslcli.methods.base import Method

METHODS: dict[str, type[Method]] = {}


def register(name: str):
    def deco(cls: type[Method]) -> type[Method]:
        METHODS[name] = cls
        return cls

    return deco


def build_method(spec) -> Method:
    _import_all()
    name = spec.method.name
    if name not in METHODS:
        raise NotImplementedYet(f"method {name!r} (reserved in the spec; training it is not built yet)")
    return METHODS[name](spec)


def _import_all() -> None:
    """Import the method modules that exist so they register themselves."""
    import importlib

    for module in ("moco", "simclr", "byol", "detcon", "soco", "d3ssl"):
        try:
            importlib.import_module(f"sslcli.methods.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"sslcli.methods.{module}":
                raise
