"""Labels for the probes: image-level (single- or multi-label) and object-level, from any `open_source` layout.

- COCO layout: image-level labels are the set of classes present (multi-label, one multi-hot row per image);
  object-level labels are the ground-truth instances (non-crowd, both box sides >= ``min_size`` px), one row per box.
- ImageFolder / manifest: one class index per image (single-label); no object-level labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslcli.data.readers.objects import qualifies
from sslcli.data.readers.sources import CocoSource, ImageSource, open_source
from sslcli.errors import InputError

LEVELS = ("image", "object")


@dataclass
class LabeledSet:
    """What a probe classifies. Row ``i`` is image ``image_index[i]`` of ``source`` (and its box ``boxes[i]``).

    ``targets``: (N,) int class indices, or (N, C) {0,1} multi-hot when ``multilabel``.
    ``boxes``: (N, 4) float (x0, y0, x1, y1) in original pixels for object-level sets, else None.
    """

    source: ImageSource
    image_index: np.ndarray
    targets: np.ndarray
    classes: list[str]
    multilabel: bool
    boxes: np.ndarray | None = None

    @property
    def level(self) -> str:
        return "image" if self.boxes is None else "object"

    def __len__(self) -> int:
        return len(self.image_index)

    def subset(self, rows: np.ndarray) -> LabeledSet:
        return LabeledSet(self.source, self.image_index[rows], self.targets[rows], self.classes, self.multilabel,
                          None if self.boxes is None else self.boxes[rows])


def default_splits(root: str | os.PathLike) -> tuple[str, str]:
    """(train, test) split names: COCO train2017/val2017, ImageFolder train/val."""
    root = Path(root)
    if (root / "annotations").is_dir():
        return "train2017", "val2017"
    return "train", "val"


def open_split(root: str | os.PathLike, split: str) -> ImageSource:
    """Open one split: COCO ``instances_<split>``; an ImageFolder's ``ROOT/<split>/<class>/``; a manifest as is."""
    root = Path(root)
    if root.is_dir() and not (root / "annotations").is_dir():
        split_dir = root / split
        if not split_dir.is_dir():
            raise InputError(f"{root}: no split folder {split!r} (expected {split_dir}/<class>/*.jpg or a COCO layout)")
        return open_source(split_dir, split, fmt="imagefolder")
    return open_source(root, split)


def image_labels(source: ImageSource) -> LabeledSet:
    """One row per image: multi-hot classes present (COCO) or the folder/manifest class index."""
    if isinstance(source, CocoSource):
        targets = np.zeros((len(source), len(source.category_ids)), dtype=np.int64)
        for i in range(len(source)):
            for inst in source.instances(i):
                targets[i, inst.label] = 1
        return LabeledSet(source, np.arange(len(source)), targets, list(source.classes or []), multilabel=True)
    labels = [r.label for r in source.records]
    if any(lab is None for lab in labels):
        missing = next(r.path for r in source.records if r.label is None)
        raise InputError(f"{missing}: no class label (probes need COCO annotations, class folders or a labelled manifest)")
    classes = source.classes or [str(c) for c in range(max(labels) + 1)]
    return LabeledSet(source, np.arange(len(source)), np.asarray(labels, dtype=np.int64), list(classes), False)


def object_labels(source: ImageSource, min_size: float = 32.0, per_image: str = "all", seed: int = 0) -> LabeledSet:
    """One row per ground-truth object (non-crowd, min(box w, h) >= ``min_size``).

    ``per_image``: "all", or "one-per-class" (a seeded random instance of each class present in each image, the
    O-KNN bank of METHODS.md §6).
    """
    if not isinstance(source, CocoSource):
        raise InputError(f"{source.root}: object-level labels need a COCO-layout data set (annotations/instances_*.json)")
    if per_image not in ("all", "one-per-class"):
        raise InputError(f"per_image {per_image!r}: expected all or one-per-class")
    rng = np.random.default_rng(seed)
    image_index, boxes, targets = [], [], []
    for i in range(len(source)):
        kept = [inst for inst in source.instances(i) if qualifies(inst, min_size)]
        if per_image == "one-per-class":
            by_class: dict[int, list] = {}
            for inst in kept:
                by_class.setdefault(inst.label, []).append(inst)
            kept = [group[rng.integers(len(group))] for _, group in sorted(by_class.items())]
        for inst in kept:
            image_index.append(i)
            boxes.append(inst.box)
            targets.append(inst.label)
    if not targets:
        raise InputError(f"{source.root}: no objects with both box sides >= {min_size} px (lower --min-size)")
    return LabeledSet(source, np.asarray(image_index), np.asarray(targets, dtype=np.int64), list(source.classes or []),
                      False, np.asarray(boxes, dtype=np.float32))


def labeled_set(source: ImageSource, level: str, min_size: float = 32.0) -> LabeledSet:
    if level not in LEVELS:
        raise InputError(f"--labels {level!r}: expected one of {', '.join(LEVELS)}")
    return image_labels(source) if level == "image" else object_labels(source, min_size)


def check_same_classes(train: LabeledSet, test: LabeledSet) -> None:
    if train.classes != test.classes:
        raise InputError(f"{test.source.root}: test classes differ from the training classes "
                         f"({len(test.classes)} vs {len(train.classes)}); both splits must share one class list")
