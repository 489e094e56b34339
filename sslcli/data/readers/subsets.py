"""Pretraining subsets of equal size (Revisiting, Sec. 3; D3SSL, Sec. 5.1): the sampling rules and the tree readers.

Kinds (``sslcli prepare subset``):
- ``in118k``: uniform ImageNet subset; every class gets ⌊size/C⌋ or ⌈size/C⌉ images (as equal as availability allows).
- ``in118k-lt``: long-tailed ImageNet subset; sorted class sizes follow a Pareto(α = 6) profile between 1280 and 5
  images per class (Liu et al.'s ImageNet-LT), rescaled to ``size`` (see `pareto_profile`, `long_tail_counts`).
- ``oi118k``: uniform random OpenImages images.
- ``oi-mini``: OpenImage-MINI; OpenImages images with ≥ 1 box of a COCO class, greedily accepted in a seeded order while
  no shared class exceeds its COCO object count (see `select_oi_mini`).

Every random choice draws from its own seeded stream (`seeded_rng`), so the output depends only on the tree, the kind,
the size and the seed. Within a class the chosen images are a prefix of a per-class seeded permutation: a larger
per-class count keeps the images a smaller one chose.
"""

from __future__ import annotations

import csv
import json
import os
import zlib
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslcli.console import current, progress
from sslcli.data.readers.coco_openimages import BY_COCO_NAME
from sslcli.data.readers.images import is_image_file
from sslcli.data.readers.sources import open_source, write_manifest
from sslcli.errors import InputError
from sslcli.io import atomic_path, write_json_atomic

COCO_TRAIN_IMAGES = 118_287  # COCO train2017: the size every "118K" subset matches
PARETO_ALPHA = 6.0  # Revisiting Sec. 3.2, after Liu et al. (ImageNet-LT)
LT_MAX_PER_CLASS = 1280
LT_MIN_PER_CLASS = 5


