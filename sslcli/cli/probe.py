"""`sslcli probe linear|knn|segment-retrieval`: evaluate frozen features."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from sslcli.cli.apps import probe_app
from sslcli.cli.common import command, current
from sslcli.cli.options import BatchSize, Device, Prefix, TrustCheckpoint
from sslcli.errors import InputError
from sslcli.eval.overlap import ALLOW_HELP
from sslcli.io import write_json_atomic

DATA_HELP = "Data set root: COCO layout, ImageFolder (ROOT/train/<class>/, ROOT/val/<class>/) or a manifest JSON."
TEST_DATA_HELP = "Separate test set (root or manifest); default: --data with --test-split."
LABELS_HELP = ("image: one row per image (COCO: multi-label set of classes present, scored by mAP); object: one row "
               "per COCO instance (non-crowd, box sides >= --min-size), RoIAlign 7x7 on res5 of the image resized "
               "to --image-size squared.")
IMAGE_SIZE_HELP = ("image rows: shorter side to size, centre crop size (default 224); object rows: whole image "
                   "resized to size squared (default 512, so 32 px objects keep about a res5 cell).")
OBJECT_IMAGE_SIZE = 512
CACHE_HELP = "Feature cache folder (HDF5 keyed by checkpoint hash, data and preprocessing); default $SSLCLI_CACHE or ~/.cache/sslcli/features."


@dataclass
class _Options:
    checkpoint: Path
    data: Path
    test_data: Path | None
    train_split: str | None
    test_split: str | None
    labels: str
    min_size: float
    image_size: int
    batch_size: int
    workers: int
    device: str
    cache: Path | None
    no_cache: bool
    trust: bool
    val_split: str | None = None
    prefix: str | None = None
    allow_overlap: bool = False


def _concat(a, b):
    """Rows of two LabeledSets of the same data root as one set over ``a``'s source plus ``b``'s images."""
    from sslcli.eval.labels import LabeledSet

    source = copy.copy(a.source)
    source.records = [*a.source.records, *b.source.records]
    boxes = None if a.boxes is None else np.concatenate([a.boxes, b.boxes])
    return LabeledSet(source, np.concatenate([a.image_index, b.image_index + len(a.source)]),
                      np.concatenate([a.targets, b.targets]), a.classes, a.multilabel, boxes)


def _features(opts: _Options):
    """Load the backbone, build train/test rows, extract (or reuse) their features; drop undecodable rows."""
    from sslcli.backbone_checkpoints import load_backbone
    from sslcli.eval.features import (
        Preprocess,
        default_cache_dir,
        extract_features,
        require_finite,
        skipped_images,
    )
    from sslcli.eval.labels import check_same_classes, default_splits, labeled_set, open_split
    from sslcli.eval.overlap import check_disjoint

    train_split, test_split = default_splits(opts.data)
    train_split, test_split = opts.train_split or train_split, opts.test_split or test_split
    backbone, report = load_backbone(opts.checkpoint, trust=opts.trust, prefix=opts.prefix)
    current().info(report.summary())
    train = labeled_set(open_split(opts.data, train_split), opts.labels, opts.min_size)
    test = labeled_set(open_split(opts.test_data or opts.data, test_split), opts.labels, opts.min_size)
    check_same_classes(train, test)
    n_train_only = None
    if opts.val_split:  # predefined validation split: train rows first, then the validation rows
        val = labeled_set(open_split(opts.data, opts.val_split), opts.labels, opts.min_size)
        check_same_classes(train, val)
        n_train_only = len(train)
        train = _concat(train, val)
    overlap = check_disjoint(_paths(train), _paths(test), opts.allow_overlap)
    if opts.image_size is None:
        opts.image_size = 224 if opts.labels == "image" else OBJECT_IMAGE_SIZE
    pre = Preprocess(opts.image_size, "center-crop" if opts.labels == "image" else "square")
    cache = None if opts.no_cache else (opts.cache or default_cache_dir())
    out, out_ok, skipped = [], [], []
    for rows, split in ((train, train_split), (test, test_split)):
        feats, ok = extract_features(backbone, rows, pre, checkpoint_sha256=report.identity, cache_dir=cache,
                                     batch_size=opts.batch_size, device=opts.device, workers=opts.workers)
        require_finite(feats, ok, opts.checkpoint)
        out.append((rows.subset(np.flatnonzero(ok)), feats[ok]))
        out_ok.append(ok)
        skipped += [{"split": split, **s} for s in skipped_images(rows.source, rows.image_index[~ok].tolist())]
    (train, train_x), (test, test_x) = out
    train_ok = np.flatnonzero(out_ok[0])
    val_rows = None if n_train_only is None else np.flatnonzero(train_ok >= n_train_only)
    if len(train) == 0 or len(test) == 0:
        raise InputError(f"{opts.data}: no decodable rows in the {'train' if len(train) == 0 else 'test'} split")
    meta = {"checkpoint": report.to_dict(), "data": str(opts.data), "train_split": train_split,
            "test_split": test_split, "labels": opts.labels, "multilabel": train.multilabel,
            "num_classes": len(train.classes), "train_rows": len(train), "test_rows": len(test),
            "image_size": opts.image_size, "val_split": opts.val_split, "overlapping_images": overlap,
            "skipped_images": skipped}
    return train, train_x, test, test_x, meta, val_rows


def _paths(rows) -> list[Path]:
    """The image files behind a LabeledSet's rows."""
    return [rows.source.records[i].path for i in np.unique(rows.image_index)]


