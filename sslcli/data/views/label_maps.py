"""Label maps for DetCon, fetched or computed per sample inside DataLoader workers (METHODS.md §3).

Here, not in sslcli.proposals, so that DetCon's views read them without importing the proposal generators; the
generators of `prepare masks --method grid / gt` (`sslcli.proposals.grid`, `sslcli.proposals.gt`) paint their stores
with the same `grid_label_map` and `gt_label_map`.

A `MaskSource` turns a sample dict ``{"image": (H, W, 3) uint8, "image_id": id, ...}`` into one (H, W) int32 label
map over the whole original image (every pixel carries one mask id). Kinds (``method.masks.kind`` in the run spec):

- ``store``: a mask store from `sslcli prepare masks` (FH, grid, gt or MCG). With several FH scales in the store
  (or listed in ``scales``), one scale is drawn uniformly per image and step; MCG's overlapping masks come flattened
  by score (`RegionStore.label_map`).
- ``grid``: an n×n grid over the original image, computed from its size (no store needed; 1×1 = SimCLR/BYOL);
  the same label maps as `prepare masks --method grid` (`sslcli.proposals.grid`).
- ``gt``: COCO ground-truth instance masks read directly from the data set's annotation file (no store needed);
  the same label maps as `prepare masks --method gt` (`sslcli.proposals.gt`): instance j → id j + 1, painted
  largest first, 0 = pixels no instance covers (the background is a region too, as with any segmentation).

Stores and annotation files are opened lazily in each worker process (h5py handles are not fork-safe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sslcli.errors import InputError


def grid_label_map(height: int, width: int, n: int) -> np.ndarray:
    """(H, W) int32: pixel (y, x) lies in cell (floor(y·n/H), floor(x·n/W)), cell (r, c) labelled r·n + c."""
    rows = (np.arange(height) * n) // height
    cols = (np.arange(width) * n) // width
    return (rows[:, None] * n + cols[None, :]).astype(np.int32)


def gt_label_map(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool instance masks → (H, W) int32 map, 0 = background, j+1 = instance j (smaller on top)."""
    out = np.zeros(masks.shape[1:], np.int32)
    areas = masks.sum(axis=(1, 2))
    for j in np.argsort(-areas, kind="stable"):
        out[masks[j]] = j + 1
    return out


@dataclass
class MaskSource:
    """Where DetCon's masks come from; picklable, opened lazily per process.

    Args:
        kind: "store", "grid" or "gt" (see the module docstring).
        path: the mask store (kind "store").
        scales: FH scales of the store to sample from (None = all the store holds).
        grid: n for grid masks.
        data_root, split: the data set (kind "gt": COCO annotations of ``split``).
    """

    kind: str
    path: str | None = None
    scales: list[int] | None = None
    grid: int = 5
    data_root: str | None = None
    split: str = "train2017"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getstate__(self):  # never ship open handles or a parsed annotation file to workers
        return {k: v for k, v in self.__dict__.items() if k != "_cache"} | {"_cache": {}}

    @classmethod
    def from_spec(cls, masks_spec, data_spec) -> MaskSource:
        source = cls(masks_spec.kind, masks_spec.path, masks_spec.scales, masks_spec.grid, data_spec.root,
                     data_spec.split)
        # Fail at start-up, not in a DataLoader worker, when the store, a scale or the annotations are wrong.
        if source.kind == "store":
            source.scale_indices()
            from sslcli.data.stores.digests import require_store_matches

            require_store_matches(source.store(), data_spec, "method.masks.path")
        elif source.kind == "gt":
            from pathlib import Path

            annotations = Path(source.data_root or ".") / "annotations" / f"instances_{source.split}.json"
            if not annotations.is_file():
                raise InputError(f"method.masks.kind: 'gt' reads COCO instance masks, but {annotations} does not "
                                 "exist (use a COCO-layout data.root, or a store from `prepare masks`)")
        return source

    # -- store ---------------------------------------------------------------------------------------------------
    def store(self):
        if "store" not in self._cache:
            from sslcli.data.stores.store import RegionStore

            store = RegionStore(self.path)
            if store.kind != "masks":
                raise InputError(f"method.masks.path: {self.path} holds {store.kind}, expected masks "
                                 "(made by `sslcli prepare masks`)")
            self._cache["store"] = store
        return self._cache["store"]

    def scale_indices(self) -> list[int]:
        """Indices into the store's label maps to sample from (one per image and step)."""
        if "scale_indices" not in self._cache:
            store = self.store()
            available = store.scales
            if self.scales is None:
                n_maps = len(available) if available else 1
                indices = list(range(n_maps))
            elif not available:
                raise InputError(f"method.masks.scales: {self.path} (method {store.method}) has no FH scales; "
                                 "remove 'scales'")
            else:
                missing = [s for s in self.scales if s not in available]
                if missing:
                    raise InputError(f"method.masks.scales: {missing} not in {self.path} (it holds scales "
                                     f"{available})")
                indices = [available.index(s) for s in self.scales]
            self._cache["scale_indices"] = indices
        return self._cache["scale_indices"]

    # -- gt ------------------------------------------------------------------------------------------------------
    def _coco(self):
        if "coco" not in self._cache:
            from sslcli.data.readers.sources import CocoSource, open_source

            source = open_source(self.data_root, self.split)
            if not isinstance(source, CocoSource):
                raise InputError(f"method.masks.kind: 'gt' needs a COCO-layout data set with instance annotations; "
                                 f"{self.data_root} is a {source.kind} data set")
            self._cache["coco"] = (source, {str(r.image_id): i for i, r in enumerate(source.records)})
        return self._cache["coco"]

    # -- the label map -------------------------------------------------------------------------------------------
    def label_map(self, sample: dict) -> np.ndarray:
        """(H, W) int32 label map aligned with ``sample["image"]`` (H, W, 3)."""
        height, width = sample["image"].shape[:2]
        if self.kind == "grid":
            return grid_label_map(height, width, self.grid)
        image_id = sample.get("image_id")
        if self.kind == "store":
            indices = self.scale_indices()
            k = indices[int(torch.randint(len(indices), ()))] if len(indices) > 1 else indices[0]
            try:
                label_map = self.store().label_map(image_id, k)
            except KeyError:
                raise InputError(f"image {image_id!r} is not in mask store {self.path}: was it made from this "
                                 "data set and split?") from None
        elif self.kind == "gt":
            source, index_of = self._coco()
            if str(image_id) not in index_of:
                raise InputError(f"image {image_id!r} is not in {self.data_root} split {self.split}")
            masks, _ = source.instance_masks(index_of[str(image_id)])
            label_map = gt_label_map(masks)
        else:
            raise InputError(f"method.masks.kind: {self.kind!r} is not one of store, grid, gt")
        if label_map.shape != (height, width):
            raise InputError(f"image {image_id!r}: masks are {label_map.shape[1]}×{label_map.shape[0]} but the image "
                             f"is {width}×{height} (masks made from other images?)")
        return label_map
