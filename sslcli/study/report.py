"""`study report`: DIR/report.md and DIR/report.html from the study folder's own files: study.json (the plan),
results.jsonl (one row per arm x seed x metric), environment.json and provenance.json (commands, loss curves). No
training output is read, so a committed study folder regenerates its report alone.

Sections: a summary whose sentences are generated from the verdicts (none says an arm is higher or lower unless its
verdict holds), the expectations (mean difference with its t- and bootstrap intervals, d_z, two-sided p,
Holm-adjusted p, seeds needed for 80 % power, the probes' own standard error), one table per metric (mean ± std
over seeds, n, per-seed values; per-layer metrics res2..res5 side by side), PNG plots in DIR/plots/ (every seed's
value with the mean and its 95 % t-interval; metric against layer per arm with a min-max band; training-loss curves),
the cost, and the exact commands (paths relative to the study folder) and software versions.
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
from sslcli.study.expect import FAILS, HOLDS, INCONCLUSIVE

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
    return {"plan": plan, "rows": rows, "env": _optional_json(folder / "environment.json"),
            "provenance": _optional_json(folder / "provenance.json")}


def _optional_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def values_by_metric(rows: list[dict]) -> dict[str, dict[str, dict[int, float | None]]]:
    """metric -> arm -> seed -> value."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        out[row["metric"]][row["arm"]][row["seed"]] = row["value"]
    return out


SE_SUFFIX = "_se"  # a probe's sampling standard error of the metric it follows (e.g. knn.k.20.top1_se)


def split_errors(by_metric: dict) -> dict:
    """Remove the ``<metric>_se`` rows from ``by_metric``; return them as metric -> arm -> seed -> SE."""
    return {name[: -len(SE_SUFFIX)]: by_metric.pop(name) for name in [m for m in by_metric if m.endswith(SE_SUFFIX)]}


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


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """The t-interval of the mean of ``values`` (scipy); None with fewer than 2 values or zero spread."""
    from scipy import stats as scipy_stats

    if len(values) < 2 or statistics.stdev(values) == 0:
        return None
    low, high = scipy_stats.t.interval(confidence, len(values) - 1, loc=statistics.fmean(values),
                                       scale=statistics.stdev(values) / math.sqrt(len(values)))
    return float(low), float(high)


