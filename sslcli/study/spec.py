"""Study files: pydantic models, loading, and the resolution of arms x seeds into validated run specs.

A study names a base run spec, arms (dotted overrides of it, the semantics of `pretrain --set`), seeds, optional
`prepare` steps, evaluations and expectations. Everything is validated before any training: every arm x seed spec
with `sslcli.spec.parse_spec`, every expectation's arms and (as far as the evaluation kinds declare them) metrics.
Errors are one line naming the study file and the field.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sslcli.errors import InputError
from sslcli.slurm import SlurmOptions
from sslcli.spec import RunSpec, SpecError, apply_overrides, hashed_spec, parse_spec
from sslcli.study.metrics import EVAL_KINDS, declared_metric_ok

RANDOM_INIT = "random-init"
OUT_TOKEN = "{out}"
# Per-seed data: prepare steps that contain it run once per seed, so every seed is an independent draw of data
# (e.g. `synthetic {out}/data-{seed} --seed {seed}`) as well as of initialisation.
SEED_TOKEN = "{seed}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Evaluation(_Strict):
    kind: Literal["knn", "linear", "segment-retrieval", "coupling", "positional", "oknn"]
    name: str | None = Field(None, description="Metric prefix (default: the kind); needed when a kind repeats.")
    options: dict[str, Any] = Field(default_factory=dict, description="CLI options of `sslcli probe|analyze KIND`.")

    @property
    def prefix(self) -> str:
        return self.name or self.kind


class Expectation(_Strict):
    metric: str
    lower: str | None = None
    higher: str | None = None
    than: str
    rule: str = Field("paired-t", description="The test behind the verdict: `paired-t` (two-sided, Holm-corrected "
                      "across the study's expectations; the only rule).")
    paper: str | dict[str, Any] | None = Field(None, description="The paper's numbers, shown in the report.")

    @model_validator(mode="after")
    def _one_direction(self) -> Expectation:
        if self.rule == "all-seeds":
            raise ValueError("rule 'all-seeds' was removed: 2-3 seeds agree in sign by chance 25-50 % of the time "
                             "when two arms are equal; use rule: paired-t (the default)")
        if self.rule != "paired-t":
            raise ValueError(f"rule {self.rule!r}: expected 'paired-t'")
        if (self.lower is None) == (self.higher is None):
            raise ValueError("give exactly one of 'lower' or 'higher' (the arm expected below/above 'than')")
        return self

    @property
    def arm(self) -> str:
        return self.lower if self.lower is not None else self.higher  # type: ignore[return-value]

    @property
    def direction(self) -> str:
        return "lower" if self.lower is not None else "higher"


class Estimate(_Strict):
    """Inputs of the GPU-hours estimate of `study run --dry-run` (an estimate, not a measurement)."""

    images_per_s: dict[str, float] = Field(default_factory=dict, description="Assumed training images/s on one "
                                           "GPU per arm or per method name (overrides the built-in table).")
    dataset_images: int | None = Field(None, ge=1, description="Training images per epoch when the data root "
                                       "cannot be read here.")


class ExecutorSection(SlurmOptions):
    """Where the training runs happen: ``kind: local`` (this machine) or ``slurm`` (one job per run, these
    resources); `study run --executor` and its flags override it."""

    kind: Literal["local", "slurm"] = "local"


class StudyFile(_Strict):
    name: str
    description: str | None = None
    base: str | dict[str, Any]
    arms: dict[str, dict[str, Any] | list[str]]
    seeds: list[int] = Field(..., min_length=1)
    prepare: list[str] = Field(default_factory=list)
    evaluate: list[Evaluation] = Field(default_factory=list)
    random_init: bool = False
    expect: list[Expectation] = Field(default_factory=list)
    min_seeds: int = Field(5, ge=2, description="Seeds (paired by seed) an expectation needs before it can hold or "
                           "fail; fewer gives INCONCLUSIVE whatever the p-value.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Family-wise error rate of the study's verdicts (Holm).")
    estimate: Estimate = Estimate()
    executor: ExecutorSection = ExecutorSection()
    budgets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Named alternative sizes of the "
                                               "same study (`study run --budget NAME`): dotted keys of this file "
                                               "(list items by index, e.g. evaluate.0.options.pairs) and their values.")


@dataclass
class PlannedRun:
    arm: str
    seed: int
    spec: RunSpec
    hash: str
    random_init: bool = False

    @property
    def key(self) -> str:
        return f"{self.arm} seed {self.seed}"


@dataclass
class Study:
    path: Path
    file: StudyFile
    out: Path
    runs: list[PlannedRun]
    prepare_hash: str
    arm_names: list[str] = field(default_factory=list)
    budget: str | None = None

    @property
    def trained(self) -> list[PlannedRun]:
        return [r for r in self.runs if not r.random_init]

    @property
    def references(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.random_init]


def _one_line(source: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(study)"
    msg = "unknown key (not part of a study file)" if err["type"] == "extra_forbidden" else err["msg"]
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def _map_strings(value: Any, fn) -> Any:
    """Apply ``fn`` to every string of a nested structure of dicts and lists."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def substitute(value: Any, out: str, seed: int | None = None) -> Any:
    """Replace ``{out}`` (and ``{seed}`` when a seed is given) in every string of a nested structure."""
    def fill(s: str) -> str:
        s = s.replace(OUT_TOKEN, out)
        return s.replace(SEED_TOKEN, str(seed)) if seed is not None else s

    return _map_strings(value, fill)


