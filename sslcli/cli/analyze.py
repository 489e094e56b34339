"""`sslcli analyze coupling|positional|oknn`: what the features encode (D3SSL §3, §5.3).

Each command takes one or more checkpoints (any format `sslcli.backbone_checkpoints.load_backbone` reads), builds
its inputs once from the data set (seeded, so every checkpoint sees the same pairs / tilings / objects), and writes
``<out>/<analysis>.json`` and ``<out>/<analysis>.png`` atomically. Definitions and choices: docs/analyze.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sslcli.cli import render
from sslcli.cli.apps import analyze_app
from sslcli.cli.common import command, current
from sslcli.cli.options import BatchSize, Device, TrustCheckpoint
from sslcli.errors import InputError
from sslcli.eval.overlap import ALLOW_HELP
from sslcli.io import check_writable_dir, write_json_atomic

if TYPE_CHECKING:  # torch and the models load only when a command runs, so `sslcli --help` stays fast
    import torch

# Options of all three analyses (--device, --batch-size, --trust-checkpoint: sslcli.cli.options, shared with the probes).
Checkpoints = Annotated[list[Path], typer.Argument(
    help="One or more checkpoints (sslcli, torchvision, MoCo-v2, SoCo, DetCon .npy).")]
Data = Annotated[Path, typer.Option("--data", help="COCO-layout data set root (annotations/instances_<split>.json).")]
Out = Annotated[Path, typer.Option("--out", help="Directory for the JSON result and the PNG plot.")]
Arch = Annotated[str | None, typer.Option("--arch", help="Expected architecture (default: what the checkpoint implies).")]
Width = Annotated[int | None, typer.Option("--width", help="Expected stem width (default: what the checkpoint implies).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for choosing objects, pairs and backgrounds.")]
MinSize = Annotated[float, typer.Option("--min-size", min=1,
                                        help="Objects qualify when both box sides are ≥ this (pixels).")]
RoiSize = Annotated[int, typer.Option("--roi-size", min=1, help="RoIAlign output grid (then average-pooled).")]
ObjectSplit = Annotated[str, typer.Option("--split", help="Split to draw the objects from.")]
ANALYSIS_OUT = Path("analysis")


def checkpoint_label(path: Path) -> str:
    """A short label that identifies the run: the file stem, except for the engine's generic names, which say
    nothing about the run: ``runs/moco/last.pt`` -> ``moco``, ``runs/moco/epoch_0010.pt`` -> ``moco/epoch_0010``.
    A study's run folder is named by a hash: its arm and seed (from the folder's study marker) name it instead."""
    stem, study_run = path.stem, _study_run_name(path.parent)
    epoch = re.fullmatch(r"epoch_\d+", stem)
    if study_run is not None:
        return f"{study_run}/{stem}" if epoch else study_run
    if stem != "last" and not epoch:
        return stem
    run = path.resolve().parent.name
    return run if stem == "last" else f"{run}/{stem}"


def _study_run_name(folder: Path) -> str | None:
    """``arm seed N`` for a run folder `sslcli study run` made (its study-run.json marker), else None."""
    import json

    from sslcli.study.runner import RUN_MARKER

    try:
        marker = json.loads((folder / RUN_MARKER).read_text())
        return f"{marker['arm']} seed {marker['seed']}"
    except (OSError, ValueError, KeyError, TypeError):  # not a study run (or a marker this version cannot read)
        return None


def _labels(paths: list[Path]) -> list[str]:
    """Plot/JSON labels, the same rule for every analysis: `checkpoint_label`, or full paths where labels collide."""
    short = [checkpoint_label(p) for p in paths]
    return [s if short.count(s) == 1 else str(p) for s, p in zip(short, paths)]


def check_paths(paths: list[Path]) -> None:
    """Fail before any slow work when a checkpoint path is wrong."""
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: checkpoint not found")


def check_out_dir(out: Path) -> None:
    """Fail before any slow work when --out is not a writable folder (a file, a read-only place)."""
    check_writable_dir(out, "--out")


def load_all(paths: list[Path], arch: str | None, width: int | None, trust: bool, device: torch.device) -> Iterator:
    """Yield (label, backbone on device, load report dict) one checkpoint at a time (only one is held in memory)."""
    from sslcli.backbone_checkpoints import load_backbone

    check_paths(paths)
    for label, path in zip(_labels(paths), paths):
        backbone, report = load_backbone(path, arch=arch, width=width, trust=trust)
        current().info(report.summary())
        yield label, backbone.to(device).eval(), report.to_dict()


def _finite(values: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else round(v, 6) for v in values.tolist()]


def _write(out: Path, name: str, result: dict) -> dict:
    result["outputs"] = {"json": str(out / f"{name}.json"), "plot": str(out / f"{name}.png")}
    write_json_atomic(out / f"{name}.json", result)
    return result


def _log_layers(label: str, layers: dict) -> None:
    current().info(f"{label}: " + "  ".join(f"{s} {v['mean']:.4f}" if v["mean"] is not None else f"{s} n/a"
                                            for s, v in layers.items()))


@command(analyze_app, "coupling", human=render.analysis)
def analyze_coupling(
    checkpoints: Checkpoints, data: Data,
    split: ObjectSplit = "val2017",
    pairs: int = typer.Option(200, "--pairs", min=1, help="Number of object pairs (A, B of different classes)."),
    cell: int = typer.Option(128, "--cell", min=16, help="Each object is scaled so its longer side is this (px)."),
    gap: int = typer.Option(0, "--gap", min=0, help="Pixels between A's right edge and B's left edge."),
    masked: bool = typer.Option(True, "--masked/--box", help="Cut objects out with their GT masks (else the box)."),
    pair_classes: str = typer.Option("all", "--pair-classes", help="all: any two different classes. planted / "
                                     "unplanted: only class pairs declared / never declared together in the "
                                     "train split's info.planted (data from `prepare synthetic --preset planted`)."),
    groups: bool = typer.Option(False, "--groups", help="Report planted and unplanted pairs in one run (--pairs "
                                "of each), under groups.planted / groups.unplanted of every checkpoint."),
    out: Out = ANALYSIS_OUT, arch: Arch = None, width: Width = None, trust_checkpoint: TrustCheckpoint = False,
    device: Device = "auto", batch_size: BatchSize = 16, seed: Seed = 0, min_size: MinSize = 32.0, roi_size: RoiSize = 7,
):
    """Coupling rate per layer (res2..res5): CR = cos(f(A|A+B), f(B|A+B)) / cos(f(A|A alone), f(B|A+B)).

    Pairs of objects of different classes are cut out with their GT masks, scaled so the longer side of each box is
    --cell px, and placed side by side (A right-aligned in the left cell, B left-aligned in the right cell, --gap px
    apart) on a black cell x (2 cell + gap) canvas; the second image holds A alone at the same place. Features:
    RoIAlign (aligned, --roi-size) of each object's box on the layer, average-pooled. Reports mean, std, median
    and quartiles of CR per layer (1 = no coupling). Pairs whose denominator is ~0 are counted as undefined.
    On a planted data set (docs/synthetic.md), --pair-classes / --groups compare pairs of classes that co-occur in
    training with pairs that never do; the objects still come from --split (val: placed independently).

    Example: sslcli analyze coupling moco.pth soco.pth --data coco/ --pairs 500 --out results/
    Example: sslcli analyze coupling soco.pth --data planted/ --groups --pairs 200 --out results/
    """
    from sslcli.analysis.coupling import PAIR_GROUPS, coupling_rates
    from sslcli.analysis.plots import plot_against_depth
    from sslcli.eval.features import resolve_device
    from sslcli.models.backbone import STAGES

    if pair_classes not in ("all", *PAIR_GROUPS):
        raise InputError(f"--pair-classes {pair_classes!r}: expected all, {' or '.join(PAIR_GROUPS)}")
    if groups and pair_classes != "all":
        raise InputError(f"--groups reports planted and unplanted pairs together; drop --pair-classes {pair_classes}")
    dev = resolve_device(device)
    check_paths(checkpoints)
    check_out_dir(out)
    skipped: list[str] = []
    wanted = PAIR_GROUPS if groups else (pair_classes,)
    scenes, group_of = _coupling_scenes(data, split, wanted, pairs, seed, min_size, cell, gap, masked, skipped)
    settings = {"data": str(data), "split": split, "pairs": pairs, "cell": cell, "gap": gap, "masked": masked,
                "min_size": min_size, "roi_size": roi_size, "seed": seed, "pair_classes": pair_classes,
                "groups": groups}
    results, curves = [], {}
    for label, backbone, report in load_all(checkpoints, arch, width, trust_checkpoint, dev):
        rates = coupling_rates(backbone, scenes, STAGES, roi_size, batch_size=batch_size, device=dev)
        results.append(_coupling_entry(label, report, rates, group_of if groups else None, curves))
    plot_against_depth(curves, out / "coupling.png", "coupling rate (CR)", "Object coupling (1 = none)")
    result = {"analysis": "coupling", "settings": settings, "pairs": [s.meta for s in scenes],
              "checkpoints": results, "skipped_images": skipped}
    return _write(out, "coupling", result)


def _coupling_scenes(data: Path, split: str, wanted: tuple[str, ...], pairs: int, seed: int, min_size: float,
                     cell: int, gap: int, masked: bool, skipped: list[str]) -> tuple[list, list[str]]:
    """The pair scenes of every wanted group ("all", "planted", "unplanted"), drawn once for all checkpoints, and
    the group of each scene."""
    from sslcli.analysis.coupling import allowed_label_pairs, planted_class_pairs, sample_pairs
    from sslcli.data.readers.objects import require_coco
    from sslcli.data.readers.sources import open_source

    source = open_source(data, split)
    planted = planted_class_pairs(data) if wanted != ("all",) else set()
    scenes, group_of = [], []  # group_of[k]: the group of scenes[k]
    for group in wanted:
        allowed = None if group == "all" else allowed_label_pairs(require_coco(source, "analyze coupling"), group,
                                                                  planted)
        drawn = sample_pairs(source, pairs, seed, min_size, cell, gap, masked, skipped, allowed)
        for scene in drawn:
            if group != "all":
                scene.meta["group"] = group
        scenes += drawn
        group_of += [group] * len(drawn)
    return scenes, group_of


def _coupling_entry(label: str, report: dict, rates: dict, group_of: list[str] | None, curves: dict) -> dict:
    """One checkpoint's result (per layer, and per group when ``group_of`` is given); adds its curves to ``curves``."""
    from sslcli.analysis.coupling import PAIR_GROUPS, summarize

    layers = {s: summarize(r) for s, r in rates.items()}
    _log_layers(f"{label} CR", layers)
    entry = {"label": label, "checkpoint": report, "layers": layers,
             "per_pair": {s: _finite(r) for s, r in rates.items()}}
    if group_of is None:
        curves[label] = layers
        return entry
    entry["groups"] = {}
    for group in PAIR_GROUPS:
        pick = [k for k, g in enumerate(group_of) if g == group]
        group_layers = {s: summarize(r[pick]) for s, r in rates.items()}
        _log_layers(f"{label} CR {group}", group_layers)
        entry["groups"][group] = {"pairs": len(pick), "layers": group_layers}
        curves[f"{label} ({group})"] = group_layers
    return entry


