"""The image cache of ``data.cache: memory | device``: every training image decoded once at start, held as (3, H, W)
uint8 in host memory (``memory``) or on the training device (``device``).

The decoder is the ``gpu`` pipeline's own (`device_ops.decode_batch` on the training device: nvJPEG on CUDA, libjpeg on
a CPU device), so the cached pixels are the ones that pipeline decodes per batch, and the views equal the file path's.
The workers get only `CachedImage` stand-ins (position and size, no pixels): the device views draw their parameters
from them exactly as from an `EncodedImage`, and the engine puts the cached pixels into the batch
(`device_ops.IMAGES_KEY`) where `device_ops.decode_fields` would have decoded them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sslcli.console import current
from sslcli.data.readers.images import EncodedImage
from sslcli.data.stores.store import RegionStore
from sslcli.data.views.device_ops import CachedImage, decode_batch
from sslcli.errors import CorruptImageError, InputError

DECODE_CHUNK = 64  # images decoded per batched call while the cache is built


def decoded_bytes(images: Sequence[CachedImage]) -> int:
    """Bytes the decoded images take: H × W × 3 uint8 each (images that could not be read take none)."""
    return sum(3 * image.height * image.width for image in images if image.error is None)


class ImageCache:
    """``images[i]``: image i of the data set, (3, H, W) uint8 where it is held, or None where it could not be decoded
    (its ``entries[i].error`` says why; the engine's dataset replaces it by the next readable image, as on the file
    path). ``entries``: what the workers get (picklable, no pixels)."""

    def __init__(self, entries: list[CachedImage], images: list[torch.Tensor | None]):
        self.entries, self.images = entries, images

    @classmethod
    def build(cls, paths: Sequence[Path], where: str, device: torch.device, limit: int, limit_name: str,
              pin: bool = False) -> ImageCache:
        """Read every header, refuse a cache above ``limit`` bytes (``limit_name`` says which memory), then decode on
        ``device`` in batches and keep the pixels there (``where == "device"``) or in host memory (pinned if ``pin``)."""
        entries, encoded = _read_headers(paths)
        needed = decoded_bytes(entries)
        if needed > limit:
            raise InputError(f"data.cache: {where!r} needs {_size(needed)} for {len(paths)} decoded images "
                             f"(H×W×3 bytes each), above the {_size(limit)} {limit_name}; use data.cache: none"
                             f"{' or memory' if where == 'device' else ''}")
        images: list[torch.Tensor | None] = []
        for start in range(0, len(encoded), DECODE_CHUNK):
            for i, image in enumerate(_decode_chunk(encoded[start:start + DECODE_CHUNK], device)):
                if isinstance(image, str):  # why it cannot be decoded: kept, the image is skipped at training time
                    if entries[start + i].error is None:
                        entries[start + i] = CachedImage(start + i, Path(paths[start + i]), 0, 0, error=image)
                    images.append(None)
                else:
                    images.append(image if where == "device" else _host(image, pin))
        cache = cls(entries, images)
        current().info(f"data.cache: {sum(x is not None for x in images)} images decoded once, "
                       f"{_size(decoded_bytes(entries))} held on {device if where == 'device' else 'the host'}")
        return cache

    def lookup(self, positions: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        """The cached images at ``positions`` on ``device`` (no copy where they are held there)."""
        out = []
        for p in positions.tolist():
            image = self.images[p]
            if image is None:  # the dataset hands out no position of an image that is not cached
                raise RuntimeError(f"image cache: position {p} ({self.entries[p].path}) holds no image")
            out.append(image.to(device, non_blocking=True))
        return out


def _read_headers(paths: Sequence[Path]) -> tuple[list[CachedImage], list[EncodedImage | None]]:
    """Each file's entry (its size from the header, or why it cannot be read) and its bytes (None: unreadable)."""
    entries: list[CachedImage] = []
    encoded: list[EncodedImage | None] = []
    for position, path in enumerate(paths):
        try:
            image = EncodedImage.read(path)
        except CorruptImageError as exc:
            entries.append(CachedImage(position, Path(path), 0, 0, error=_reason(exc)))
            encoded.append(None)
            continue
        entries.append(CachedImage(position, Path(path), image.height, image.width))
        encoded.append(image)
    return entries, encoded


def hold_region_stores(stores: Sequence[RegionStore], where: str, limit: int,
                       limit_name: str = "of host memory available") -> None:
    """Read the region stores the views' worker side reads per sample (DetCon's masks, SoCo's and D3SSL's boxes)
    into host memory, refusing them above ``limit`` bytes of host memory: masks stay compressed as stored (a worker
    still decompresses a sample's label map; the images are what the cache decodes once)."""
    needed = sum(store.region_bytes() for store in stores)
    if needed > limit:
        raise InputError(f"data.cache: {where!r} holds the method's region stores in host memory: {_size(needed)} "
                         f"needed, above the {_size(limit)} {limit_name}; use data.cache: none")
    for store in stores:
        store.hold_in_memory()


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB ({n} bytes)"


def _reason(exc: CorruptImageError) -> str:
    """The message of ``exc`` without its leading path (CorruptImageError adds the path again when re-raised)."""
    return str(exc).removeprefix(f"{exc.path}: ")


def _host(image: torch.Tensor, pin: bool) -> torch.Tensor:
    image = image.cpu()
    return image.pin_memory() if pin else image


def _decode_chunk(chunk: list[EncodedImage | None], device: torch.device) -> list[torch.Tensor | str]:
    """Decode the readable images of ``chunk`` in one batched call; where that fails, one by one, so one bad image
    costs only itself. Each entry: the image, or the message of why it cannot be decoded."""
    readable = [image for image in chunk if image is not None]
    try:
        decoded = iter(_decode(readable, device))
        return [next(decoded) if image is not None else "unreadable" for image in chunk]
    except CorruptImageError:
        pass
    out: list[torch.Tensor | str] = []
    for image in chunk:
        try:
            out.append(_decode([image], device)[0] if image is not None else "unreadable")
        except CorruptImageError as exc:
            out.append(_reason(exc))
    return out


def _decode(images: list[EncodedImage], device: torch.device) -> list[torch.Tensor]:
    if not images:
        return []
    return decode_batch([torch.from_numpy(np.frombuffer(i.data, np.uint8).copy()) for i in images],
                        [i.is_jpeg for i in images], [i.orientation for i in images], [str(i.path) for i in images],
                        [(i.height, i.width) for i in images], device)
