"""Pretraining methods. A method owns its networks and returns losses; the engine owns loops and devices.

Each method is one package, ``sslcli/methods/<name>/`` (spec, method, views), registered in `sslcli.method_registry`
(docs/add-a-method.md). Torch-free: importing a method's package to register it loads no network; `build_method`
imports the Method class of a run spec when a run builds it.
"""

from __future__ import annotations

from typing import Any

from sslcli.method_registry import method_class


def build_method(spec: Any) -> Any:
    """The `sslcli.methods.base.Method` of a validated run spec (its registered class, built from the spec)."""
    return method_class(spec.method.name)(spec)
