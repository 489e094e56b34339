"""Annotated objects for the analyses and the probes' labels: which instances qualify, cutting them out, fitting them
into a cell.

An object qualifies when it is not a crowd annotation and both sides of its box are at least ``min_size`` pixels
in the original image (D3SSL §5.3 keeps boxes "≥ 32 px"; we read that as the shorter side, and make it an option).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sslcli.data.readers.sources import CocoSource, ImageSource, Instance
from sslcli.errors import InputError


@dataclass(frozen=True)
class ObjectRef:
    """One qualifying instance: the image's index in the source, the instance's position in ``instances(i)``."""

    image_index: int
    instance_index: int
    label: int
    box: tuple[float, float, float, float]
    annotation_id: int


def require_coco(source: ImageSource, what: str) -> CocoSource:
    if not isinstance(source, CocoSource):
        raise InputError(f"{source.root}: {what} needs a COCO-layout set with instance annotations "
                         f"(annotations/instances_<split>.json), got a {source.kind} layout")
    return source


def qualifies(instance: Instance, min_size: float) -> bool:
    x0, y0, x1, y1 = instance.box
    return not instance.iscrowd and min(x1 - x0, y1 - y0) >= min_size


def eligible_objects(source: CocoSource, min_size: float = 32) -> list[ObjectRef]:
    """Every qualifying instance of the split, in image then annotation order."""
    refs = []
    for i in range(len(source)):
        for j, inst in enumerate(source.instances(i)):
            if qualifies(inst, min_size):
                refs.append(ObjectRef(i, j, inst.label, inst.box, inst.annotation_id))
    return refs


def integer_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels a float box touches, clipped to the image: (x0, y0, x1, y1) with x1, y1 exclusive."""
    x0, y0, x1, y1 = box
    x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    x1, y1 = min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def cut_out(source: CocoSource, ref: ObjectRef, masked: bool = True) -> np.ndarray:
    """The object's box region (h, w, 3) uint8; with ``masked``, pixels outside its GT mask are black."""
    image = source.load(ref.image_index)
    height, width = image.shape[:2]
    x0, y0, x1, y1 = integer_box(ref.box, width, height)
    crop = image[y0:y1, x0:x1].copy()
    if masked:
        masks, _ = source.instance_masks(ref.image_index)
        mask = masks[ref.instance_index]
        if mask.shape != (height, width):  # annotation sizes disagree with the file: resize the mask, never crash
            mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
        crop[~mask[y0:y1, x0:x1]] = 0
    return crop


def fit_longer_side(crop: np.ndarray, side: int) -> np.ndarray:
    """Resize keeping the aspect ratio so that the longer side is ``side`` pixels (the other at least 1)."""
    h, w = crop.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
