"""What a command prints without --json: the headline numbers as tables and short lines (the JSON is unchanged).

`command(..., human=...)` picks a renderer; every other command gets `key_values`. One table renderer
(`table`, rich) serves the analyses' per-checkpoint tables and the study summaries.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterable, Sequence
from typing import Any

LAYERS = ("res2", "res3", "res4", "res5")
# Nested values longer than this print as a count instead (--json has them whole): never cut JSON mid-way.
MAX_INLINE = 200


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain-text table (no colour, no terminal needed): the first column left-aligned, numbers right-aligned."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    grid = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, title_style=None, header_style=None)
    for i, name in enumerate(header):
        grid.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        grid.add_row(*row)
    buffer = io.StringIO()
    width = max(100, shutil.get_terminal_size((160, 24)).columns)
    Console(file=buffer, width=width, color_system=None, highlight=False, emoji=False).print(grid)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()).strip("\n")


def number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _inline(value: Any) -> str:
    """A value on one line: numbers short, small lists and mappings as JSON, big ones as a count."""
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
        if len(text) <= MAX_INLINE:
            return text
        noun = "entries" if isinstance(value, dict) else "items"
        return f"({len(value)} {noun}; --json shows them)"
    return number(value)


def key_values(result: dict[str, Any]) -> str:
    """The generic rendering: one ``key: value`` line per key; a mapping too long for one line gets one indented
    line per key of its own."""
    lines = []
    for key, value in result.items():
        text = _inline(value)
        if isinstance(value, dict) and text.startswith("("):
            lines.append(f"{key}:")
            lines += [f"  {k}: {_inline(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {text}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- analyses
def _mean_std(stats: dict) -> str:
    if stats.get("mean") is None:
        return "n/a"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}" if stats.get("std") is not None else f"{stats['mean']:.4f}"


def _layer_rows(entries: list[dict]) -> list[list[str]]:
    """One row per checkpoint (and per pair group, where the analysis split them): mean ± std per layer, n."""
    rows = []
    for entry in entries:
        parts = [(entry["label"], entry["layers"])]
        parts += [(f"{entry['label']} ({group})", values["layers"])
                  for group, values in (entry.get("groups") or {}).items()]
        for label, layers in parts:
            n = layers.get("res5", {}).get("n")
            rows.append([label, *(_mean_std(layers.get(layer, {})) for layer in LAYERS), number(n)])
    return rows


def _oknn_rows(entries: list[dict], variants: list[str]) -> list[list[str]]:
    return [[e["label"], *(f"{e[v][key]:.2f}" for v in variants for key in ("top1", "top5"))] for e in entries]


TITLES = {
    "coupling": "coupling rate (CR) per layer, mean ± std over the pairs (1 = no coupling)",
    "positional": "positional bias: mean cosine similarity (MCS) per layer, mean ± std over the objects "
                  "(1 = no positional information)",
}


def analysis(result: dict[str, Any]) -> str:
    """`sslcli analyze coupling|positional|oknn`: a table with one row per checkpoint, then where the files are."""
    kind, entries = result["analysis"], result["checkpoints"]
    if kind == "oknn":
        variants = [v for v in ("clean", "disturbed") if entries and v in entries[0]]
        header = ["run", *(f"{v} top-{k}" for v in variants for k in (1, 5))]
        settings = result.get("settings", {})
        title = (f"object-level kNN (%), k {settings.get('k')}, {settings.get('classes')} classes, bank "
                 f"{settings.get('train_split')}, queries {settings.get('split')}")
        text = table(title, header, _oknn_rows(entries, variants))
    else:
        text = table(TITLES[kind], ["run", *LAYERS, "n"], _layer_rows(entries))
    lines = [text]
    outputs = result.get("outputs") or {}
    if outputs:
        lines.append("written: " + ", ".join(str(p) for p in outputs.values()))
    skipped = result.get("skipped_images") or []
    if skipped:
        lines.append(f"skipped images: {len(skipped)} (--json lists them)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- studies
def verdicts(expectations: list[dict]) -> str:
    """One line per expectation: its verdict, then what was expected (keys a newer report adds are ignored)."""
    if not expectations:
        return "expectations: none"
    width = max(len(str(e.get("verdict", ""))) for e in expectations)
    lines = ["expectations:"]
    for e in expectations:
        lines.append(f"  {str(e.get('verdict', '?')).upper():<{width}}  {e.get('metric')}: {e.get('arm')} "
                     f"{e.get('direction')} than {e.get('than')}")
    return "\n".join(lines)


def study_run(summary: dict[str, Any]) -> str:
    """`sslcli study run`: what was done, where the results and the report are, and each expectation's verdict."""
    report = summary.get("report") or {}
    lines = [f"study folder: {summary.get('out')}",
             f"done now: {summary.get('prepared', 0)} prepare step(s), {summary.get('trained', 0)} run(s) trained, "
             f"{summary.get('evaluated', 0)} evaluation(s); {summary.get('skipped', 0)} step(s) skipped "
             "(already done)",
             f"results: {summary.get('results')} ({summary.get('rows')} rows)"]
    lines += _report_lines(report)
    return "\n".join(lines)


def study_report(report: dict[str, Any]) -> str:
    """`sslcli study report`: where the report is and each expectation's verdict."""
    return "\n".join(_report_lines(report))


def _report_lines(report: dict[str, Any]) -> list[str]:
    paths = [report[k] for k in ("markdown", "html") if report.get(k)]
    lines = [f"report: {', '.join(paths)}"] if paths else []
    return [*lines, verdicts(report.get("expectations") or [])]
