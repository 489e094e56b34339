"""`study report`: DIR/report.md and DIR/report.html from the files `study run` wrote (nothing is recomputed).

Sections: expectations (verdict, rule, the paper's numbers), one table per metric (mean ± std over seeds, n,
per-seed values; per-layer metrics res2..res5 side by side), PNG plots in DIR/plots/ (metric against layer per arm
with a min-max band over seeds, bar charts with std error bars, training-loss curves per arm from each run's
metrics.jsonl), and the exact commands and software versions.
"""

from __future__ import annotations

import html
import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

from sslcli.io import atomic_path, write_text_atomic
from sslcli.study.expect import judge

LAYERS = ("res2", "res3", "res4", "res5")
LAYER_RE = re.compile(r"^(?P<pre>.+?)\.(?P<layer>res[2-5])(?:\.(?P<post>.+))?$")
# Per-item breakdowns (segment retrieval's per_class_iou.<class>): one table, items as rows, no plot per item.
PER_ITEM_RE = re.compile(r"^(?P<family>.+\.per_[A-Za-z_]+)\.(?P<item>.+)$")


# ------------------------------------------------------------------------------------------------------ loading
def load(folder: Path) -> dict:
    plan = json.loads((folder / "study.json").read_text())
    rows = []
    if (folder / "results.jsonl").is_file():
        rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    env_path = folder / "environment.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    return {"plan": plan, "rows": rows, "env": env}


def values_by_metric(rows: list[dict]) -> dict[str, dict[str, dict[int, float | None]]]:
    """metric -> arm -> seed -> value."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        out[row["metric"]][row["arm"]][row["seed"]] = row["value"]
    return out


def stats(values: dict[int, float | None]) -> tuple[float | None, float | None, int]:
    finite = [v for v in values.values() if v is not None and math.isfinite(v)]
    if not finite:
        return None, None, 0
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0, len(finite)


def families(metrics: list[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Per-layer metrics grouped ({"coupling.{layer}.mean": {"res2": "coupling.res2.mean", ...}}) and the rest."""
    grouped: dict[str, dict[str, str]] = {}
    scalar = []
    for name in metrics:
        m = LAYER_RE.match(name)
        if m:
            key = f"{m['pre']}.{{layer}}" + (f".{m['post']}" if m["post"] else "")
            grouped.setdefault(key, {})[m["layer"]] = name
        else:
            scalar.append(name)
    return grouped, scalar


def loss_curves(plan: dict) -> dict[str, list[tuple[int, list[tuple[int, float]]]]]:
    """arm -> [(seed, [(step, loss), ...])] from each trained run's metrics.jsonl step records."""
    curves: dict = defaultdict(list)
    for run in plan["runs"]:
        if run["random_init"]:
            continue
        path = Path(run["output_dir"]) / "metrics.jsonl"
        if not path.is_file():
            continue
        points = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("type") == "step" and isinstance(rec.get("loss"), (int, float)):
                points.append((rec["step"], float(rec["loss"])))
        curves[run["arm"]].append((run["seed"], points))
    return curves


def commands(folder: Path, plan: dict) -> list[str]:
    """Every command the study ran, in order: prepare steps, runs, evaluations (from their record files)."""
    from sslcli.study.spec import prepare_commands

    cmds = []
    for step in prepare_commands(plan["prepare"], plan["seeds"]):
        marker = folder / "prepare" / step.marker
        if marker.is_file():
            cmds.append(json.loads(marker.read_text())["command"])
    for run in plan["runs"]:
        marker = Path(run["output_dir"]) / "study-run.json"
        if marker.is_file() and json.loads(marker.read_text()).get("command"):
            cmds.append(json.loads(marker.read_text())["command"])
    seen = set()
    for path in sorted((folder / "evals").glob("*.json")):
        cmd = json.loads(path.read_text()).get("command")
        if cmd and cmd not in seen:
            seen.add(cmd)
            cmds.append(cmd)
    return cmds


# ----------------------------------------------------------------------------------------------------- plotting
def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.6))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("{layer}", "layers"))


