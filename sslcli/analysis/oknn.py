"""Object-level kNN (O-KNN) and disturbed O-KNN (D3SSL §5.3, METHODS.md §6).

Objects are ground-truth boxes (non-crowd, both sides ≥ ``min_size`` px in the original image). A feature is the
RoIAlign (7×7, aligned) of the box on res5, average-pooled and L2-normalised. The bank holds objects of the train
split: by default one per class present in each image (a random instance of that class, seeded), or ``per_image``
random objects per image. Every qualifying object of the val split is a query, classified by the k nearest bank
entries (cosine; k = 20; votes weighted by exp(sim / 0.07), the kNN probe's rule); top-1 / top-5 accuracy.

Disturbed O-KNN: in every image, each pixel outside the boxes selected from it is replaced by the pixel of a random
other image of the same split, resized to the same size (seeded); by default for the bank and the queries alike
("the feature extraction pipeline is kept the same"), ``disturb="val"`` disturbs the queries only.

Images are resized so that their shorter side is ``short_side`` pixels (default 512, for speed; capped so the longer
side is at most ``max_side``); boxes are scaled with them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn.functional import normalize

from sslcli.data.readers.objects import integer_box, qualifies, require_coco
from sslcli.data.readers.sources import CocoSource, ImageSource
from sslcli.errors import CorruptImageError, InputError
from sslcli.eval.knn import knn_scores, voted_topk_accuracy
from sslcli.eval.roi import box_features
from sslcli.eval.sampling import with_se


@dataclass
class ObjectPlan:
    """Which objects of which images to extract, fixed before any network runs (the same for every checkpoint).

    images: source indices; boxes: per image (K_i, 4) in original pixels; labels: per image (K_i,) class indices
    into ``class_ids``; backgrounds: per image the source index of its disturbing image (disturbed runs only).
    """

    source: CocoSource
    images: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    backgrounds: list[int] | None = None

    @property
    def n_objects(self) -> int:
        return int(sum(len(b) for b in self.boxes))

    def paths(self) -> list[Path]:
        """The image files the plan reads objects from (for the bank/query overlap check)."""
        return [Path(self.source.records[i].path) for i in self.images]


def plan_objects(source: ImageSource, class_ids: list[int], per_image: int | None, min_size: float = 32,
                 seed: int = 0, max_images: int | None = None) -> ObjectPlan:
    """Choose the objects of each image. per_image None: all qualifying objects (queries); 0: one per class present
    (a random instance of each class); N > 0: N random qualifying objects (all of them if fewer)."""
    coco = require_coco(source, "analyze oknn")
    label_of = {cid: i for i, cid in enumerate(class_ids)}
    rng = np.random.default_rng(seed)
    plan = ObjectPlan(coco)
    indices = range(len(coco)) if max_images is None else range(min(max_images, len(coco)))
    for i in indices:
        candidates = [inst for inst in coco.instances(i) if qualifies(inst, min_size)]
        if per_image == 0:
            by_class: dict[int, list] = {}
            for inst in candidates:
                by_class.setdefault(inst.category_id, []).append(inst)
            chosen = [group[rng.integers(len(group))] for _, group in sorted(by_class.items())]
        elif per_image is not None and len(candidates) > per_image:
            chosen = [candidates[j] for j in sorted(rng.choice(len(candidates), per_image, replace=False))]
        else:
            chosen = candidates
        if chosen:
            plan.images.append(i)
            plan.boxes.append(np.array([inst.box for inst in chosen], dtype=np.float32))
            plan.labels.append(np.array([label_of[inst.category_id] for inst in chosen], dtype=np.int64))
    return plan


def assign_backgrounds(plan: ObjectPlan, seed: int = 0) -> None:
    """Give every planned image a random *other* image of its split as its disturbing background (seeded)."""
    n = len(plan.source)
    if n < 2:
        raise InputError(f"{plan.source.root}: disturbed O-KNN needs at least two images in the split")
    rng = np.random.default_rng(seed)
    plan.backgrounds = [int((i + rng.integers(1, n)) % n) for i in plan.images]


def resize_short_side(image: np.ndarray, short_side: int, max_side: int) -> tuple[np.ndarray, float]:
    """Resize so the shorter side is ``short_side`` px, unless that makes the longer side exceed ``max_side``."""
    h, w = image.shape[:2]
    scale = min(short_side / min(h, w), max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR), scale


def disturb(image: np.ndarray, boxes: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Replace every pixel of ``image`` outside ``boxes`` (K, 4) with ``background`` resized to the image's size."""
    h, w = image.shape[:2]
    keep = np.zeros((h, w), dtype=bool)
    for box in boxes:
        x0, y0, x1, y1 = integer_box(tuple(box), w, h)
        keep[y0:y1, x0:x1] = True
    out = cv2.resize(background, (w, h), interpolation=cv2.INTER_AREA)
    out[keep] = image[keep]
    return out