@command(analyze_app, "positional", human=render.analysis)
def analyze_positional(
    checkpoints: Checkpoints, data: Data,
    split: ObjectSplit = "val2017",
    objects: int = typer.Option(100, "--objects", min=1, help="Number of objects to tile (distinct, seeded)."),
    tile: int = typer.Option(96, "--tile", min=16, help="Side of each of the 3x3 tiles (px)."),
    masked: bool = typer.Option(False, "--masked/--box", help="Black out pixels outside the object's GT mask."),
    out: Out = ANALYSIS_OUT, arch: Arch = None, width: Width = None, trust_checkpoint: TrustCheckpoint = False,
    device: Device = "auto", batch_size: BatchSize = 16, seed: Seed = 0, min_size: MinSize = 32.0, roi_size: RoiSize = 7,
):
    """Positional bias per layer: mean cosine similarity (MCS) between the centre tile and the 8 others.

    Each object's GT box crop is stretched to --tile x --tile px and repeated in a 3x3 grid; each tile's feature is
    the RoIAlign (aligned, --roi-size) of its box on the layer, average-pooled. 1 = no positional information; zero
    padding lowers it with depth. Reports mean, std, median and quartiles of MCS over the objects, per layer.

    Example: sslcli analyze positional moco.pth soco.pth --data coco/ --objects 200 --out results/
    """
    from sslcli.analysis.coupling import summarize
    from sslcli.analysis.plots import plot_against_depth
    from sslcli.analysis.positional import mean_cosine_similarity, sample_tilings
    from sslcli.data.readers.sources import open_source
    from sslcli.eval.features import resolve_device
    from sslcli.models.backbone import STAGES

    dev = resolve_device(device)
    check_paths(checkpoints)
    check_out_dir(out)
    skipped: list[str] = []
    tilings, meta = sample_tilings(open_source(data, split), objects, seed, min_size, tile, masked, skipped)
    settings = {"data": str(data), "split": split, "objects": len(tilings), "tile": tile, "masked": masked,
                "min_size": min_size, "roi_size": roi_size, "seed": seed}
    results, curves = [], {}
    for label, backbone, report in load_all(checkpoints, arch, width, trust_checkpoint, dev):
        mcs = mean_cosine_similarity(backbone, tilings, STAGES, roi_size, batch_size=batch_size, device=dev)
        layers = {s: summarize(v) for s, v in mcs.items()}
        _log_layers(f"{label} MCS", layers)
        curves[label] = layers
        results.append({"label": label, "checkpoint": report, "layers": layers,
                        "per_object": {s: _finite(v) for s, v in mcs.items()}})
    plot_against_depth(curves, out / "positional.png", "mean cosine similarity (MCS)",
                       "Positional bias (1 = none)")
    result = {"analysis": "positional", "settings": settings, "objects": meta, "checkpoints": results,
              "skipped_images": skipped}
    return _write(out, "positional", result)