def plot_points(metric: str, by_arm, arms: list[str], path: Path) -> None:
    """Every seed's value as a dot, the mean as a bar's top with its 95 % t-interval, per arm."""
    fig, ax = _figure()
    shown = [a for a in arms if stats(by_arm.get(a, {}))[0] is not None]
    for i, arm in enumerate(shown):
        values = [v for v in by_arm[arm].values() if v is not None and math.isfinite(v)]
        mean = statistics.fmean(values)
        ax.scatter([i + 0.12] * len(values), values, s=14, color=f"C{i}", alpha=0.8, zorder=3)
        interval = mean_interval(values)
        err = None if interval is None else [[mean - interval[0]], [interval[1] - mean]]
        ax.errorbar([i - 0.12], [mean], yerr=err, fmt="o", color=f"C{i}", capsize=4, markersize=6)
    ax.set_xticks(range(len(shown)), shown, rotation=20, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: seeds (dots), mean with 95 % t-interval", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


def plot_losses(curves: list[dict], arms: list[str], path: Path) -> None:
    """One line per trained run (provenance.json's curves), coloured by arm, styled by seed."""
    fig, ax = _figure()
    labelled: set[str] = set()
    seeds = sorted({c["seed"] for c in curves})
    for curve in curves:
        if not curve["steps"]:
            continue
        i, j = arms.index(curve["arm"]), seeds.index(curve["seed"])
        ax.plot(curve["steps"], curve["losses"], color=f"C{i}", alpha=0.8, linestyle=("-", "--", ":", "-.")[j % 4],
                label=None if curve["arm"] in labelled else curve["arm"])
        labelled.add(curve["arm"])
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


def verdicts(plan: dict, by_metric, errors: dict) -> list[dict]:
    """Every expectation judged together (Holm across the study), with the probes' own standard error beside it."""
    from sslcli.study.expect import ALPHA, MIN_SEEDS, judge_all

    comparisons, out = [], []
    for exp in plan["expect"]:
        direction = "lower" if exp.get("lower") is not None else "higher"
        vals = by_metric.get(exp["metric"], {})
        comparisons.append((vals.get(exp[direction], {}), vals.get(exp["than"], {}), direction))
    judged = judge_all(comparisons, min_seeds=plan.get("min_seeds", MIN_SEEDS), alpha=plan.get("alpha", ALPHA))
    for exp, result in zip(plan["expect"], judged):
        direction = result["direction"]
        se = probe_se(errors.get(exp["metric"], {}), exp[direction], exp["than"], result["seeds"])
        below = se is not None and result["mean_diff"] is not None and abs(result["mean_diff"]) < se
        out.append({"metric": exp["metric"], "arm": exp[direction], "than": exp["than"], "paper": exp.get("paper"),
                    **result, "probe_se": se, "below_probe_se": below})
    return out


def probe_se(errors: dict, arm: str, than: str, seeds: list[int]) -> float | None:
    """The evaluation's own noise on one seed's difference: sqrt(SE_a^2 + SE_b^2) from each probe row's sampling
    SE, averaged over the paired seeds (None when the probe records no SE)."""
    a, b = errors.get(arm, {}), errors.get(than, {})
    per_seed = [math.hypot(a[s], b[s]) for s in seeds if _is_number(a.get(s)) and _is_number(b.get(s))]
    return statistics.fmean(per_seed) if per_seed else None


def _is_number(value) -> bool:
    return value is not None and math.isfinite(value)


def summary(checks: list[dict]) -> list[str]:
    """The report's summary, one sentence per expectation, generated from the verdicts alone: a sentence says one
    arm scores higher or lower than another only when that verdict holds (or, reversed, does not hold)."""
    if not checks:
        return []
    first = checks[0]
    counts = {v: sum(c["verdict"] == v for c in checks) for v in (HOLDS, FAILS, INCONCLUSIVE)}
    lines = [f"{counts[HOLDS]} of {len(checks)} expectations hold, {counts[FAILS]} do not hold and "
             f"{counts[INCONCLUSIVE]} are inconclusive (two-sided paired t-tests over seeds, Holm-corrected at a "
             f"family-wise alpha of {first['alpha']}; a verdict needs at least {first['min_seeds']} seeds)."]
    for c in checks:
        numbers = _numbers(c)
        if c["verdict"] == HOLDS:
            lines.append(f"{c['arm']} scores {c['direction']} than {c['than']} on {c['metric']} ({numbers}).")
        elif c["verdict"] == FAILS:
            other = "higher" if c["direction"] == "lower" else "lower"
            lines.append(f"Contrary to the expectation, {c['arm']} scores {other} than {c['than']} on "
                         f"{c['metric']} ({numbers}).")
        else:
            lines.append(f"Not established whether {c['arm']} scores {c['direction']} than {c['than']} on "
                         f"{c['metric']}: {c['why']}.")
        if c["below_probe_se"]:
            lines[-1] += f" The mean difference is smaller than the probe's own standard error ({_fmt(c['probe_se'])})."
    return lines


def _numbers(c: dict) -> str:
    ci = "n/a" if c["ci"] is None else f"{_fmt(c['ci'][0])} to {_fmt(c['ci'][1])}"
    return (f"mean difference {_fmt(c['mean_diff'])}, 95 % CI {ci}, d_z {_fmt(c['effect_size'])}, "
            f"Holm-adjusted p {_fmt(c['p_holm'])}, {c['n']} seeds")


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
    plan, rows, env, prov = data["plan"], data["rows"], data["env"], data["provenance"]
    arms = plan["arms"]
    by_metric = values_by_metric(rows)
    errors = split_errors(by_metric)
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    sections = _metric_sections(plan, by_metric, errors, folder)
    loss_png = None
    curves = prov.get("losses") or []
    if any(c["steps"] for c in curves):
        loss_png = "plots/training-loss.png"
        plot_losses(curves, arms, folder / loss_png)
    checks = verdicts(plan, by_metric, errors)
    parts = {"plan": plan, "env": env, "sections": sections, "checks": checks, "loss_png": loss_png,
             "commands": prov.get("commands"), "rows": len(rows), "costs": cost(rows, arms),
             "summary": summary(checks), "kept_copy": (folder / "study.yaml").is_file()}
    write_text_atomic(folder / "report.md", _markdown(parts))
    write_text_atomic(folder / "report.html", _html(parts))
    keys = ("metric", "arm", "direction", "than", "verdict", "why", "n", "mean_diff", "ci", "bootstrap_ci",
            "effect_size", "p_value", "p_holm", "power", "seeds_needed", "probe_se", "below_probe_se")
    return {"markdown": str(folder / "report.md"), "html": str(folder / "report.html"), "tables": len(sections),
            "expectations": [{k: c[k] for k in keys} for c in checks]}


def _metric_sections(plan: dict, by_metric, errors: dict, folder: Path) -> list[tuple]:
    """(title, header, rows, plot) per metric table: per-layer families, scalar metrics, per-item breakdowns."""
    arms, seeds = plan["arms"], plan["seeds"]
    grouped, scalar = families(sorted(by_metric))
    per_item: dict[str, list[str]] = {}
    for metric in list(scalar):
        m = PER_ITEM_RE.match(metric)
        if m:
            per_item.setdefault(m["family"], []).append(metric)
            scalar.remove(metric)
    sections: list[tuple] = []
    for family, layers in grouped.items():
        png = f"plots/{_slug(family)}.png"
        plot_layers(family, layers, by_metric, arms, folder / png)
        cols = [layer for layer in LAYERS if layer in layers]
        table = [[arm, *(_cell(by_metric[layers[c]].get(arm, {})) for c in cols)] for arm in arms]
        sections.append((family, ["arm", *cols], table, png))
    for metric in scalar:
        png = f"plots/{_slug(metric)}.png"
        plot_points(metric, by_metric[metric], arms, folder / png)
        has_se = metric in errors
        table = []
        for arm in arms:
            mean, std, n = stats(by_metric[metric].get(arm, {}))
            se = [_fmt(stats(errors[metric].get(arm, {}))[0])] if has_se else []
            table.append([arm, _fmt(mean), _fmt(std), str(n), *se,
                          *(_fmt(by_metric[metric].get(arm, {}).get(s)) for s in seeds)])
        header = ["arm", "mean", "std", "n", *(["probe SE"] if has_se else []), *(f"seed {s}" for s in seeds)]
        sections.append((metric, header, table, png))
    for family, names in per_item.items():
        table = [[name[len(family) + 1:], *(_cell(by_metric[name].get(arm, {})) for arm in arms)] for name in names]
        sections.append((f"{family}.*", [family.rsplit(".", 1)[-1], *arms], table, None))
    return sections


def _expect_line(c: dict) -> str:
    return f"{c['metric']}: {c['arm']} {c['direction']} than {c['than']}"


def _interval(ci) -> str:
    return "" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _check_cells(c: dict) -> list[str]:
    def p(value):
        return "" if value is None else f"{value:.3g}"

    se = "" if c["probe_se"] is None else _fmt(c["probe_se"]) + (" (larger than the difference)"
                                                                  if c["below_probe_se"] else "")
    return [_expect_line(c), c["verdict"].upper(), c["why"], str(c["n"]),
            f"{_fmt(c['mean'])} vs {_fmt(c['mean_than'])}", _fmt(c["mean_diff"]), _interval(c["ci"]),
            _interval(c["bootstrap_ci"]), _fmt(c["effect_size"]), p(c["p_value"]), p(c["p_holm"]),
            "" if c["power"] is None else f"{c['power']:.2f}",
            "" if c["seeds_needed"] is None else str(c["seeds_needed"]), se, _paper(c["paper"])]


CHECK_HEADER = ["expectation", "verdict", "why", "seeds", "means", "difference", "95 % t-CI", "95 % bootstrap CI",
                "d_z", "p (two-sided)", "Holm p", "power", "seeds for 80 % power", "probe SE", "paper"]


def _notes(checks: list[dict]) -> list[str]:
    if not checks:
        return []
    return [f"rule `{checks[0]['rule']}`: {checks[0]['rule_text']}.",
            "difference: mean over seeds of arm - than, paired by seed; 95 % t-CI: its t-interval (scipy); "
            "bootstrap CI: percentile interval of the mean, 9,999 resamples (shown from 3 seeds; with few seeds it is "
            "narrower than the t-interval and less reliable); d_z: mean difference / SD of the differences.",
            f"Holm p: Holm-adjusted over the study's {len(checks)} expectations (statsmodels); power: of a two-sided "
            f"test at level alpha / {len(checks)} with this many seeds if the true d_z were the observed one; seeds "
            "for 80 % power: the fewest seeds giving that power (scipy's noncentral t), at least the minimum a verdict "
            "needs. "
            "Both use the observed d_z, which is noisy with few seeds.",
            "probe SE: the evaluation's own sampling noise on one seed's difference, sqrt(SE_a^2 + SE_b^2) from each "
            "probe's binomial standard error over its evaluated objects or images (blank where the probe records "
            "none)."]


def _env_lines(env: dict) -> list[str]:
    keys = ("python", "torch", "torchvision", "numpy", "sslcli", "platform", "cpu_count", "OMP_NUM_THREADS")
    lines = [f"{k}: {env[k]}" for k in keys if env.get(k)]
    lines.append(f"training device(s): {', '.join(env.get('devices') or []) or 'n/a'}")
    return lines


def _intro(plan: dict, n_rows: int, kept_copy: bool) -> str:
    copy = " (its copy as run: study.yaml)" if kept_copy else ""
    budget = f" at its budget {plan['budget']!r} (budgets.{plan['budget']} in the file)" if plan.get("budget") else ""
    return (f"Study file {plan['file']}{copy}{budget}; arms: {', '.join(plan['arms'])}; seeds: "
            f"{', '.join(str(s) for s in plan['seeds'])}; {n_rows} result rows (results.jsonl). Paths are relative to "
            "this folder.")


_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|~])")  # what can start markup inside a line (intraword _ cannot)