def seeded_rng(seed: int, purpose: str) -> np.random.Generator:
    """An independent random stream per (seed, purpose), e.g. one per class, so streams never shift each other."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


# --------------------------------------------------------------------------------------------------- class counts


def round_to_total(values: Sequence[float], total: int) -> np.ndarray:
    """(C,) integers summing to ``total``, proportional to ``values`` (largest remainder; ties to the lower index)."""
    values = np.asarray(values, dtype=float)
    scaled = values * (total / values.sum())
    counts = np.floor(scaled).astype(np.int64)
    short = int(total - counts.sum())
    order = np.lexsort((np.arange(len(values)), -(scaled - counts)))  # remainder descending, then index
    counts[order[:short]] += 1
    return counts


def uniform_counts(available: Sequence[int], size: int, seed: int) -> np.ndarray:
    """(C,) per-class counts summing to ``size``, as equal as the classes' ``available`` images allow.

    Water-filling: every class gets min(available, L) for the largest level L that does not overshoot ``size``; the
    remaining images go one each to classes that still have images left, chosen by a seeded permutation.
    """
    avail = np.asarray(available, dtype=np.int64)
    if size > avail.sum():
        raise InputError(f"--size {size}: only {int(avail.sum())} images are available in {len(avail)} classes")
    lo, hi = 0, int(avail.max())
    while lo < hi:  # largest L with sum(min(avail, L)) <= size
        mid = (lo + hi + 1) // 2
        if np.minimum(avail, mid).sum() <= size:
            lo = mid
        else:
            hi = mid - 1
    counts = np.minimum(avail, lo)
    rest = int(size - counts.sum())
    can_take_one_more = np.flatnonzero(avail > lo)
    counts[seeded_rng(seed, "uniform-remainder").permutation(can_take_one_more)[:rest]] += 1
    return counts


def pareto_profile(num_classes: int, alpha: float = PARETO_ALPHA, max_count: float = LT_MAX_PER_CLASS,
                   min_count: float = LT_MIN_PER_CLASS) -> np.ndarray:
    """(C,) descending class sizes of the long-tailed profile, before scaling to a requested total.

    Rank r (0 = largest) takes the Pareto(α, x_m = 1) quantile at the plotting position p_r = (r + 1) / (C + 1) of the
    upper tail, x_r = p_r^(-1/α) (the shape C sorted Pareto draws take, without their sampling noise), mapped linearly
    so that x_0 → ``max_count`` and x_{C-1} → ``min_count``. For C = 1000 this sums to 121,946 images with 408
    classes above 100 and 140 below 20 (ImageNet-LT: 115.8K, 385 and 136).
    """
    if num_classes == 1:
        return np.array([float(max_count)])
    p = (np.arange(num_classes) + 1) / (num_classes + 1)
    x = p ** (-1.0 / alpha)
    return min_count + (max_count - min_count) * (x - x[-1]) / (x[0] - x[-1])


@dataclass
class LongTailPlan:
    counts: np.ndarray  # (C,) images per class, in class order
    rank: np.ndarray  # (C,) rank of each class, 0 = largest
    profile: np.ndarray  # (C,) the unscaled profile by rank (`pareto_profile`)
    scale: float  # size / profile.sum(): every rank's count is profile × scale, rounded


def long_tail_counts(available: Sequence[int], size: int, seed: int, alpha: float = PARETO_ALPHA,
                     max_count: float = LT_MAX_PER_CLASS, min_count: float = LT_MIN_PER_CLASS) -> LongTailPlan:
    """Per-class counts following `pareto_profile` scaled to sum to ``size``, classes placed on ranks by seed.

    Counts by rank are profile × size / profile.sum(), rounded by largest remainder (so they sum to ``size``; tail
    ranks may round to 0 when size is small). Classes take ranks in a seeded random order, except that a class with
    fewer images than a rank needs is passed over for the next class in that order that has enough. An InputError
    says which rank cannot be filled and the largest size the tree allows.
    """
    avail = np.asarray(available, dtype=np.int64)
    num_classes = len(avail)
    if size > avail.sum():
        raise InputError(f"--size {size}: only {int(avail.sum())} images are available in {num_classes} classes")
    profile = pareto_profile(num_classes, alpha, max_count, min_count)
    by_rank = np.sort(round_to_total(profile, size))[::-1]
    waiting = [int(k) for k in seeded_rng(seed, "long-tail-ranks").permutation(num_classes)]
    rank = np.empty(num_classes, dtype=np.int64)
    counts = np.empty(num_classes, dtype=np.int64)
    for r, need in enumerate(by_rank):
        pick = next((i for i, k in enumerate(waiting) if avail[k] >= need), None)
        if pick is None:
            largest = int(np.floor(np.min(np.sort(avail)[::-1] / profile) * profile.sum()))
            raise InputError(f"--size {size}: the long-tailed profile needs {need} images for the class of rank "
                             f"{r + 1}/{num_classes}, but only {int((avail >= need).sum())} classes have that many; "
                             f"this tree allows --size up to about {largest}")
        k = waiting.pop(pick)
        rank[k], counts[k] = r, need
    return LongTailPlan(counts=counts, rank=rank, profile=profile, scale=size / float(profile.sum()))


def sample_class_images(paths: Sequence[str], count: int, seed: int, class_name: str) -> list[str]:
    """``count`` of a class's ``paths`` (sorted): a prefix of the class's own seeded permutation."""
    chosen = seeded_rng(seed, f"class/{class_name}").permutation(len(paths))[:count]
    return [paths[i] for i in sorted(chosen)]


def sample_uniform(num_items: int, size: int, seed: int) -> np.ndarray:
    """(size,) sorted indices drawn uniformly without replacement from range(num_items)."""
    if size > num_items:
        raise InputError(f"--size {size}: only {num_items} images are available")
    return np.sort(seeded_rng(seed, "uniform-images").permutation(num_items)[:size])


def select_oi_mini(image_labels: Sequence[np.ndarray], caps: dict[int, int], seed: int,
                   limit: int | None = None) -> np.ndarray:
    """Greedy OpenImage-MINI selection; returns the sorted indices of the accepted images.

    ``image_labels[i]``: (n_i,) class index of every box of image i. ``caps``: class index → maximum object count, for
    the shared (COCO) classes only. Images are visited in a seeded random order; an image is accepted iff it has at
    least one box of a shared class and adding its boxes keeps every shared class at or below its cap. Boxes of other
    classes are never limited. Stops after ``limit`` accepted images, or when every cap is full (nothing more fits).
    """
    used = dict.fromkeys(caps, 0)
    room = sum(1 for cap in caps.values() if cap > 0)  # shared classes that can still take an object
    chosen: list[int] = []
    order = seeded_rng(seed, "oi-mini").permutation(len(image_labels))
    for i in progress(order, description="selecting OpenImage-MINI"):
        shared = Counter(int(c) for c in image_labels[i] if int(c) in caps)
        if not shared or any(used[c] + n > caps[c] for c, n in shared.items()):
            continue
        for c, n in shared.items():
            used[c] += n
            room -= used[c] == caps[c]
        chosen.append(int(i))
        if len(chosen) == limit or room == 0:
            break
    return np.sort(np.asarray(chosen, dtype=np.int64))


def object_stats(image_labels: Sequence[np.ndarray], names: Sequence[str]) -> dict:
    """D3SSL Table 2 columns over a set of images: images, objects/image, categories/image, categories, plus the
    per-class object counts (descending). ``image_labels[i]``: (n_i,) class indices into ``names``."""
    per_class = np.zeros(len(names), dtype=np.int64)
    categories_per_image = []
    for labels in image_labels:
        np.add.at(per_class, labels, 1)
        categories_per_image.append(len(np.unique(labels)))
    images = len(image_labels)
    order = np.argsort(-per_class, kind="stable")
    return {
        "images": images,
        "objects": int(per_class.sum()),
        "objects_per_image": float(per_class.sum() / images) if images else 0.0,
        "categories_per_image": float(np.mean(categories_per_image)) if images else 0.0,
        "categories": int((per_class > 0).sum()),
        "objects_per_class": {names[c]: int(per_class[c]) for c in order if per_class[c] > 0},
    }


# ------------------------------------------------------------------------------------------------------ readers


@dataclass
class ImageNetTree:
    root: Path
    classes: list[str]  # wnids, sorted
    images: list[list[str]]  # per class: image paths relative to root (posix), sorted


def read_imagenet(root: str | os.PathLike) -> ImageNetTree:
    """Read ``ROOT/train/<wnid>/*.JPEG`` with the shared ImageFolder reader; every class must hold an image."""
    root = Path(root)
    train = root / "train"
    if not train.is_dir() or not any(d.is_dir() for d in train.iterdir()):
        raise InputError(f"{root}: not an ImageNet layout (expected class folders {train}/<wnid>/ holding the "
                         "images, e.g. train/n01440764/n01440764_10026.JPEG)")
    source = open_source(root, fmt="imagefolder")
    images: list[list[str]] = [[] for _ in source.classes or []]
    for record in source.records:
        images[record.label].append(record.path.relative_to(root).as_posix())
    empty = [name for name, paths in zip(source.classes, images) if not paths]
    if empty:
        raise InputError(f"{train / empty[0]}: class folder has no images ({len(empty)} of {len(images)} classes are "
                         f"empty: {', '.join(empty[:5])}{'...' if len(empty) > 5 else ''}); every class folder needs "
                         "at least one image, or remove it")
    return ImageNetTree(root=root, classes=list(source.classes), images=images)


@dataclass
class OpenImagesTree:
    root: Path
    split: str
    image_ids: list[str]  # sorted ImageIDs that have an image file
    paths: list[str]  # their files, relative to root (posix)
    bbox_csv: Path | None  # <split>-annotations-bbox.csv
    classes_csv: Path | None  # class-descriptions-boxable.csv
    ids_csv: Path | None  # <split>-images*.csv, restricts the image list when present


def _find_csv(root: Path, pattern: str) -> Path | None:
    """The first match (sorted) of ``pattern`` in ROOT or ROOT/annotations."""
    for folder in (root, root / "annotations"):
        found = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if found:
            return found[0]
    return None


def _csv_columns(path: Path, header: list[str], wanted: Sequence[str]) -> list[int]:
    missing = [c for c in wanted if c not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (header is {','.join(header[:6])}...; "
                         f"expected the official OpenImages columns {', '.join(wanted)})")
    return [header.index(c) for c in wanted]


def read_openimages(root: str | os.PathLike, split: str = "train", need_boxes: bool = True) -> OpenImagesTree:
    """Find the OpenImages files of ``split``: images ``ROOT/<split>/**/<ImageID>.jpg`` and the official CSVs.

    CSVs are looked for in ROOT and ROOT/annotations: ``*<split>-annotations-bbox.csv`` (V4/V5 ``train-...``, V6
    ``oidv6-train-...``), ``*class-descriptions-boxable.csv``, and optionally ``*<split>-images*.csv`` (image ids;
    when present only listed images are used). ``need_boxes`` makes the first two required.
    """
    root = Path(root)
    image_dir = root / split
    bbox_csv = _find_csv(root, f"*{split}-annotations-bbox.csv")
    classes_csv = _find_csv(root, "*class-descriptions-boxable.csv")
    ids_csv = _find_csv(root, f"*{split}-images*.csv")
    expected = (f"expected {image_dir}/<ImageID>.jpg images, {split}-annotations-bbox.csv and "
                f"class-descriptions-boxable.csv in {root} or {root / 'annotations'}")
    missing = [name for name, ok in ((f"{split}/ image folder", image_dir.is_dir()),
                                     (f"{split}-annotations-bbox.csv", bbox_csv or not need_boxes),
                                     ("class-descriptions-boxable.csv", classes_csv or not need_boxes)) if not ok]
    if missing:
        raise InputError(f"{root}: not an OpenImages layout, {' and '.join(missing)} not found ({expected})")
    current().info(f"scanning {image_dir} for images")
    files: dict[str, str] = {}
    for path in sorted(image_dir.rglob("*")):
        if is_image_file(path):
            files.setdefault(path.stem, path.relative_to(root).as_posix())
    if not files:
        raise InputError(f"{image_dir}: no images found ({expected})")
    if ids_csv is not None:
        with open(ids_csv, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            (col,) = _csv_columns(ids_csv, next(reader, []), ["ImageID"])
            listed, on_disk = 0, set()  # keep only ids with a file: V6's id list has 9M rows
            for row in reader:
                if row:
                    listed += 1
                    if row[col] in files:
                        on_disk.add(row[col])
        unlisted = len(files) - len(on_disk)
        files = {i: p for i, p in files.items() if i in on_disk}
        current().info(f"{ids_csv.name}: {listed} ids listed, {listed - len(files)} without an image file "
                       f"in {image_dir} (skipped), {unlisted} image files not listed (skipped)")
        if not files:
            raise InputError(f"{ids_csv}: none of its ImageIDs has an image file in {image_dir}")
    image_ids = sorted(files)
    return OpenImagesTree(root=root, split=split, image_ids=image_ids, paths=[files[i] for i in image_ids],
                          bbox_csv=bbox_csv, classes_csv=classes_csv, ids_csv=ids_csv)


def read_openimages_classes(path: Path) -> tuple[list[str], list[str]]:
    """(MIDs, display names) of ``class-descriptions-boxable.csv`` (``/m/01g317,Person``; a header row is skipped)."""
    mids, names = [], []
    with open(path, newline="", encoding="utf-8") as fh:
        for line_no, row in enumerate(csv.reader(fh), 1):
            if not row or (line_no == 1 and not row[0].startswith("/")):
                continue
            if len(row) < 2 or not row[0].startswith("/"):
                raise InputError(f"{path}:{line_no}: expected 'MID,Display name' (e.g. /m/01g317,Person), got {row}")
            mids.append(row[0])
            names.append(row[1])
    if not mids:
        raise InputError(f"{path}: no classes (expected lines like /m/01g317,Person)")
    return mids, names


def read_openimages_boxes(tree: OpenImagesTree) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Per image of ``tree`` (same order): (n_i,) class index of every box row, with the classes' MIDs and names.

    Every row counts as one object (group-of boxes included). Box rows of images without a file are skipped; MIDs
    missing from the class file keep their MID as name.
    """
    mids, names = read_openimages_classes(tree.classes_csv)
    class_of = {m: i for i, m in enumerate(mids)}
    image_of = {image_id: i for i, image_id in enumerate(tree.image_ids)}
    image_index, class_index = array("i"), array("i")
    current().info(f"reading {tree.bbox_csv}")
    with open(tree.bbox_csv, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        id_col, label_col = _csv_columns(tree.bbox_csv, next(reader, []), ["ImageID", "LabelName"])
        width = max(id_col, label_col) + 1
        for row in reader:
            if len(row) < width:
                if not row:
                    continue
                raise InputError(f"{tree.bbox_csv}:{reader.line_num}: {len(row)} columns, expected at least {width}")
            i = image_of.get(row[id_col])
            if i is None:
                continue
            c = class_of.get(row[label_col])
            if c is None:
                c = class_of[row[label_col]] = len(mids)
                mids.append(row[label_col])
                names.append(row[label_col])
            image_index.append(i)
            class_index.append(c)
    images = np.frombuffer(image_index, dtype=np.int32)
    classes = np.frombuffer(class_index, dtype=np.int32)
    order = np.argsort(images, kind="stable")
    bounds = np.cumsum(np.bincount(images, minlength=len(tree.image_ids)))[:-1]
    return np.split(classes[order].astype(np.int64), bounds), mids, names


@dataclass
class CocoCounts:
    path: Path
    objects: dict[str, int]  # category name → annotation count, every listed category (0 when it has none)
    stats: dict  # `object_stats` of the COCO split (Table 2's COCO row)


def read_coco_counts(path: str | os.PathLike) -> CocoCounts:
    """Per-class object counts of a COCO ``instances_*.json`` (or a COCO root holding annotations/instances_train2017.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / "annotations" / "instances_train2017.json"
    if not path.is_file():
        raise InputError(f"{path}: COCO annotation file not found (--coco takes instances_train2017.json or a COCO "
                         "root holding annotations/instances_train2017.json)")
    try:
        data = json.loads(path.read_text())
        names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        image_ids = [int(im["id"]) for im in data["images"]]
        pairs = [(int(a["image_id"]), int(a["category_id"])) for a in data["annotations"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a COCO instances file (expected images, annotations and categories; "
                         f"{type(exc).__name__}: {exc})") from None
    unknown = sorted(set(names.values()) - set(BY_COCO_NAME))
    if unknown:
        raise InputError(f"{path}: categories {', '.join(map(repr, unknown[:5]))} are not COCO classes of the "
                         "COCO↔OpenImages table (sslcli/data/readers/coco_openimages.py)")
    category_ids = sorted(names)
    class_of = {cid: i for i, cid in enumerate(category_ids)}
    image_of = {image_id: i for i, image_id in enumerate(image_ids)}
    per_image: list[list[int]] = [[] for _ in image_ids]
    for image_id, category_id in pairs:
        if image_id not in image_of or category_id not in class_of:
            raise InputError(f"{path}: an annotation refers to unknown image_id {image_id} or category_id {category_id}")
        per_image[image_of[image_id]].append(class_of[category_id])
    class_names = [names[c] for c in category_ids]
    stats = object_stats([np.asarray(p, dtype=np.int64) for p in per_image], class_names)
    objects = {name: stats["objects_per_class"].get(name, 0) for name in class_names}
    return CocoCounts(path=path, objects=objects, stats=stats)


# ------------------------------------------------------------------------------------------------- the subsets


@dataclass
class Subset:
    kind: str
    paths: list[str]  # relative to the data-set root, manifest order
    labels: list[int] | None  # image-level class indices into `classes` (ImageNet kinds)
    classes: list[str] | None
    stats: dict
    sorted_counts: np.ndarray | None  # (K,) per-class counts, descending, for the histogram
    count_label: str  # what sorted_counts counts ("images" or "objects")


def _per_class_stats(classes: list[str], counts: np.ndarray) -> dict:
    order = np.argsort(-counts, kind="stable")
    return {"images": int(counts.sum()), "classes": int((counts > 0).sum()),
            "max_per_class": int(counts.max()), "min_per_class": int(counts[counts > 0].min()),
            "images_per_class": {classes[k]: int(counts[k]) for k in order}}


def _imagenet_subset(kind: str, tree: ImageNetTree, counts: np.ndarray, seed: int, stats: dict) -> Subset:
    paths, labels = [], []
    for k, name in enumerate(tree.classes):
        chosen = sample_class_images(tree.images[k], int(counts[k]), seed, name)
        paths += chosen
        labels += [k] * len(chosen)
    stats = {"kind": kind, "seed": seed, **_per_class_stats(tree.classes, counts), **stats}
    sorted_counts = np.sort(counts[counts > 0])[::-1]
    return Subset(kind, paths, labels, list(tree.classes), stats, sorted_counts, "images")


def _check_size(root: Path, size: int, available: int, what: str) -> None:
    if size < 1:
        raise InputError(f"--size {size}: expected a positive number of images")
    if size > available:
        raise InputError(f"--size {size}: larger than the {available} {what} available in {root}")


def build_in118k(tree: ImageNetTree, size: int, seed: int) -> Subset:
    available = np.array([len(p) for p in tree.images])
    _check_size(tree.root, size, int(available.sum()), f"images of {len(available)} classes")
    return _imagenet_subset("in118k", tree, uniform_counts(available, size, seed), seed, {})


def build_in118k_lt(tree: ImageNetTree, size: int, seed: int) -> Subset:
    available = np.array([len(p) for p in tree.images])
    _check_size(tree.root, size, int(available.sum()), f"images of {len(available)} classes")
    plan = long_tail_counts(available, size, seed)
    extra = {"pareto_alpha": PARETO_ALPHA, "profile_max": LT_MAX_PER_CLASS, "profile_min": LT_MIN_PER_CLASS,
             "profile_total": float(plan.profile.sum()), "scale": plan.scale,
             "class_rank": {tree.classes[k]: int(plan.rank[k]) for k in np.argsort(plan.rank)}}
    return _imagenet_subset("in118k-lt", tree, plan.counts, seed, extra)


def build_oi118k(tree: OpenImagesTree, size: int, seed: int) -> Subset:
    _check_size(tree.root, size, len(tree.image_ids), f"{tree.split} images")
    chosen = sample_uniform(len(tree.image_ids), size, seed)
    stats: dict = {"kind": "oi118k", "seed": seed, "images": size}
    sorted_counts = None
    if tree.bbox_csv is not None and tree.classes_csv is not None:
        labels, _, names = read_openimages_boxes(tree)
        stats.update(object_stats([labels[i] for i in chosen], names))
        sorted_counts = np.array(list(stats["objects_per_class"].values()))
    else:
        current().info("no box/class CSVs found: stats without object columns, no histogram")
    return Subset("oi118k", [tree.paths[i] for i in chosen], None, None, stats, sorted_counts, "objects")


def build_oi_mini(tree: OpenImagesTree, coco: CocoCounts, seed: int, size: int | None = None,
                  cap_scale: float = 1.0) -> Subset:
    """OpenImage-MINI: caps are COCO's per-class object counts × ``cap_scale`` (floored), for the COCO classes that
    the table maps to a class of this tree's class file (the shared classes)."""
    if cap_scale <= 0:
        raise InputError(f"--cap-scale {cap_scale}: expected a positive factor")
    if size is not None:
        _check_size(tree.root, size, len(tree.image_ids), f"{tree.split} images")
    labels, mids, names = read_openimages_boxes(tree)
    class_of = {m: i for i, m in enumerate(mids)}
    caps, shared = {}, {}
    for coco_name, count in coco.objects.items():
        match = BY_COCO_NAME[coco_name]
        if match.mid in class_of:
            caps[class_of[match.mid]] = int(np.floor(count * cap_scale))
            shared[coco_name] = match
    if not shared:
        raise InputError(f"{tree.classes_csv}: none of the COCO classes' OpenImages MIDs are listed (expected e.g. "
                         "/m/01g317,Person)")
    absent = sorted(set(coco.objects) - set(shared))
    if absent:
        current().warn(f"{len(absent)} COCO classes have no class in {tree.classes_csv.name}: {', '.join(absent[:5])}")
    chosen = select_oi_mini(labels, caps, seed, limit=size)
    if size is not None and len(chosen) < size:
        raise InputError(f"--size {size}: only {len(chosen)} images satisfy the OpenImage-MINI rules under the caps "
                         f"from {coco.path} (raise --cap-scale to allow more objects per class)")
    selected = [labels[i] for i in chosen]
    stats = {"kind": "oi-mini", "seed": seed, "cap_scale": cap_scale, **object_stats(selected, names)}
    used = stats["objects_per_class"]
    stats["shared_classes"] = {
        coco_name: {"openimages": m.openimages, "mid": m.mid, "cap": caps[class_of[m.mid]],
                    "objects": used.get(names[class_of[m.mid]], 0)} for coco_name, m in shared.items()}
    stats["coco"] = {"annotations": str(coco.path), **coco.stats}
    sorted_counts = np.array(list(used.values()))
    return Subset("oi-mini", [tree.paths[i] for i in chosen], None, None, stats, sorted_counts, "objects")


# ------------------------------------------------------------------------------------------------------ outputs


def plot_sorted_counts(sorted_counts: np.ndarray, path: Path, title: str, ylabel: str) -> None:
    """The sorted class histogram (Revisiting Fig. S1), log-scaled, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.bar(np.arange(len(sorted_counts)), sorted_counts, width=1.0, color="#3b6ea8")
    ax.set_yscale("log")
    ax.set_xlabel("class (sorted by size)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_subset(subset: Subset, root: Path, out_dir: Path, name: str) -> dict[str, str | None]:
    """Write ``<name>.json`` (manifest), ``<name>.stats.json`` and ``<name>.hist.png`` into ``out_dir``, atomically."""
    manifest = out_dir / f"{name}.json"
    stats_path = out_dir / f"{name}.stats.json"
    png = out_dir / f"{name}.hist.png" if subset.sorted_counts is not None and len(subset.sorted_counts) else None
    if png is not None:
        title = f"{name}: {len(subset.sorted_counts)} classes"
        plot_sorted_counts(subset.sorted_counts, png, title, f"{subset.count_label} per class")
    write_json_atomic(stats_path, subset.stats)
    write_manifest(manifest, root.resolve(), subset.paths, subset.labels, subset.classes,
                   extra={"subset": {"kind": subset.kind, "seed": subset.stats["seed"], "stats": stats_path.name}})
    return {"manifest": str(manifest), "stats": str(stats_path), "histogram": str(png) if png else None}
