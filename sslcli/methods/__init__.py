"""Pretraining methods. A method owns its networks and returns losses; the engine owns loops and devices.

The method registry (`sslcli.method_registry`) names each method's class; `METHODS` maps a spec's ``method.name`` to
the class this process builds (filled from the registry; tests may put a stand-in there), `build_method` instantiates
one for a run spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sslcli.spec  # noqa: F401 - registers the built-in methods (their specs live there, torch-free)
from sslcli.method_registry import REGISTRY, load_plugins, method_class

if TYPE_CHECKING:  # torch-free at import: the spec imports the method homes (sslcli/methods/<name>/) through here
    from sslcli.methods.base import Method

METHODS: dict[str, type[Method]] = {}


def build_method(spec) -> Method:
    _import_all()
    return METHODS[spec.method.name](spec)  # a validated spec names a registered method


def _import_all() -> None:
    """Import the class of every registered method (built-in and plugins) that `METHODS` does not hold yet."""
    load_plugins()
    for name in REGISTRY:
        if name not in METHODS:
            METHODS[name] = method_class(name)