def plot_layers(family: str, layers: dict[str, str], by_metric, arms: list[str], path: Path) -> None:
    fig, ax = _figure()
    x = [LAYERS.index(layer) for layer in LAYERS if layer in layers]
    names = [layers[layer] for layer in LAYERS if layer in layers]
    for arm in arms:
        means, lows, highs, xs = [], [], [], []
        for xi, name in zip(x, names):
            vals = [v for v in by_metric.get(name, {}).get(arm, {}).values() if v is not None and math.isfinite(v)]
            if vals:
                xs.append(xi)
                means.append(statistics.fmean(vals))
                lows.append(min(vals))
                highs.append(max(vals))
        if xs:
            line, = ax.plot(xs, means, marker="o", label=arm, linestyle="--" if arm == "random-init" else "-")
            ax.fill_between(xs, lows, highs, alpha=0.2, color=line.get_color())
    ax.set_xticks(x, [LAYERS[i] for i in x])
    ax.set_xlabel("layer")
    ax.set_ylabel(family.replace("{layer}.", "").replace(".{layer}", ""))
    ax.set_title(f"{family} (mean over seeds; band: min-max)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_bars(metric: str, by_arm, arms: list[str], path: Path) -> None:
    fig, ax = _figure()
    shown = [a for a in arms if stats(by_arm.get(a, {}))[0] is not None]
    means = [stats(by_arm[a])[0] for a in shown]
    stds = [stats(by_arm[a])[1] for a in shown]
    ax.bar(range(len(shown)), means, yerr=stds, capsize=4, color=[f"C{i}" for i in range(len(shown))])
    ax.set_xticks(range(len(shown)), shown, rotation=20, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} (mean ± std over seeds)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


def plot_losses(curves, path: Path) -> None:
    fig, ax = _figure()
    for i, (arm, runs) in enumerate(curves.items()):
        for j, (_seed, points) in enumerate(runs):
            if points:
                steps, losses = zip(*points)
                ax.plot(steps, losses, color=f"C{i}", alpha=0.8, label=arm if j == 0 else None,
                        linestyle=("-", "--", ":", "-.")[j % 4])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss per arm (one line per seed)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


# ------------------------------------------------------------------------------------------------------ writing
def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}"


def _cell(values: dict[int, float | None]) -> str:
    mean, std, n = stats(values)
    return "—" if n == 0 else f"{_fmt(mean)} ± {_fmt(std)} (n={n})"


def cost(rows: list[dict], arms: list[str]) -> tuple[list[list[str]], float, float]:
    """Per-arm training seconds (mean, min, max over seeds) and the totals of training and evaluation seconds.

    Each run's ``train_wall_s`` and each evaluation's ``eval_wall_s`` are counted once (rows repeat them per metric).
    They are process times: with ``study run --jobs N`` runs overlap, so the study's wall time is shorter.
    """
    train: dict[tuple[str, int], float] = {}
    evals: dict[tuple[str, int, str], float] = {}
    for r in rows:
        if r.get("train_wall_s") is not None:
            train[(r["arm"], r["seed"])] = float(r["train_wall_s"])
        if r.get("eval_wall_s") is not None:
            evals[(r["arm"], r["seed"], r.get("eval_hash", ""))] = float(r["eval_wall_s"])
    body = []
    for arm in arms:
        times = [t for (a, _), t in sorted(train.items()) if a == arm]
        if times:
            body.append([arm, str(len(times)), f"{sum(times) / len(times):.0f}", f"{min(times):.0f}", f"{max(times):.0f}"])
    return body, sum(train.values()), sum(evals.values())


COST_HEADER = ["arm", "runs", "training s (mean)", "min", "max"]


def _cost_note(train_total: float, eval_total: float) -> str:
    return (f"Training {train_total:.0f} s and evaluation {eval_total:.0f} s in all, summed over processes "
            f"(runs overlap with `--jobs N`, so the study's wall time is shorter than the sum).")


def verdicts(plan: dict, by_metric) -> list[dict]:
    out = []
    for exp in plan["expect"]:
        direction = "lower" if exp.get("lower") is not None else "higher"
        arm = exp[direction]
        vals = by_metric.get(exp["metric"], {})
        result = judge(vals.get(arm, {}), vals.get(exp["than"], {}), direction, exp.get("rule", "all-seeds"))
        out.append({"metric": exp["metric"], "arm": arm, "direction": direction, "than": exp["than"],
                    "paper": exp.get("paper"), **result})
    return out