@command(analyze_app, "oknn", human=render.analysis)
def analyze_oknn(
    checkpoints: Checkpoints, data: Data,
    split: str = typer.Option("val2017", "--split", help="Split of the query objects."),
    train_split: str = typer.Option("train2017", "--train-split", help="Split of the bank objects."),
    k: int = typer.Option(20, "--k", min=1, help="Neighbours voting."),
    temperature: float = typer.Option(0.07, "--temperature", min=1e-6, help="Votes weigh exp(cos / temperature)."),
    per_image: int = typer.Option(0, "--bank-per-image", min=0,
                                  help="Bank objects per train image; 0 = one per class present (random instance)."),
    disturbed: bool = typer.Option(False, "--disturbed", help="Also run disturbed O-KNN (background replaced)."),
    disturb: str = typer.Option("both", "--disturb", help="With --disturbed: disturb the bank and queries (both) or "
                                "only the queries (val)."),
    short_side: int = typer.Option(512, "--short-side", min=32, help="Resize images to this shorter side (px)."),
    max_side: int = typer.Option(1024, "--max-side", min=32, help="...unless the longer side would exceed this."),
    max_images: int | None = typer.Option(None, "--max-images", min=1, help="Use only the first N images per split."),
    workers: int = typer.Option(2, "--workers", min=1, help="Image-decoding threads."),
    allow_overlap: bool = typer.Option(False, "--allow-overlap", help=ALLOW_HELP.replace("evaluation images",
                                       "query images").replace("training images", "bank images")),
    out: Out = ANALYSIS_OUT, arch: Arch = None, width: Width = None, trust_checkpoint: TrustCheckpoint = False,
    device: Device = "auto", batch_size: BatchSize = 16, seed: Seed = 0, min_size: MinSize = 32.0,
):
    """Object-level kNN (top-1/top-5 %) on ground-truth boxes, optionally with disturbed backgrounds.

    Objects: non-crowd GT boxes with both sides >= --min-size px; feature = RoIAlign 7x7 (aligned) on res5,
    average-pooled, L2-normalised. Bank: --train-split, one object per class present in each image (seeded) or
    --bank-per-image N. Queries: every object of --split. k-NN with k = --k, votes exp(cos/0.07). Images are resized
    to --short-side (default 512, for speed). --disturbed adds the disturbed variant: every pixel outside the
    image's selected boxes replaced by a random other image of the same split (resized; seeded). Query images that
    are also bank images (same file or same bytes) are refused, as the probes refuse them, unless --allow-overlap.

    Example: sslcli analyze oknn ckpt.pt --data coco/ --disturbed --out results/
    """
    from sslcli.analysis.oknn import object_knn
    from sslcli.analysis.plots import plot_oknn
    from sslcli.eval.features import resolve_device

    if disturb not in ("both", "val"):
        raise InputError(f"--disturb {disturb!r}: expected both or val")
    dev = resolve_device(device)
    check_paths(checkpoints)
    check_out_dir(out)
    bank_plan, query_plan, class_ids, overlap = _oknn_plans(data, train_split, split, per_image, min_size, seed,
                                                            max_images, disturbed, allow_overlap)
    settings = {"data": str(data), "split": split, "train_split": train_split, "k": k, "temperature": temperature,
                "bank_per_image": per_image, "disturbed": disturbed, "disturb": disturb, "short_side": short_side,
                "max_side": max_side, "max_images": max_images, "min_size": min_size, "roi_size": 7, "seed": seed,
                "classes": len(class_ids), "overlapping_images": overlap}
    results, bars = [], {}
    for label, backbone, report in load_all(checkpoints, arch, width, trust_checkpoint, dev):
        scores = object_knn(backbone, bank_plan, query_plan, len(class_ids), k, temperature, disturbed,
                            disturb == "both", short_side, max_side, batch_size, dev, workers)
        current().info(f"{label} O-KNN: " + "  ".join(f"{v} top-1 {scores[v]['top1']:.2f} top-5 {scores[v]['top5']:.2f}"
                                                      for v in ("clean", "disturbed") if v in scores))
        bars[label] = scores
        results.append({"label": label, "checkpoint": report, **scores})
    plot_oknn(bars, out / "oknn.png")
    result = {"analysis": "oknn", "settings": settings, "checkpoints": results}
    return _write(out, "oknn", result)


