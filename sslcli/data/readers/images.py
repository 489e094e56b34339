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


# EXIF orientations that swap width and height (OpenCV's decoder applies the orientation, as torchvision's may).
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
DCT_REDUCTIONS = (8, 4, 2)  # the JPEG decoder's DCT scaling: 1/8, 1/4, 1/2 of each side


@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes and its size read from the header, not decoded yet.

    Transforms that sample their crops before decoding (`sslcli.data.views.crops.CropViews`) use it to decode a JPEG at
    1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling) when every crop still gets at least its output size in pixels.
    ``height``/``width`` are those `load_image` returns (EXIF orientation applied); ``orientation`` is the EXIF tag
    (1 = none) for decoders that do not apply it.
    """

    path: Path
    data: bytes
    height: int
    width: int
    is_jpeg: bool
    orientation: int = 1

    @classmethod
    def read(cls, path: str | os.PathLike) -> EncodedImage:
        """Read the bytes and parse the header; CorruptImageError naming the path if either fails."""
        import io

        from PIL import Image, UnidentifiedImageError

        path = Path(path)
        if not path.is_file():
            raise CorruptImageError(path, "no such file")
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                is_jpeg = im.format == "JPEG"
                orientation = int(im.getexif().get(0x0112, 1))
                if orientation in _TRANSPOSED_ORIENTATIONS:
                    width, height = height, width
        except UnidentifiedImageError:  # its message names the in-memory buffer, not the file: the path says which
            raise CorruptImageError(path, "cannot read image header (not an image format PIL recognises)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptImageError(path, f"cannot read image header ({exc})") from None
        return cls(path, data, height, width, is_jpeg, orientation if 1 <= orientation <= 8 else 1)

    def reduced_size(self, reduction: int) -> tuple[int, int]:
        """(height, width) of a decode at 1/``reduction`` (libjpeg rounds up)."""
        return -(-self.height // reduction), -(-self.width // reduction)

    def decode(self, reduction: int = 1) -> np.ndarray:
        """(H, W, 3) uint8 RGB, at 1/``reduction`` of each side (1, or 2/4/8 for JPEGs) — `load_image` at 1."""
        flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}
        if reduction not in flags or (reduction > 1 and not self.is_jpeg):
            raise ValueError(f"{self.path}: reduction {reduction} (only JPEGs decode at 1/2, 1/4, 1/8)")
        image = cv2.imdecode(np.frombuffer(self.data, dtype=np.uint8), flags[reduction]) if self.data else None
        if image is None:
            raise CorruptImageError(self.path, "cannot decode image")
        expected = self.reduced_size(reduction)
        if image.shape[:2] != expected:
            raise CorruptImageError(self.path, f"decoded {image.shape[1]}x{image.shape[0]}, header says "
                                               f"{expected[1]}x{expected[0]}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
