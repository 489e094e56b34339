"""Coupling rate (CR) per layer (D3SSL §3.1, METHODS.md §6).

For a pair of objects A and B of different classes:
  I1 = A and B side by side on a black canvas, I2 = the same canvas with A only (same place),
  CR = cos(f(A|I1), f(B|I1)) / cos(f(A|I2), f(B|I1)),
where f(X|I) is the RoIAlign of X's box on one stage of the network, average-pooled. CR = 1 when B's presence does
not change A's feature; higher means more coupling.

Choices the paper leaves open (all options): objects are cut out with their GT masks (outside pixels black), scaled
so that the longer side of the box is ``cell`` pixels, and placed in two cells of a ``cell`` × (2·cell + gap)
canvas: A right-aligned in the left cell, B left-aligned in the right cell, both vertically centred, so they touch
across ``gap`` pixels (default 0: "next to each other"). Pairs whose denominator is ≤ 1e-6 (no defined ratio) are
counted in ``undefined`` and left out of the statistics.

On a data set with planted priors (``prepare synthetic --preset planted``) the pairs can be restricted to the class
pairs declared in the train split's ``info.planted`` or to those never declared together (``allowed_label_pairs``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.functional import cosine_similarity

from sslcli.data.readers.objects import ObjectRef, cut_out, eligible_objects, fit_longer_side, require_coco
from sslcli.data.readers.sources import CocoSource, ImageSource
from sslcli.errors import CorruptImageError, InputError
from sslcli.eval.roi import box_features
from sslcli.models.backbone import STAGES

EPS = 1e-6
PAIR_GROUPS = ("planted", "unplanted")  # --pair-classes besides "all"


@dataclass
class PairScene:
    """The two canvases of one pair. i1/i2: (cell, 2·cell+gap, 3) uint8; boxes (x0, y0, x1, y1) in canvas pixels."""

    i1: np.ndarray
    i2: np.ndarray
    box_a: tuple[float, float, float, float]
    box_b: tuple[float, float, float, float]
    meta: dict


def compose_pair(crop_a: np.ndarray, crop_b: np.ndarray, cell: int = 128, gap: int = 0) -> PairScene:
    """Place two cut-out objects side by side on black (see the module docstring for the layout)."""
    a, b = fit_longer_side(crop_a, cell), fit_longer_side(crop_b, cell)
    canvas = np.zeros((cell, 2 * cell + gap, 3), dtype=np.uint8)
    ha, wa = a.shape[:2]
    hb, wb = b.shape[:2]
    ax, ay = cell - wa, (cell - ha) // 2
    bx, by = cell + gap, (cell - hb) // 2
    i2 = canvas.copy()
    i2[ay:ay + ha, ax:ax + wa] = a
    i1 = i2.copy()
    i1[by:by + hb, bx:bx + wb] = b
    return PairScene(i1, i2, (ax, ay, ax + wa, ay + ha), (bx, by, bx + wb, by + hb), {})


def planted_class_pairs(root: str | os.PathLike, train_split: str = "train2017") -> set[frozenset[int]]:
    """The class pairs (category ids, either order) declared in ``info.planted.pairs`` of the train split's
    annotation file (written by ``sslcli prepare synthetic --preset planted``; format in docs/synthetic.md)."""
    path = Path(root) / "annotations" / f"instances_{train_split}.json"
    try:
        info = json.loads(path.read_text()).get("info") or {}
    except FileNotFoundError:
        raise InputError(f"{path}: annotation file not found (the planted rules are read from the train split)") \
            from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise InputError(f"{path}: not a readable COCO annotation file ({exc})") from None
    planted = info.get("planted") if isinstance(info, dict) else None
    if planted in (None, "none"):
        raise InputError(f"{path}: no planted rules (info.planted); --pair-classes planted|unplanted and --groups "
                         f"need a data set made by `sslcli prepare synthetic --preset planted`")
    try:
        return {frozenset((int(p["a"]), int(p["b"]))) for p in planted["pairs"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: info.planted.pairs is malformed ({exc!r}); expected a list of {{a, b, ...}} "
                         f"with class ids") from None


def allowed_label_pairs(source: CocoSource, group: str, planted: set[frozenset[int]]) -> set[frozenset[int]]:
    """Label pairs (contiguous labels of ``source``) of a group: ``planted`` = the declared pairs, ``unplanted`` =
    every other pair of two different classes."""
    if group not in PAIR_GROUPS:
        raise InputError(f"--pair-classes {group!r}: expected all, {' or '.join(PAIR_GROUPS)}")
    ids = source.category_ids
    unknown = sorted(i for pair in planted for i in pair if i not in ids)
    if unknown:
        raise InputError(f"{source.root}: info.planted names class id(s) {unknown} that the split's categories "
                         f"do not have")
    everything = {frozenset((i, j)) for i in range(len(ids)) for j in range(i + 1, len(ids))}
    declared = {frozenset(ids.index(c) for c in pair) for pair in planted}
    return declared if group == "planted" else everything - declared


def sample_pairs(source: ImageSource, n_pairs: int, seed: int = 0, min_size: float = 32, cell: int = 128,
                 gap: int = 0, masked: bool = True, skipped: list[str] | None = None,
                 allowed: set[frozenset[int]] | None = None) -> list[PairScene]:
    """``n_pairs`` scenes from random pairs of qualifying objects of different classes (seeded); with ``allowed``
    (label pairs, either order), only pairs of classes in it."""
    coco = require_coco(source, "analyze coupling")
    objects = eligible_objects(coco, min_size)
    if len({o.label for o in objects}) < 2:
        raise InputError(f"{source.root}: coupling needs objects of at least two classes with boxes ≥ {min_size} px; "
                         f"found {len(objects)} object(s) of {len({o.label for o in objects})} class(es)")
    labels = np.array([o.label for o in objects])
    n_labels = len(coco.category_ids)
    partners = ~np.eye(n_labels, dtype=bool)  # partners[x, y]: an A of class x may be paired with a B of class y
    if allowed is not None:
        partners = np.zeros((n_labels, n_labels), bool)
        for pair in allowed:
            x, y = tuple(pair)
            partners[x, y] = partners[y, x] = True
    present = np.zeros(n_labels, bool)
    present[labels] = True
    pool = np.flatnonzero((partners & present[None, :]).any(1)[labels])  # objects that have some partner
    if not len(pool):
        raise InputError(f"{source.root}: no two qualifying objects (boxes ≥ {min_size} px) form an allowed class "
                         f"pair")
    rng = np.random.default_rng(seed)
    scenes: list[PairScene] = []
    bad: set[int] = set()
    attempts = 0
    while len(scenes) < n_pairs:
        attempts += 1
        if attempts > 10 * n_pairs + 100:
            raise InputError(f"{source.root}: could not build {n_pairs} pairs (too many unreadable images)")
        a = objects[pool[rng.integers(len(pool))]]  # without ``allowed`` the pool is every object (as always)
        others = np.flatnonzero(partners[a.label, labels])
        b = objects[others[rng.integers(len(others))]]
        if a.image_index in bad or b.image_index in bad:
            continue
        try:
            crop_a, crop_b = cut_out(coco, a, masked), cut_out(coco, b, masked)
        except CorruptImageError as exc:
            bad.update((a.image_index, b.image_index))
            if skipped is not None:
                skipped.append(str(exc))
            continue
        scene = compose_pair(crop_a, crop_b, cell, gap)
        scene.meta = {"a": _describe(coco, a), "b": _describe(coco, b)}
        scenes.append(scene)
    return scenes


def _describe(source: ImageSource, ref: ObjectRef) -> dict:
    return {"image_id": source.records[ref.image_index].image_id, "annotation_id": ref.annotation_id,
            "class": source.classes[ref.label] if source.classes else ref.label}


def coupling_rates(backbone: nn.Module, scenes: Sequence[PairScene], stages: Sequence[str] = STAGES,
                   roi_size: int = 7, sampling_ratio: int = -1, batch_size: int = 16,
                   device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """CR of every scene on every stage: {stage: (P,) float64, NaN where the denominator is ≤ 1e-6}."""
    both = [(s.i1, np.array([s.box_a, s.box_b])) for s in scenes]
    alone = [(s.i2, np.array([s.box_a])) for s in scenes]
    i1 = box_features(backbone, both, stages, roi_size, sampling_ratio, batch_size, device,
                      progress_description="coupling: A and B")
    i2 = box_features(backbone, alone, stages, roi_size, sampling_ratio, batch_size, device,
                      progress_description="coupling: A alone")
    rates = {}
    for stage in stages:
        a1, b1 = i1[stage][0::2].double(), i1[stage][1::2].double()
        a2 = i2[stage].double()
        numerator = cosine_similarity(a1, b1, dim=1, eps=1e-12)
        denominator = cosine_similarity(a2, b1, dim=1, eps=1e-12)
        ratio = numerator / torch.where(denominator.abs() > EPS, denominator, torch.ones_like(denominator))
        rates[stage] = torch.where(denominator.abs() > EPS, ratio, torch.full_like(ratio, float("nan")))
    return rates


def summarize(values: torch.Tensor) -> dict:
    """mean, std, median, quartiles over the defined values; ``undefined`` counts NaNs."""
    defined = values[~torch.isnan(values)].double()
    stats = {"n": int(defined.numel()), "undefined": int(values.numel() - defined.numel())}
    if defined.numel():
        q = torch.quantile(defined, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
        stats.update(mean=float(defined.mean()), std=float(defined.std(unbiased=False)), median=float(q[1]),
                     q25=float(q[0]), q75=float(q[2]))
    else:
        stats.update(mean=None, std=None, median=None, q25=None, q75=None)
    return stats