def _check_out(out: Path | None) -> None:
    """Fail before any slow work when --out is a folder (it names the result file)."""
    if out is not None and out.is_dir():
        raise InputError(f"--out {out}: is a directory; expected a file name for the result JSON")


def _finish(result: dict, out: Path | None) -> dict:
    if out is not None:
        write_json_atomic(out, result)
    return result


def _common(checkpoint, data, test_data, train_split, test_split, labels, min_size, image_size, batch_size, workers,
            device, cache, no_cache, trust) -> _Options:
    return _Options(checkpoint, data, test_data, train_split, test_split, labels, min_size, image_size, batch_size,
                    workers, device, cache, no_cache, trust)


# Options of the probes (--device, --batch-size, --trust-checkpoint, --prefix: sslcli.cli.options, shared with the
# analyses and export).
Checkpoint = Annotated[Path, typer.Argument(
    help="Backbone checkpoint (sslcli, torchvision, MoCo, SoCo, DetCon .npy, detectron2 .pkl).")]
Data = Annotated[Path, typer.Option("--data", help=DATA_HELP)]
TestData = Annotated[Path | None, typer.Option("--test-data", help=TEST_DATA_HELP)]
TrainSplit = Annotated[str | None, typer.Option("--train-split", help="Default: train2017 (COCO) or train (ImageFolder).")]
TestSplit = Annotated[str | None, typer.Option("--test-split", help="Default: val2017 (COCO) or val (ImageFolder).")]
Labels = Annotated[str, typer.Option("--labels", help=LABELS_HELP)]
MinSize = Annotated[float, typer.Option("--min-size", min=0, help="Object rows: minimum box side in pixels.")]
ImageSize = Annotated[int | None, typer.Option("--image-size", help=IMAGE_SIZE_HELP)]
Workers = Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes decoding images.")]
Cache = Annotated[Path | None, typer.Option("--cache", help=CACHE_HELP)]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the feature cache.")]
Out = Annotated[Path | None, typer.Option("--out", help="Also write the result JSON to this file (atomically).")]
AllowOverlap = Annotated[bool, typer.Option("--allow-overlap", help=ALLOW_HELP)]


@command(probe_app, "linear")
def probe_linear(
    checkpoint: Checkpoint, data: Data, test_data: TestData = None, train_split: TrainSplit = None,
    test_split: TestSplit = None,
    labels: Labels = "image", min_size: MinSize = 32.0, image_size: ImageSize = None,
    batch_size: BatchSize = 64, workers: Workers = 0, device: Device = "auto", cache: Cache = None,
    no_cache: NoCache = False, trust_checkpoint: TrustCheckpoint = False, prefix: Prefix = None,
    c_grid: int = typer.Option(45, "--c-grid", help="Number of log-spaced C values in [1e-5, 1e5] to search."),
    search_max_iter: int = typer.Option(100, "--search-max-iter", min=1, help="L-BFGS iterations per C during the search "
                                        "(warm-started from the previous C)."),
    max_iter: int = typer.Option(1000, "--max-iter", min=1, help="L-BFGS iterations of the final refit on train + val."),
    seed: int = typer.Option(0, "--seed", help="Seed of the 20 % validation split."),
    val_split: str = typer.Option(None, "--val-split", help="Predefined validation split of --data used to choose C "
                                  "(default: a seeded 20 % of the training split)."),
    allow_overlap: AllowOverlap = False, out: Out = None,
):
    """Linear probe (L-BFGS logistic regression on frozen features).

    Frozen res5 features, average-pooled; features standardised; multinomial logistic regression (multi-label data:
    one binary classifier per class, mAP); C chosen on a seeded 20 % validation split of train, refit on train + val.

    Example: sslcli probe linear ckpt.pt --data coco/ --labels object --json
    """
    from sslcli.eval.features import resolve_device
    from sslcli.eval.linear import linear_probe

    _check_out(out)
    opts = _common(checkpoint, data, test_data, train_split, test_split, labels, min_size, image_size, batch_size,
                   workers, device, cache, no_cache, trust_checkpoint)
    opts.prefix, opts.allow_overlap = prefix, allow_overlap
    opts.val_split = val_split
    train, train_x, test, test_x, meta, val_rows = _features(opts)
    current().info(f"linear probe: searching {c_grid} C values on {len(train)} training rows")
    result = linear_probe(train_x, train.targets, test_x, test.targets, len(train.classes), train.multilabel,
                          n_grid=c_grid, seed=seed, search_max_iter=search_max_iter, max_iter=max_iter,
                          device=resolve_device(device), groups=train.image_index,
                          val_rows=val_rows)
    return _finish({"probe": "linear", **meta, **result}, out)


