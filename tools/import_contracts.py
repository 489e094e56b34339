"""The import-linter contract type of sslcli's walls: a forbidden contract written as "everything but".

import-linter's own ``forbidden`` contract names its modules one by one (or by a wildcard), so a wall such as "the
models import no other sslcli module but sslcli.distributed" had to list every other module by name, and a new
top-level module escaped it. Here both sides are a wildcard less named exceptions:

    type = "forbidden_except"
    source_modules = ["sslcli.models"]
    forbidden_modules = ["sslcli.*"]
    forbidden_exceptions = ["sslcli.distributed", "sslcli.errors"]

forbids sslcli.models every top-level module of sslcli, present or future, except the two named (and itself), with
indirect imports followed as in ``forbidden``. ``source_exceptions`` does the same on the importing side. An exception
that names no module the wildcard matches is a configuration error, so a typo cannot widen a wall.
``independence_except`` writes import-linter's ``independence`` contract the same way: ``modules = ["sslcli.methods.*"]``
less ``exceptions = ["sslcli.methods.base"]`` makes every method home, present or future, independent of the others.
Registered in pyproject.toml under ``contract_types``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from grimp import ImportGraph
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.independence import IndependenceContract
from importlinter.domain import fields
from importlinter.domain.contract import ContractCheck
from importlinter.domain.helpers import module_expressions_to_modules
from importlinter.domain.imports import ModuleExpression


def modules_except(graph: ImportGraph, expressions: Iterable[ModuleExpression],
                   exceptions: Iterable[ModuleExpression] | None, side: str) -> set[ModuleExpression]:
    """The modules ``expressions`` match in ``graph`` less ``exceptions``, each exception one of those matched."""
    matched = {module.name for module in module_expressions_to_modules(graph, expressions)}
    excepted = {str(expression) for expression in exceptions or ()}
    unknown = sorted(excepted - matched)
    if unknown:
        prefix = f"{side}_" if side else ""  # forbidden_except has two sides; independence_except one
        raise ValueError(f"{prefix}exceptions {', '.join(unknown)}: not among the modules that {prefix}modules "
                         f"({', '.join(sorted(map(str, expressions)))}) match")
    return {ModuleExpression(name) for name in sorted(matched - excepted)}


class ForbiddenExceptContract(ForbiddenContract):
    """``forbidden`` with wildcard sides less ``source_exceptions`` and ``forbidden_exceptions``."""

    type_name = "forbidden_except"

    source_exceptions = fields.SetField(subfield=fields.ModuleExpressionField(), required=False)
    forbidden_exceptions = fields.SetField(subfield=fields.ModuleExpressionField(), required=False)

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        # Resolved against this graph on a copy (the configured expressions stay as written), then checked by the
        # forbidden contract as if the modules had been listed by name.
        resolved = copy.copy(self)
        resolved.source_modules = modules_except(graph, self.source_modules, self.source_exceptions, "source")
        resolved.forbidden_modules = modules_except(graph, self.forbidden_modules, self.forbidden_exceptions,
                                                    "forbidden")
        return super(ForbiddenExceptContract, resolved).check(graph, verbose)


class IndependenceExceptContract(IndependenceContract):
    """``independence`` over wildcard ``modules`` less ``exceptions`` (a new method home is covered from its start)."""

    type_name = "independence_except"

    exceptions = fields.SetField(subfield=fields.ModuleExpressionField(), required=False)

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        resolved = copy.copy(self)
        resolved.modules = modules_except(graph, self.modules, self.exceptions, "")
        return super(IndependenceExceptContract, resolved).check(graph, verbose)
