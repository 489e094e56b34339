"""Positional bias: mean cosine similarity (MCS) on 3×3 tilings, per layer (D3SSL §3.2, METHODS.md §6).

One object crop is repeated in a 3×3 grid; each tile's feature is the RoIAlign of the tile's box on a stage,
average-pooled; MCS = mean over the 8 outer tiles of cos(f(centre), f(tile)). Identical content everywhere, so a
network without positional information scores 1; zero padding makes border tiles differ, lowering it.

Choices the paper leaves open (all options): the crop is the object's GT box (``masked``: pixels outside its mask
black; default off, since the paper tiles an image patch), stretched to ``tile`` × ``tile`` pixels (default 96, a
multiple of the res5 stride so tiles align with the feature grid).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn.functional import cosine_similarity

from sslcli.data.readers.objects import cut_out, eligible_objects, require_coco
from sslcli.data.readers.sources import ImageSource
from sslcli.errors import CorruptImageError, InputError
from sslcli.eval.roi import box_features
from sslcli.models.backbone import STAGES

GRID = 3
CENTRE = 4  # row-major index of the centre tile


def tile_boxes(tile: int) -> np.ndarray:
    """(9, 4) boxes of a 3×3 grid of ``tile``-pixel tiles, row-major; index 4 is the centre."""
    return np.array([(c * tile, r * tile, (c + 1) * tile, (r + 1) * tile) for r in range(GRID) for c in range(GRID)],
                    dtype=np.float32)


def tile_image(crop: np.ndarray, tile: int = 96) -> np.ndarray:
    """Stretch ``crop`` (h, w, 3) to tile × tile and repeat it 3×3 → (3·tile, 3·tile, 3) uint8."""
    patch = cv2.resize(crop, (tile, tile), interpolation=cv2.INTER_AREA)
    return np.tile(patch, (GRID, GRID, 1))


def sample_tilings(source: ImageSource, n_objects: int, seed: int = 0, min_size: float = 32, tile: int = 96,
                   masked: bool = False, skipped: list[str] | None = None) -> tuple[list[np.ndarray], list[dict]]:
    """3×3 tilings of ``n_objects`` qualifying objects drawn without replacement (all of them if fewer)."""
    coco = require_coco(source, "analyze positional")
    objects = eligible_objects(coco, min_size)
    if not objects:
        raise InputError(f"{source.root}: no non-crowd object with both box sides ≥ {min_size} px")
    order = np.random.default_rng(seed).permutation(len(objects))
    tilings, meta = [], []
    for k in order:
        if len(tilings) == n_objects:
            break
        ref = objects[k]
        try:
            crop = cut_out(coco, ref, masked)
        except CorruptImageError as exc:
            if skipped is not None:
                skipped.append(str(exc))
            continue
        tilings.append(tile_image(crop, tile))
        meta.append({"image_id": coco.records[ref.image_index].image_id, "annotation_id": ref.annotation_id})
    return tilings, meta


def mean_cosine_similarity(backbone: nn.Module, tilings: Sequence[np.ndarray], stages: Sequence[str] = STAGES,
                           roi_size: int = 7, sampling_ratio: int = -1, batch_size: int = 16,
                           device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """MCS of every tiling on every stage: {stage: (N,) float64}. Tilings: (3·t, 3·t, 3) uint8, t = side / 3."""
    if not tilings:
        return {s: torch.zeros(0, dtype=torch.float64) for s in stages}
    tile = tilings[0].shape[0] // GRID
    boxes = tile_boxes(tile)
    feats = box_features(backbone, [(t, boxes) for t in tilings], stages, roi_size, sampling_ratio, batch_size,
                         device, progress_description="positional: tilings")
    out = {}
    for stage in stages:
        f = feats[stage].double().view(len(tilings), GRID * GRID, -1)
        centre = f[:, CENTRE:CENTRE + 1].expand_as(f)
        sims = cosine_similarity(centre, f, dim=2, eps=1e-12)  # (N, 9); the centre's own entry is 1
        others = [j for j in range(GRID * GRID) if j != CENTRE]
        out[stage] = sims[:, others].mean(dim=1)
    return out
