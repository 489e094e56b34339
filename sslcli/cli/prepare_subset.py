"""`sslcli prepare subset`: IN-118K, IN-118K-LT, OI-118K and OpenImage-MINI."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from sslcli.cli.apps import prepare_app
from sslcli.cli.common import command
from sslcli.data.readers import subsets
from sslcli.errors import InputError


class Kind(str, Enum):
    in118k = "in118k"
    in118k_lt = "in118k-lt"
    oi118k = "oi118k"
    oi_mini = "oi-mini"


@command(prepare_app, "subset")
def prepare_subset(
    root: Path = typer.Argument(..., help="ImageNet root (train/<wnid>/*.JPEG) or OpenImages root (CSVs + <split>/)."),
    kind: Kind = typer.Option(..., "--kind", help="in118k | in118k-lt | oi118k | oi-mini"),
    out: Path = typer.Option(..., "--out", help="Output folder for the manifest, stats and histogram."),
    size: int = typer.Option(None, "--size", help="Images in the subset (default 118287, COCO train2017's size; "
                                                  "oi-mini: all that fit under the caps)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of every random choice; same seed, same subset."),
    coco: Path = typer.Option(None, "--coco", help="oi-mini: COCO instances_train2017.json (or a COCO root) for the "
                                                   "per-class caps."),
    cap_scale: float = typer.Option(1.0, "--cap-scale", help="oi-mini: multiply COCO's per-class caps (e.g. 2 for "
                                                             "a twice-as-large OpenImage-MINI)."),
    split: str = typer.Option("train", "--split", help="OpenImages split (folder and CSV prefix)."),
):
    """Build a reproducible pretraining subset: a manifest, a stats file and a sorted class histogram.

    in118k: uniform ImageNet subset. Every class gets floor(size/C) images; the remainder goes one image each to
    classes picked by a seeded permutation (a class with too few images gives all it has and the rest is spread
    evenly over the others).

    in118k-lt: long-tailed ImageNet subset (Liu et al.'s ImageNet-LT, Pareto alpha = 6). Class rank r of C gets the
    Pareto quantile x_r = ((r+1)/(C+1))^(-1/6), mapped linearly to [5, 1280] images (largest class 1280, smallest 5),
    then every count is multiplied by size / (sum of the profile) and rounded (largest remainder) to total --size
    exactly, so the caps scale with --size (for C = 1000 the profile sums to 121,946; the default 118,287 gives
    1242 .. 5). Classes take ranks in a seeded random order; a class too small for its rank is passed over for the
    next one.

    oi118k: --size OpenImages images drawn uniformly at random (seeded).

    oi-mini: OpenImage-MINI (D3SSL). Candidates are OpenImages images with at least one box of a COCO class (via the
    COCO-OpenImages table). They are visited in a seeded random order and an image is kept iff adding its boxes
    keeps every shared class's object count at or below COCO's count of that class (times --cap-scale). Selection
    stops when every cap is full or after --size images.

    Output in --out: <kind>-<N>-seed<S>.json (manifest, paths relative to ROOT; `pretrain` specs point data.root at
    it), .stats.json (images, classes, per-class counts; for OpenImages objects/image, categories/image, categories)
    and .hist.png (sorted per-class counts).

    Example: sslcli prepare subset imagenet/ --kind in118k-lt --seed 0 --out lists/
    """
    if not root.is_dir():
        raise InputError(f"{root}: no such directory (expected an ImageNet or OpenImages root)")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory (expected an output folder)")
    if kind is not Kind.oi_mini and (coco is not None or cap_scale != 1.0):
        raise InputError(f"--coco/--cap-scale apply to --kind oi-mini only, not {kind.value}")
    subset = _build_subset(kind, root, size, seed, coco, cap_scale, split)
    name = f"{kind.value}-{len(subset.paths)}-seed{seed}"
    files = subsets.write_subset(subset, root, out, name)
    stats = subset.stats
    summary = {key: stats[key] for key in ("images", "classes", "objects_per_image", "categories_per_image",
                                           "categories") if key in stats}
    return {"kind": kind.value, "seed": seed, **summary, **files}


def _build_subset(kind: Kind, root: Path, size: int | None, seed: int, coco: Path | None, cap_scale: float,
                  split: str) -> subsets.Subset:
    """Read the tree under ``root`` and draw the subset of ``kind``."""
    default_size = subsets.COCO_TRAIN_IMAGES if size is None else size
    if kind is Kind.in118k:
        return subsets.build_in118k(subsets.read_imagenet(root), default_size, seed)
    if kind is Kind.in118k_lt:
        return subsets.build_in118k_lt(subsets.read_imagenet(root), default_size, seed)
    if kind is Kind.oi118k:
        return subsets.build_oi118k(subsets.read_openimages(root, split, need_boxes=False), default_size, seed)
    if coco is None:
        raise InputError("--kind oi-mini needs --coco (COCO's instances_train2017.json, for the per-class caps)")
    counts = subsets.read_coco_counts(coco)
    return subsets.build_oi_mini(subsets.read_openimages(root, split), counts, seed, size, cap_scale)