def _oknn_plans(data: Path, train_split: str, split: str, per_image: int, min_size: float, seed: int,
                max_images: int | None, disturbed: bool, allow_overlap: bool) -> tuple:
    """The bank and query objects (with their backgrounds when ``disturbed``), the class ids, and how many query
    images are also bank images (refused unless ``allow_overlap``)."""
    from sslcli.analysis.oknn import assign_backgrounds, plan_objects
    from sslcli.data.readers.objects import require_coco
    from sslcli.data.readers.sources import open_source
    from sslcli.eval.overlap import check_disjoint

    train = require_coco(open_source(data, train_split), "analyze oknn")
    val = require_coco(open_source(data, split), "analyze oknn")
    class_ids = sorted(set(train.category_ids) | set(val.category_ids))
    bank_plan = plan_objects(train, class_ids, per_image, min_size, seed, max_images)
    query_plan = plan_objects(val, class_ids, None, min_size, seed, max_images)
    for plan, name in ((bank_plan, train_split), (query_plan, split)):
        if not plan.n_objects:
            raise InputError(f"{data}: no object in {name} qualifies (non-crowd, both box sides >= {min_size} px)")
    overlap = check_disjoint(bank_plan.paths(), query_plan.paths(), allow_overlap)
    if disturbed:
        assign_backgrounds(bank_plan, seed + 1)
        assign_backgrounds(query_plan, seed + 2)
    return bank_plan, query_plan, class_ids, overlap
