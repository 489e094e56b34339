"""PNG plots of the analyses (D3SSL Fig. 3b / 4b style): a metric against depth res2..res5, one line per checkpoint.

Figures are built with matplotlib's object API and the Agg canvas (no pyplot, no display, no global state) and
written atomically.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sslcli.io import atomic_path
from sslcli.models.backbone import STAGES


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_against_depth(curves: Mapping[str, Mapping[str, dict]], path: str | os.PathLike, ylabel: str, title: str,
                       ideal: float | None = 1.0, stages: Sequence[str] = STAGES) -> Figure:
    """One line per checkpoint: curves[label][stage] = {"mean": m, "q25": lo, "q75": hi}; the band is the IQR."""
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    x = list(range(len(stages)))
    for label, per_stage in curves.items():
        means = [per_stage.get(s, {}).get("mean") for s in stages]
        xs = [i for i, m in zip(x, means) if m is not None]
        line = ax.plot(xs, [m for m in means if m is not None], marker="o", label=label)[0]
        lo = [per_stage[s].get("q25") for s in stages if per_stage.get(s, {}).get("mean") is not None]
        hi = [per_stage[s].get("q75") for s in stages if per_stage.get(s, {}).get("mean") is not None]
        if xs and None not in lo and None not in hi:
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    if ideal is not None:
        ax.axhline(ideal, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(x, list(stages))
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)
    return fig


def _wrap(label: str, width: int = 12) -> str:
    """A tick label on lines of at most ``width`` characters, broken after "/" or "-" where possible."""
    lines = textwrap.wrap(label.replace("/", "/ "), width, break_on_hyphens=True, break_long_words=True)
    return "\n".join(line.replace("/ ", "/") for line in lines)


def plot_oknn(results: Mapping[str, Mapping[str, dict]], path: str | os.PathLike) -> Figure:
    """Grouped bars: per checkpoint, top-1 and top-5 (percent) of each variant ("clean", "disturbed")."""
    labels = list(results)
    # One group per checkpoint: the figure widens with their number (an inch each) and long run names wrap at "/"
    # and "-" to that width, so 7+ labels like "moco-v2-mc-cc-m/epoch_0200" stay apart.
    fig = Figure(figsize=(max(5.5, 1.0 * len(labels) + 1.5), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    series = [(variant, metric) for variant in ("clean", "disturbed") for metric in ("top1", "top5")
              if any(variant in r for r in results.values())]
    width = 0.8 / max(1, len(series))
    for j, (variant, metric) in enumerate(series):
        values = [results[label].get(variant, {}).get(metric, 0.0) for label in labels]
        bars = ax.bar([i + (j - (len(series) - 1) / 2) * width for i in range(len(labels))], values, width,
                      label=f"{variant} {metric.replace('top', 'top-')}")
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small")
    ax.set_xticks(list(range(len(labels))), [_wrap(label) for label in labels], fontsize="small")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Object-level kNN")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not on them
    _save(fig, path)
    return fig