@command(probe_app, "knn")
def probe_knn(
    checkpoint: Checkpoint, data: Data, test_data: TestData = None, train_split: TrainSplit = None,
    test_split: TestSplit = None,
    labels: Labels = "image", min_size: MinSize = 32.0, image_size: ImageSize = None,
    batch_size: BatchSize = 64, workers: Workers = 0, device: Device = "auto", cache: Cache = None,
    no_cache: NoCache = False, trust_checkpoint: TrustCheckpoint = False, prefix: Prefix = None,
    k: str = typer.Option("10,20,100,200", "--k", help="Comma-separated neighbour counts."),
    temperature: float = typer.Option(0.07, "--temperature", min=1e-6, help="Vote weight exp(cosine / T)."),
    allow_overlap: AllowOverlap = False, out: Out = None,
):
    """Weighted k-nearest-neighbour probe.

    Cosine similarity between L2-normalised frozen features; the k nearest training rows vote with weight
    exp(sim / 0.07); top-1/top-5 (multi-label data: mAP of the votes and whether the top class is present).

    Example: sslcli probe knn ckpt.pt --data coco/ --k 10,20
    """
    from sslcli.eval.features import resolve_device
    from sslcli.eval.knn import knn_probe, parse_ks

    ks = parse_ks(k)
    _check_out(out)
    opts = _common(checkpoint, data, test_data, train_split, test_split, labels, min_size, image_size, batch_size,
                   workers, device, cache, no_cache, trust_checkpoint)
    opts.prefix, opts.allow_overlap = prefix, allow_overlap
    train, train_x, test, test_x, meta, _ = _features(opts)
    result = knn_probe(train_x, train.targets, test_x, test.targets, ks, len(train.classes), train.multilabel,
                       temperature, device=resolve_device(device))
    return _finish({"probe": "knn", **meta, **result}, out)


@command(probe_app, "segment-retrieval")
def probe_segment_retrieval(
    checkpoint: Checkpoint, data: Data, test_data: TestData = None, train_split: TrainSplit = None,
    test_split: TestSplit = None,
    image_size: int = typer.Option(224, "--image-size", help="Images resized to this size squared."),
    clusters: int = typer.Option(15, "--clusters", help="K-means clusters (regions) per image."),
    batch_size: BatchSize = 64, workers: Workers = 0, device: Device = "auto", cache: Cache = None,
    no_cache: NoCache = False, trust_checkpoint: TrustCheckpoint = False, prefix: Prefix = None,
    seed: int = typer.Option(0, "--seed", help="K-means seed (and of the image subsets)."),
    train_images: int = typer.Option(None, "--train-images", help="Use a seeded subset of this many training images "
                                     "(the region bank holds clusters x images descriptors; default: all)."),
    test_images: int = typer.Option(None, "--test-images", help="Use a seeded subset of this many test images."),
    allow_overlap: AllowOverlap = False, out: Out = None,
):
    """Semantic segment retrieval (dilated res5, K-means regions, nearest train region, mIoU).

    Example: sslcli probe segment-retrieval ckpt.pt --data coco/
    """
    from sslcli.eval.segment_retrieval import segment_retrieval

    _check_out(out)
    result = segment_retrieval(checkpoint, data, test_data=test_data, train_split=train_split, test_split=test_split,
                               image_size=image_size, clusters=clusters, batch_size=batch_size, workers=workers,
                               device=device, cache_dir=None if no_cache else cache, use_cache=not no_cache,
                               trust=trust_checkpoint, seed=seed, prefix=prefix, train_images=train_images,
                               test_images=test_images, allow_overlap=allow_overlap)
    return _finish({"probe": "segment-retrieval", **result}, out)
