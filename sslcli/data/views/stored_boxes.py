"""Views of an image and its stored boxes: the per-sample transform of the box methods (SoCo, D3SSL).

The boxes come from a region store of kind ``boxes`` (made by ``sslcli prepare boxes``), opened and checked once at
start-up by `open_box_store`; `StoredBoxViews` looks each sample's boxes up and hands image and boxes to a views
callable (SoCo's `sslcli.data.views.regions.RegionViews`, D3SSL's ``D3sslViews``); the device views of both read
the same boxes through `image_boxes`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sslcli.data.stores.digests import require_store_matches
from sslcli.data.stores.store import RegionStore
from sslcli.errors import InputError


def open_box_store(path: str, data) -> RegionStore:
    """The box store named by ``method.boxes``, checked at start-up (exists, is complete, holds boxes, was computed
    from the images of the run spec's ``data`` section)."""
    try:
        store = RegionStore(path)
        kind, method = store.kind, store.method
    except InputError as exc:
        raise InputError(f"method.boxes: {exc} (make one with `sslcli prepare boxes ROOT --method "
                         "selective-search --filter soco`)") from None
    if kind != "boxes":
        raise InputError(f"method.boxes: {path} holds {kind} (method {method}), expected boxes "
                         "(made by `sslcli prepare boxes`)")
    require_store_matches(store, data, "method.boxes")
    return store


class StoredBoxViews:
    """Sample dict → ``views(image, the image's stored boxes)``; picklable (runs in DataLoader workers).

    Refuses an image the store does not hold, or one whose size differs from the image the boxes were computed on.
    """

    def __init__(self, store: RegionStore, views: Callable[[np.ndarray, np.ndarray], dict[str, Any]]):
        self.store, self.views = store, views

    def __call__(self, sample: dict) -> dict:
        image = np.asarray(sample["image"])
        return self.views(image, image_boxes(self.store, sample.get("image_id"), *image.shape[:2]))


def image_boxes(store: RegionStore, image_id, height: int, width: int) -> np.ndarray:
    """The stored proposals of image ``image_id`` (the CPU views and the device views both read them here), refusing
    an image the store does not hold or one whose size differs from the image the boxes were computed on."""
    try:
        boxes = store.boxes(image_id)
        stored_size = store.image_size(image_id)
    except KeyError:
        raise InputError(f"image {image_id!r} is not in box store {store.path}: was it made from this "
                         "data set and split?") from None
    if tuple(stored_size) != (height, width):
        raise InputError(f"image {image_id!r}: boxes in {store.path} were computed on a "
                         f"{stored_size[1]}×{stored_size[0]} image, but it is {width}×{height}")
    return boxes