def _paper(paper) -> str:
    if paper is None:
        return ""
    if isinstance(paper, dict):
        return "; ".join(f"{k}: {v}" for k, v in paper.items())
    return str(paper)


def write_report(folder: str | Path) -> dict:
    """Write report.md, report.html and plots/*.png into ``folder``; return their paths and the verdicts."""
    folder = Path(folder)
    data = load(folder)
    plan, rows, env = data["plan"], data["rows"], data["env"]
    arms = plan["arms"]
    by_metric = values_by_metric(rows)
    grouped, scalar = families(sorted(by_metric))
    per_item: dict[str, list[str]] = {}
    for metric in list(scalar):
        m = PER_ITEM_RE.match(metric)
        if m:
            per_item.setdefault(m["family"], []).append(metric)
            scalar.remove(metric)
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    sections: list[tuple[str, list[str], list[list[str]], str | None]] = []  # title, header, rows, plot

    for family, layers in grouped.items():
        png = f"plots/{_slug(family)}.png"
        plot_layers(family, layers, by_metric, arms, folder / png)
        cols = [layer for layer in LAYERS if layer in layers]
        table = [[arm, *(_cell(by_metric[layers[c]].get(arm, {})) for c in cols)] for arm in arms]
        sections.append((family, ["arm", *cols], table, png))
    for metric in scalar:
        png = f"plots/{_slug(metric)}.png"
        plot_bars(metric, by_metric[metric], arms, folder / png)
        seeds = plan["seeds"]
        table = []
        for arm in arms:
            mean, std, n = stats(by_metric[metric].get(arm, {}))
            table.append([arm, _fmt(mean), _fmt(std), str(n),
                          *(_fmt(by_metric[metric].get(arm, {}).get(s)) for s in seeds)])
        sections.append((metric, ["arm", "mean", "std", "n", *(f"seed {s}" for s in seeds)], table, png))
    for family, names in per_item.items():
        table = [[name[len(family) + 1:], *(_cell(by_metric[name].get(arm, {})) for arm in arms)] for name in names]
        sections.append((f"{family}.*", [family.rsplit(".", 1)[-1], *arms], table, None))
    curves = loss_curves(plan)
    loss_png = None
    if any(points for runs in curves.values() for _, points in runs):
        loss_png = "plots/training-loss.png"
        plot_losses(curves, folder / loss_png)
    checks = verdicts(plan, by_metric)
    cmds = commands(folder, plan)
    costs = cost(rows, arms)
    md = _markdown(plan, env, sections, checks, loss_png, cmds, len(rows), costs)
    page = _html(plan, env, sections, checks, loss_png, cmds, len(rows), costs)
    write_text_atomic(folder / "report.md", md)
    write_text_atomic(folder / "report.html", page)
    return {"markdown": str(folder / "report.md"), "html": str(folder / "report.html"), "tables": len(sections),
            "expectations": [{k: c[k] for k in ("metric", "arm", "direction", "than", "verdict", "rule", "p_value")}
                             for c in checks]}


def _expect_line(c: dict) -> str:
    return f"{c['metric']}: {c['arm']} {c['direction']} than {c['than']}"


def _check_cells(c: dict) -> list[str]:
    p = "" if c["p_value"] is None else f"{c['p_value']:.3g}"
    return [_expect_line(c), c["verdict"].upper(), c["why"], f"{_fmt(c['mean'])} vs {_fmt(c['mean_than'])}",
            str(c["n"]), p, c["rule"], _paper(c["paper"])]


CHECK_HEADER = ["expectation", "verdict", "why", "means", "seeds", "paired-t p", "rule", "paper"]


def _env_lines(env: dict) -> list[str]:
    keys = ("python", "torch", "torchvision", "numpy", "sslcli", "platform", "cpu_count", "OMP_NUM_THREADS")
    lines = [f"{k}: {env[k]}" for k in keys if env.get(k)]
    lines.append(f"training device(s): {', '.join(env.get('devices') or []) or 'n/a'}")
    return lines