def _prefetch(fn: Callable[[int], object], items: Iterable[int], workers: int, window: int = 32) -> Iterator:
    """Map ``fn`` over ``items`` in ``workers`` threads, in order, holding at most ``window`` results ahead."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = []
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def plan_items(plan: ObjectPlan, short_side: int = 512, max_side: int = 1024, disturbed: bool = False,
               workers: int = 2, failed: list[tuple[int, str]] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(resized image, scaled boxes) for every planned image, in plan order.

    An unreadable image (or background) yields no boxes; (plan index, message) goes to ``failed``.
    """
    if disturbed and plan.backgrounds is None:
        raise ValueError("disturbed items need assign_backgrounds(plan) first")

    def load(k: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            image, scale = resize_short_side(plan.source.load(plan.images[k]), short_side, max_side)
            boxes = plan.boxes[k] * scale
            if disturbed:
                image = disturb(image, boxes, plan.source.load(plan.backgrounds[k]))
            return image, boxes
        except CorruptImageError as exc:
            if failed is not None:
                failed.append((k, str(exc)))
            return np.zeros((1, 1, 3), dtype=np.uint8), np.zeros((0, 4), dtype=np.float32)

    return _prefetch(load, range(len(plan.images)), workers)


def classify(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
             n_classes: int, k: int = 20, temperature: float = 0.07) -> dict[str, float | None]:
    """Top-1 / top-5 accuracy (%) of the weighted k-NN vote (the kNN probe's, `sslcli.eval.knn`).

    bank (N, D), queries (Q, D); labels (N,), (Q,) class indices below ``n_classes``; k is clamped to N.
    """
    scores = knn_scores(bank, bank_labels, queries, [k], n_classes, temperature)[k]
    query_labels = query_labels.to(scores.device)
    return with_se({"top1": voted_topk_accuracy(scores, query_labels, 1),
                    "top5": voted_topk_accuracy(scores, query_labels, 5)}, len(query_labels))


def _features(backbone: nn.Module, plan: ObjectPlan, disturbed: bool, short_side: int, max_side: int,
              batch_size: int, device, workers: int, skipped: list[str], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised res5 box features (M, C) and their labels (M,); objects of unreadable images are left out."""
    failed: list[tuple[int, str]] = []
    items = plan_items(plan, short_side, max_side, disturbed, workers, failed)
    feats = box_features(backbone, items, ("res5",), roi_size=7, batch_size=batch_size, device=device,
                         total=len(plan.images), progress_description=name)["res5"]
    bad = {k for k, _ in failed}
    skipped.extend(message for _, message in failed)
    labels = [lab for k, lab in enumerate(plan.labels) if k not in bad]
    labels = torch.as_tensor(np.concatenate(labels) if labels else np.zeros(0), dtype=torch.long)
    return normalize(feats.float(), dim=1), labels


def object_knn(backbone: nn.Module, bank_plan: ObjectPlan, query_plan: ObjectPlan, n_classes: int, k: int = 20,
               temperature: float = 0.07, disturbed: bool = False, disturb_bank: bool = True, short_side: int = 512,
               max_side: int = 1024, batch_size: int = 16, device: torch.device | str = "cpu",
               workers: int = 2) -> dict:
    """O-KNN top-1/top-5 (percent), clean and, with ``disturbed``, disturbed; plus bank and query sizes."""
    skipped: list[str] = []
    variants = [("clean", False, False)]
    if disturbed:
        variants.append(("disturbed", disturb_bank, True))
    cache: dict[tuple[str, bool], tuple[torch.Tensor, torch.Tensor]] = {}
    result: dict = {}
    for name, bank_disturbed, query_disturbed in variants:
        for role, plan, flag in (("bank", bank_plan, bank_disturbed), ("queries", query_plan, query_disturbed)):
            if (role, flag) not in cache:
                label = f"oknn {'disturbed ' if flag else ''}{role}"
                cache[(role, flag)] = _features(backbone, plan, flag, short_side, max_side, batch_size, device,
                                                workers, skipped, label)
        bank, bank_labels = cache[("bank", bank_disturbed)]
        queries, query_labels = cache[("queries", query_disturbed)]
        if not len(bank) or not len(queries):
            raise InputError(f"O-KNN: no readable objects in the {'bank' if not len(bank) else 'queries'}")
        accuracy = classify(bank.to(device), bank_labels.to(device), queries.to(device), query_labels, n_classes,
                            k, temperature)
        result[name] = {**accuracy, "bank_objects": len(bank), "query_objects": len(queries)}
    if skipped:
        result["skipped_images"] = sorted(set(skipped))
    return result
