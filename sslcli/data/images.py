"""Decoding images, one place for every reader."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sslcli.errors import CorruptImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Decoding runs inside DataLoader workers and process pools: one OpenCV thread each avoids oversubscription.
cv2.setNumThreads(1)


@dataclass(frozen=True)
class ImageRecord:
    """One image of a data set. ``label`` is an image-level class index where the layout defines one."""

    image_id: int | str
    path: Path
    label: int | None = None
    width: int | None = None
    height: int | None = None


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as an (H, W, 3) uint8 RGB array; raise CorruptImageError naming the path if it cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise CorruptImageError(path, "no such file")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise CorruptImageError(path, "cannot decode image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
