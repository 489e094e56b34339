"""`sslcli analyze crop-iou`: IoU histogram between the two default MoCo crops (Revisiting Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import analyze_app
from sslcli.cli.common import command
from sslcli.errors import InputError


@command(analyze_app, "crop-iou")
def analyze_crop_iou(
    data: Path = typer.Argument(..., help="Data-set root (COCO, ImageFolder, folder) or manifest."),
    out: Path = typer.Option(Path("crop-iou"), "--out", help="Output folder for crop-iou.png and crop-iou.json."),
    pairs: int = typer.Option(10000, "--pairs", help="Number of crop pairs to sample."),
    split: str = typer.Option("train2017", "--split", help="COCO split."),
    fmt: str = typer.Option("auto", "--format", help="auto, coco, imagefolder, folder or manifest."),
    seed: int = typer.Option(0, "--seed", help="Random seed (image choice and crops)."),
    min_scale: float = typer.Option(0.2, "--min-scale", help="Smallest crop area fraction (MoCo-v2: 0.2)."),
    max_iou: float | None = typer.Option(None, "--max-iou", help="Apply the Revisiting §3.1 constraint IoU < this."),
    bins: int = typer.Option(20, "--bins", help="Histogram bins over [0, 1]."),
    max_images: int = typer.Option(5000, "--max-images", help="Sample crops on at most this many images."),
    spec: Path | None = typer.Option(None, "--spec", help="Use this run spec's crop sampler (any method that "
                                                          "registers a crop pair: moco, simclr, byol, densecl, pixpro, "
                                                          "plrc, plugins) instead of --min-scale/--max-iou."),
):
    """IoU histogram between the two default crops (the training crop sampler), as PNG + JSON.

    Example: sslcli analyze crop-iou coco/ --pairs 10000 --out crop-iou/
    """
    from sslcli.analysis.crop_iou import crop_iou_report

    if pairs < 1:
        raise InputError(f"--pairs {pairs}: expected a positive number of pairs")
    if not 0.0 < min_scale <= 1.0:
        raise InputError(f"--min-scale {min_scale}: expected a fraction in (0, 1]")
    if max_iou is not None and not 0.0 < max_iou <= 1.0:
        raise InputError(f"--max-iou {max_iou}: expected an IoU in (0, 1]")
    if not 2 <= bins <= 1000:
        raise InputError(f"--bins {bins}: expected 2 to 1000 bins")
    if max_images < 1:
        raise InputError(f"--max-images {max_images}: expected a positive number of images")
    views = _spec_views(spec) if spec is not None else None
    result = crop_iou_report(data, out, pairs, split, fmt, seed, (min_scale, 1.0), max_iou, bins, max_images, views)
    result.pop("counts")
    result.pop("bin_edges")
    return result


def _spec_views(path: Path):
    from sslcli.method_registry import crop_iou_methods, import_target, method_entry
    from sslcli.spec import load_spec

    run_spec = load_spec(path)
    builder = method_entry(run_spec.method.name).crop_iou_views
    if builder is None:
        raise InputError(f"{path}: method {run_spec.method.name!r} has no image-level crop pair; "
                         f"expected one of {', '.join(crop_iou_methods())}")
    return import_target(builder)(run_spec)