@dataclass(frozen=True)
class PrepareCommand:
    """One `sslcli prepare` call of a study: a step, for one seed when the step names ``{seed}``."""

    step: str
    seed: int | None

    @property
    def marker(self) -> str:
        """The file name of its done-marker in DIR/prepare/ (a step without {seed} keeps its original name)."""
        key = self.step if self.seed is None else {"step": self.step, "seed": self.seed}
        return f"{content_hash(key)}.json"

    def args(self, out: str) -> list[str]:
        return shlex.split(substitute(self.step, out, self.seed))


def prepare_commands(steps: list[str], seeds: list[int]) -> list[PrepareCommand]:
    """Every prepare call in order: each step once, or once per seed when it names ``{seed}``."""
    return [PrepareCommand(step, seed) for step in steps
            for seed in (seeds if SEED_TOKEN in step else [None])]


def relative_to(value: Any, out: str) -> Any:
    """Paths under the study folder written relative to it, in every string (what study.json, provenance.json and
    the report keep, so a study folder can be moved or committed)."""
    # The folder itself (not a longer name that starts with it, like DIR2): "DIR/x" -> "x", a lone "DIR" -> ".".
    pattern = re.compile(re.escape(out.rstrip("/")) + r"(/|(?![\w.-]))")
    return _map_strings(value, lambda s: pattern.sub(lambda m: "" if m.group(1) == "/" else ".", s))


def shown_path(path: Path) -> str:
    """A study file as the report names it: relative to the working folder when below it, else its name."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name


def tokenise(value: Any, out: str) -> Any:
    """The inverse of `substitute` for hashing: a study moved to another folder keeps its hashes."""
    return _map_strings(value, lambda s: s.replace(out, OUT_TOKEN))


def content_hash(obj: Any, length: int = 16) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def arm_overrides(arm: str, value: dict[str, Any] | list[str]) -> list[str]:
    """An arm as `--set` strings: a mapping's values are JSON, which YAML (and so apply_overrides) reads back."""
    if isinstance(value, list):
        return value
    return [f"{key}={json.dumps(v)}" for key, v in value.items()]


def load_study(path: str | Path, out: str | Path | None = None, world_size: int = 1,
               budget: str | None = None) -> Study:
    """Read and validate a study file (with its budget ``budget`` applied, when given); resolve every arm x seed
    into a RunSpec under ``out``/runs/<hash> (default out: studies-out/<name>, or <name>-<budget>)."""
    path = Path(path)
    raw = read_yaml(path, "study file")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping at the top level (name, base, arms, seeds, ...)")
    if budget is not None:
        raw = apply_budget(path, raw, budget)
    try:
        study = StudyFile.model_validate(raw)
    except ValidationError as exc:
        where = str(path) if budget is None else f"{path} (budget {budget})"
        raise InputError(_one_line(where, exc)) from None
    _check_name(path, study.name)
    default = study.name if budget is None else f"{study.name}-{budget}"
    out_dir = Path(out) if out is not None else Path("studies-out") / default
    out_dir = out_dir.resolve()
    out_str = str(out_dir)
    base = _base_spec(path, study)
    if RANDOM_INIT in study.arms:
        raise InputError(f"{path}: arms.{RANDOM_INIT}: reserved for the untrained reference (random_init: true)")
    if len(set(study.seeds)) != len(study.seeds):
        raise InputError(f"{path}: seeds: {study.seeds} repeats a seed")
    _check_evaluations(path, study)
    prepare_hash = content_hash(study.prepare)
    runs: list[PlannedRun] = []
    for arm, value in study.arms.items():
        for seed in study.seeds:
            runs.append(_resolve(path, arm, value, seed, base, out_str, prepare_hash, world_size, trained=True))
    if study.random_init:
        for seed in study.seeds:  # the base spec's architecture, built as the engine builds it for this seed
            runs.append(_resolve(path, RANDOM_INIT, {}, seed, base, out_str, prepare_hash, world_size,
                                 trained=False))
    arm_names = [*study.arms, *([RANDOM_INIT] if study.random_init else [])]
    _check_expectations(path, study, arm_names)
    return Study(path, study, out_dir, runs, prepare_hash, arm_names, budget)