def _markdown(plan, env, sections, checks, loss_png, cmds, n_rows, costs) -> str:
    def table(header, body):
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return "\n".join(lines)

    out = [f"# Study: {plan['study']}", "",
           f"Study file `{plan['file']}`; arms: {', '.join(plan['arms'])}; seeds: {plan['seeds']}; "
           f"{n_rows} result rows (results.jsonl).", "", "## Expectations", ""]
    if checks:
        out += [table(CHECK_HEADER, [_check_cells(c) for c in checks]), ""]
        out += [f"- rule `{r}`: {t}" for r, t in sorted({(c['rule'], c['rule_text']) for c in checks})] + [""]
    else:
        out += ["(none)", ""]
    out += ["## Metrics", "", "Mean ± std over seeds (n = seeds with a value).", ""]
    for title, header, body, png in sections:
        out += [f"### {title}", "", table(header, body), ""]
        if png:
            out += [f"![{title}]({png})", ""]
    if loss_png:
        out += ["## Training loss", "", f"![training loss]({loss_png})", ""]
    if costs[0]:
        out += ["## Cost", "", table(COST_HEADER, costs[0]), "", _cost_note(costs[1], costs[2]), ""]
    out += ["## Commands", "", "```", *cmds, "```", "", "## Software", "", *[f"- {x}" for x in _env_lines(env)], ""]
    return "\n".join(out)


def _html(plan, env, sections, checks, loss_png, cmds, n_rows, costs) -> str:
    e = html.escape

    def table(header, body, verdict_col: int | None = None):
        head = "".join(f"<th>{e(h)}</th>" for h in header)
        rows = []
        for row in body:
            cells = []
            for i, c in enumerate(row):
                cls = f' class="v-{c.lower().replace(" ", "-")}"' if i == verdict_col else ""
                cells.append(f"<td{cls}>{e(c)}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return f"<table><tr>{head}</tr>{''.join(rows)}</table>"

    parts = [f"<h1>Study: {e(plan['study'])}</h1>",
             f"<p>Study file <code>{e(plan['file'])}</code>; arms: {e(', '.join(plan['arms']))}; seeds: "
             f"{e(str(plan['seeds']))}; {n_rows} result rows (results.jsonl).</p>", "<h2>Expectations</h2>"]
    if checks:
        parts.append(table(CHECK_HEADER, [_check_cells(c) for c in checks], verdict_col=1))
        parts.append("<ul>" + "".join(f"<li><code>{e(r)}</code>: {e(t)}</li>"
                                      for r, t in sorted({(c['rule'], c['rule_text']) for c in checks})) + "</ul>")
    else:
        parts.append("<p>(none)</p>")
    parts.append("<h2>Metrics</h2><p>Mean ± std over seeds (n = seeds with a value).</p>")
    for title, header, body, png in sections:
        parts.append(f'<h3>{e(title)}</h3><div class="metric">{table(header, body)}')
        if png:
            parts.append(f'<img src="{e(png)}" alt="{e(title)}">')
        parts.append("</div>")
    if loss_png:
        parts.append(f'<h2>Training loss</h2><img src="{e(loss_png)}" alt="training loss">')
    if costs[0]:
        parts.append(f"<h2>Cost</h2>{table(COST_HEADER, costs[0])}<p>{e(_cost_note(costs[1], costs[2]))}</p>")
    parts.append("<h2>Commands</h2><pre>" + e("\n".join(cmds)) + "</pre>")
    parts.append("<h2>Software</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in _env_lines(env)) + "</ul>")
    style = ("body{font-family:sans-serif;max-width:1250px;margin:2em auto;color:#222}"
             ".metric{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
             "font-size:13px;text-align:left}th{background:#eee}img{max-width:420px;display:block;margin:.5em 0}"
             ".v-holds{background:#cfc}.v-does-not-hold{background:#fcc}.v-inconclusive{background:#ffc}"
             "pre{background:#f6f6f6;padding:.5em;font-size:12px;white-space:pre-wrap}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Study {e(plan['study'])}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