def _md(text: str) -> str:
    """User text (arm names, paper notes, reasons) as literal Markdown: special characters escaped."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def _markdown(p: dict) -> str:
    def table(header, body):
        lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in body]
        return "\n".join(lines)

    plan, checks = p["plan"], p["checks"]
    out = [f"# Study: {_md(plan['study'])}", "", _md(_intro(plan, p["rows"], p["kept_copy"])), "", "## Summary", ""]
    out += [f"- {_md(line)}" for line in p["summary"]] or ["(no expectations)"]
    out += ["", "## Expectations", ""]
    if checks:
        out += [table(CHECK_HEADER, [_check_cells(c) for c in checks]), ""]
        out += [f"- {_md(n)}" for n in _notes(checks)] + [""]
    else:
        out += ["(none)", ""]
    out += ["## Metrics", "", "Mean ± std over seeds (n = seeds with a value).", ""]
    for title, header, body, png in p["sections"]:
        out += [f"### {_md(title)}", "", table(header, body), ""]
        if png:
            out += [f"![{_md(title)}]({png})", ""]
    if p["loss_png"]:
        out += ["## Training loss", "", f"![training loss]({p['loss_png']})", ""]
    rows, train_total, eval_total = p["costs"]
    if rows:
        out += ["## Cost", "", table(COST_HEADER, rows), "", _cost_note(train_total, eval_total), ""]
    out += ["## Commands", ""]
    out += ["```", *p["commands"], "```"] if p["commands"] else ["(not recorded in this folder)"]
    out += ["", "## Software", "", *[f"- {_md(x)}" for x in _env_lines(p["env"])], ""]
    return "\n".join(out)


def _html(p: dict) -> str:
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

    plan, checks = p["plan"], p["checks"]
    parts = [f"<h1>Study: {e(plan['study'])}</h1>", f"<p>{e(_intro(plan, p['rows'], p['kept_copy']))}</p>", "<h2>Summary</h2>",
             "<ul>" + "".join(f"<li>{e(line)}</li>" for line in p["summary"]) + "</ul>", "<h2>Expectations</h2>"]
    if checks:
        parts.append(table(CHECK_HEADER, [_check_cells(c) for c in checks], verdict_col=1))
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in _notes(checks)) + "</ul>")
    else:
        parts.append("<p>(none)</p>")
    parts.append("<h2>Metrics</h2><p>Mean ± std over seeds (n = seeds with a value).</p>")
    for title, header, body, png in p["sections"]:
        parts.append(f'<h3>{e(title)}</h3><div class="metric">{table(header, body)}')
        if png:
            parts.append(f'<img src="{e(png)}" alt="{e(title)}">')
        parts.append("</div>")
    if p["loss_png"]:
        parts.append(f'<h2>Training loss</h2><img src="{e(p["loss_png"])}" alt="training loss">')
    rows, train_total, eval_total = p["costs"]
    if rows:
        parts.append(f"<h2>Cost</h2>{table(COST_HEADER, rows)}<p>{e(_cost_note(train_total, eval_total))}</p>")
    cmds = p["commands"]
    parts.append("<h2>Commands</h2>" + (f"<pre>{e(chr(10).join(cmds))}</pre>" if cmds
                                       else "<p>(not recorded in this folder)</p>"))
    parts.append("<h2>Software</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in _env_lines(p["env"])) + "</ul>")
    style = ("body{font-family:sans-serif;max-width:1250px;margin:2em auto;color:#222}"
             ".metric{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
             "font-size:13px;text-align:left}th{background:#eee}img{max-width:420px;display:block;margin:.5em 0}"
             ".v-holds{background:#cfc}.v-does-not-hold{background:#fcc}.v-inconclusive{background:#ffc}"
             "pre{background:#f6f6f6;padding:.5em;font-size:12px;white-space:pre-wrap}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Study {e(plan['study'])}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