def apply_budget(path: Path, raw: dict, name: str) -> dict:
    """A copy of the study file ``raw`` with its budget ``name`` applied: each dotted key (``base.max_steps``,
    ``seeds``, ``evaluate.0.options.pairs``) set to the budget's value."""
    budgets = raw.get("budgets")
    budgets = budgets if isinstance(budgets, dict) else {}
    if name not in budgets:
        raise InputError(f"{path}: --budget {name!r}: the study file has no such budget (budgets: "
                         f"{', '.join(map(str, budgets)) or 'none'})")
    changes = budgets[name]
    if not isinstance(changes, dict):
        raise InputError(f"{path}: budgets.{name}: expected a mapping of dotted keys of the study file to values")
    out = copy.deepcopy(raw)
    for key, value in changes.items():
        _set_dotted(out, str(key), copy.deepcopy(value), f"{path}: budgets.{name}.{key}")
    return out


def _set_dotted(data: dict, key: str, value: Any, where: str) -> None:
    """``data[a][b][0][c] = value`` for ``key`` "a.b.0.c": a missing mapping key is created, a list item must exist."""
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise InputError(f"{where}: {'.'.join(parts[:depth]) or '(study)'} is a list of {len(node)} "
                                 f"item(s); {part!r} is not one of its indices")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and part not in node:
                node[part] = {}
        else:
            raise InputError(f"{where}: {'.'.join(parts[:depth])} is {node!r}, not a section or a list")
        if last:
            node[index] = value
        else:
            node = node[index]


def _check_name(path: Path, name: str) -> None:
    """The name is the default output folder studies-out/<name>: one plain folder name, so it stays inside."""
    if name.strip() in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise InputError(f"{path}: name: {name!r} names the default output folder studies-out/<name>; expected a "
                         "plain folder name (no /, \\ or .., not empty)")


def _base_spec(path: Path, study: StudyFile) -> dict:
    if isinstance(study.base, dict):
        return study.base
    base_path = (path.parent / study.base)
    if not base_path.is_file():
        raise InputError(f"{path}: base: {study.base} not found (relative to the study file: {base_path})")
    data = read_yaml(base_path, "base run spec")
    if not isinstance(data, dict):
        raise InputError(f"{base_path}: expected a run spec mapping")
    return data


def _resolve(path: Path, arm: str, value, seed: int, base: dict, out: str, prepare_hash: str, world_size: int,
             trained: bool) -> PlannedRun:
    data = copy.deepcopy(base)
    try:
        data = apply_overrides(data, arm_overrides(arm, value))
    except InputError as exc:
        raise InputError(f"{path}: arms.{arm}: {exc}") from None
    data["seed"] = seed
    data = substitute(data, out, seed)
    data["output_dir"] = "(set per run)"
    try:
        spec = parse_spec(data, f"arms.{arm}", world_size)
    except SpecError as exc:
        where = "base" if not value else f"arms.{arm}"
        raise InputError(f"{path}: {where}: resolved run spec (seed {seed}) is invalid: "
                         + "; ".join(exc.problems)) from None
    resolved = hashed_spec(spec.model_dump(mode="json"))
    run_hash = content_hash({"spec": tokenise(resolved, out), "prepare": prepare_hash,
                             "kind": "train" if trained else RANDOM_INIT})
    spec.output_dir = str(Path(out) / "runs" / run_hash)
    return PlannedRun(arm, seed, spec, run_hash, random_init=not trained)


def _check_evaluations(path: Path, study: StudyFile) -> None:
    prefixes = [e.prefix for e in study.evaluate]
    for i, ev in enumerate(study.evaluate):
        if prefixes.count(ev.prefix) > 1:
            raise InputError(f"{path}: evaluate.{i}.name: {ev.prefix!r} is used by several evaluations; give each "
                             "its own name (the metric prefix)")
        if "." in ev.prefix:
            raise InputError(f"{path}: evaluate.{i}.name: {ev.prefix!r} may not contain a dot")


def _check_expectations(path: Path, study: StudyFile, arm_names: list[str]) -> None:
    kinds = {e.prefix: e for e in study.evaluate}
    for i, exp in enumerate(study.expect):
        for role, arm in ((exp.direction, exp.arm), ("than", exp.than)):
            if arm not in arm_names:
                hint = " (set random_init: true to get it)" if arm == RANDOM_INIT else ""
                raise InputError(f"{path}: expect.{i}.{role}: unknown arm {arm!r}; the arms are "
                                 f"{', '.join(arm_names)}{hint}")
        if exp.arm == exp.than:
            raise InputError(f"{path}: expect.{i}: compares arm {exp.arm!r} with itself")
        prefix = exp.metric.split(".", 1)[0]
        if prefix not in kinds:
            raise InputError(f"{path}: expect.{i}.metric: {exp.metric!r} names no evaluation of this study "
                             f"(evaluations: {', '.join(kinds) or 'none'})")
        ev = kinds[prefix]
        ok, known = declared_metric_ok(ev.kind, exp.metric[len(prefix) + 1:], ev.options)
        if not ok:
            raise InputError(f"{path}: expect.{i}.metric: {exp.metric!r} is not a metric that {ev.kind} yields "
                             f"(it yields {prefix}.{known})")


__all__ = ["EVAL_KINDS", "RANDOM_INIT", "Study", "StudyFile", "PlannedRun", "load_study", "apply_budget",
           "content_hash", "substitute", "relative_to", "prepare_commands"]
