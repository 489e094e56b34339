"""Crop-IoU analysis (Revisiting §3.1, Fig. 3): how much do the two default MoCo-v2 crops of an image overlap?

Pairs are drawn with `CropViews.sample_boxes`, the sampler training uses, on the real image sizes of a data set
(an image drawn uniformly per pair). The result is a histogram of IoU(crop 0, crop 1), written as PNG + JSON.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sslcli.console import current, progress
from sslcli.data.readers.sources import ImageSource, open_source
from sslcli.data.views.colour import MOCO_V2_COLOUR
from sslcli.data.views.crops import CropViews, box_iou
from sslcli.errors import InputError
from sslcli.io import atomic_path, write_json_atomic

THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7)


def image_sizes(source: ImageSource, limit: int, seed: int) -> list[tuple[int, int]]:
    """(height, width) of up to ``limit`` images (a seeded random subset); unreadable images are skipped with a warning.

    COCO records carry their sizes; other layouts are read from the file headers (no full decode).
    """
    from PIL import Image

    order = np.random.default_rng(seed).permutation(len(source))[:limit]
    sizes, skipped = [], 0
    for i in progress(order.tolist(), description="reading image sizes"):
        record = source[i]
        if record.width and record.height:
            sizes.append((int(record.height), int(record.width)))
            continue
        try:
            with Image.open(record.path) as im:
                sizes.append((im.height, im.width))
        except (OSError, ValueError) as exc:
            skipped += 1
            current().warn(f"{record.path}: skipped ({exc})")
    if not sizes:
        raise InputError(f"{source.root}: no readable images to sample crops from ({skipped} unreadable)")
    return sizes


def sample_pair_ious(sizes: list[tuple[int, int]], pairs: int, views: CropViews, seed: int = 0) -> np.ndarray:
    """IoU between crop 0 and crop 1 for ``pairs`` pairs, each on an image drawn uniformly from ``sizes``."""
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(len(sizes), (pairs,), generator=g).tolist()
    ious = np.empty(pairs)
    for n, i in enumerate(which):
        first, second = views.sample_boxes(*sizes[i], generator=g)[:2]
        ious[n] = box_iou(first, second)
    return ious


def summarize(ious: np.ndarray, bins: int) -> dict:
    counts, edges = np.histogram(ious, bins=bins, range=(0.0, 1.0))
    return {"pairs": int(ious.size), "mean_iou": float(ious.mean()), "median_iou": float(np.median(ious)),
            "fraction_no_overlap": float((ious == 0).mean()),
            "fraction_iou_below": {str(t): float((ious < t).mean()) for t in THRESHOLDS},
            "bin_edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def plot_histogram(summary: dict, path: str | os.PathLike, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    edges, counts = summary["bin_edges"], np.asarray(summary["counts"], dtype=float)
    ax.bar(edges[:-1], counts / max(counts.sum(), 1), width=np.diff(edges), align="edge", edgecolor="white")
    ax.axvline(summary["mean_iou"], color="black", linestyle="--", linewidth=0.8,
               label=f"mean {summary['mean_iou']:.2f}")
    ax.set_xlabel("IoU between the two crops")
    ax.set_ylabel("fraction of pairs")
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize="small")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def crop_iou_report(root: str | os.PathLike, out_dir: str | os.PathLike, pairs: int = 10000, split: str = "train2017",
                    fmt: str = "auto", seed: int = 0, scale: tuple[float, float] = (0.2, 1.0),
                    max_iou: float | None = None, bins: int = 20, max_images: int = 5000,
                    views: CropViews | None = None) -> dict:
    """Sample crop pairs on ``root``'s images, write ``crop-iou.png`` and ``crop-iou.json`` in ``out_dir``.

    Defaults are MoCo-v2's crops (scale 0.2–1, ratio 3/4–4/3); ``max_iou`` applies the Revisiting §3.1 constraint.
    ``views`` (e.g. a run spec's own transform) replaces the sampler built from ``scale`` and ``max_iou``.
    """
    source = open_source(root, split, fmt)
    sizes = image_sizes(source, max_images, seed)
    if views is None:
        views = CropViews(224, scale, (MOCO_V2_COLOUR, MOCO_V2_COLOUR), max_iou=max_iou)
    scale, max_iou = views.large_scale, views.max_iou
    ious = sample_pair_ious(sizes, pairs, views, seed)
    summary = summarize(ious, bins)
    out_dir = Path(out_dir)
    png, json_path = out_dir / "crop-iou.png", out_dir / "crop-iou.json"
    constraint = f", IoU < {max_iou}" if max_iou is not None else ""
    plot_histogram(summary, png, f"{Path(root).name}: {pairs} crop pairs (scale {scale[0]}–{scale[1]}{constraint})")
    result = {"data": str(root), "images": len(sizes), "scale": list(scale), "max_iou": max_iou, "seed": seed,
              **summary}
    if max_iou is not None:  # the rest are the sampler's fallback (no candidate under the bound within max_tries)
        result["fraction_meeting_max_iou"] = float((ious < max_iou).mean())
    result |= {"png": str(png), "json": str(json_path)}
    write_json_atomic(json_path, result)
    return result
