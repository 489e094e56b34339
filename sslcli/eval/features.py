"""Frozen-feature extraction for the probes: batched, on GPU when available, cached to HDF5.

Two kinds of rows (see `sslcli.eval.labels.LabeledSet`):
- image rows: Resize (shorter side ``image_size``) + CenterCrop ``image_size`` (METHODS.md §7, Ericsson et al.),
  res5 global-average-pooled;
- object rows: the whole image resized to ``image_size × image_size`` (so every box maps by two scale factors),
  RoIAlign 7×7 of its box on res5, average-pooled (the O-KNN recipe of METHODS.md §6).

The cache file is keyed by the checkpoint file's SHA-256, the rows (image paths, file sizes, boxes) and the
preprocessing, so a rerun with the same inputs reads the file instead of running the network; it is written
atomically, so an interrupted run never leaves a file that reads as complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from sslcli.console import current, progress
from sslcli.data.readers.sources import ImageSource
from sslcli.errors import CorruptImageError, InputError
from sslcli.eval.labels import LabeledSet
from sslcli.eval.roi import pooled_roi_features, stage_strides, to_input
from sslcli.io import atomic_path

CACHE_VERSION = 2  # 2: center-crop resizes the shorter side to image_size (was image_size·256/224)
PREPROCESS_MODES = ("center-crop", "square")


@dataclass(frozen=True)
class Preprocess:
    """``center-crop``: shorter side to image_size, centre crop image_size² (METHODS.md §7: Resize 224 + CenterCrop).
    ``square``: the whole image resized to image_size² (aspect not kept; boxes scale with it)."""

    image_size: int = 224
    mode: str = "center-crop"

    def __post_init__(self):
        if self.mode not in PREPROCESS_MODES:
            raise InputError(f"preprocessing {self.mode!r}: expected one of {', '.join(PREPROCESS_MODES)}")
        if self.image_size < 32:
            raise InputError(f"--image-size {self.image_size}: expected at least 32 pixels")

    def apply(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """(image_size, image_size, 3) uint8 and the (x, y) scale from original pixels to the output's pixels
        (meaningful for ``square``; boxes are never used with ``center-crop``)."""
        h, w = image.shape[:2]
        size = self.image_size
        if self.mode == "square":
            out = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR)
            return out, (size / w, size / h)
        short = size  # torchvision Resize(size) + CenterCrop(size), as the linear-probe protocol prescribes
        scale = short / min(h, w)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        return resized[top:top + size, left:left + size], (scale, scale)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return device


class _ImageDataset(torch.utils.data.Dataset):
    """Decodes and preprocesses images in DataLoader workers; a corrupt image yields None (skipped, reported)."""

    def __init__(self, source: ImageSource, indices: list[int], pre: Preprocess):
        self.source, self.indices, self.pre = source, indices, pre

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        try:
            image, scale = self.pre.apply(self.source.load(self.indices[j]))
        except CorruptImageError as exc:
            return j, None, None, str(exc)
        return j, image, scale, None


def iter_image_batches(source: ImageSource, indices: list[int], pre: Preprocess, batch_size: int = 64,
                       workers: int = 0, description: str = "features") -> Iterator[list[tuple]]:
    """Batches of (position in ``indices``, uint8 image, (sx, sy)); corrupt images are warned about and left out."""
    loader = torch.utils.data.DataLoader(_ImageDataset(source, indices, pre), batch_size=batch_size,
                                         num_workers=workers, collate_fn=list)
    for batch in progress(loader, total=len(loader), description=description):
        good = []
        for j, image, scale, error in batch:
            if error is not None:
                current().warn(f"skipping corrupt image {error}")
            else:
                good.append((j, image, scale))
        if good:
            yield good


@torch.no_grad()
def _extract(backbone: nn.Module, rows: LabeledSet, pre: Preprocess, batch_size: int, device: torch.device,
             workers: int) -> tuple[np.ndarray, np.ndarray]:
    backbone.eval().to(device)
    images = sorted(set(rows.image_index.tolist()))
    rows_of: dict[int, list[int]] = {}
    for r, i in enumerate(rows.image_index.tolist()):
        rows_of.setdefault(i, []).append(r)
    features = np.zeros((len(rows), backbone.out_channels), dtype=np.float32)
    ok = np.zeros(len(rows), dtype=bool)
    stride = stage_strides(backbone)["res5"]
    for batch in iter_image_batches(rows.source, images, pre, batch_size, workers):
        fmap = backbone.forward_map(to_input([image for _, image, _ in batch], device))  # (B, C, h, w)
        if rows.boxes is None:
            pooled = fmap.mean(dim=(2, 3)).float().cpu().numpy()
            for b, (j, _, _) in enumerate(batch):
                for r in rows_of[images[j]]:
                    features[r], ok[r] = pooled[b], True
        else:
            picked = [rows_of[images[j]] for j, _, _ in batch]
            boxes = [torch.as_tensor(rows.boxes[rs] * np.array([sx, sy, sx, sy], dtype=np.float32))
                     for rs, (_, _, (sx, sy)) in zip(picked, batch)]
            pooled = pooled_roi_features(fmap, boxes, stride).float().cpu().numpy()
            flat = [r for rs in picked for r in rs]
            features[flat], ok[flat] = pooled, True
    return features, ok


def rows_digest(rows: LabeledSet) -> str:
    """SHA-256 of what the rows are: image paths and sizes (a replaced file changes its size), boxes."""
    digest = hashlib.sha256()
    for i in rows.image_index.tolist():
        path = Path(rows.source.records[i].path)
        size = path.stat().st_size if path.is_file() else -1
        digest.update(f"{path}\0{size}\n".encode())
    if rows.boxes is not None:
        digest.update(np.ascontiguousarray(rows.boxes, dtype=np.float32).tobytes())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("SSLCLI_CACHE", Path.home() / ".cache" / "sslcli" / "features"))


def announce_cache(cache_dir: str | os.PathLike) -> None:
    """Say once per command where cached features go: the default is outside the working folder and grows."""
    current().info_once(f"feature cache: {cache_dir} (move it with --cache DIR or $SSLCLI_CACHE; --no-cache skips it)")


def cache_path(cache_dir: str | os.PathLike, checkpoint_sha256: str, rows: LabeledSet, pre: Preprocess,
               extra: dict | None = None) -> Path:
    """The cache file for these inputs; ``extra`` holds any other setting the cached arrays depend on."""
    key = json.dumps({"v": CACHE_VERSION, "checkpoint": checkpoint_sha256, "rows": rows_digest(rows),
                      "level": rows.level, "pre": asdict(pre), "extra": extra or {}}, sort_keys=True)
    return Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.h5"


def read_arrays(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The named datasets of an HDF5 cache file, or None (with a warning) when it cannot be read."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            return {name: fh[name][...] for name in names}
    except (OSError, KeyError):
        current().warn(f"ignoring unreadable cache file {path}")
        return None


def write_arrays(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """Write datasets and attributes to ``path`` atomically (a killed run leaves no file that reads as complete)."""
    import h5py

    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as fh:
            for name, array in arrays.items():
                fh.create_dataset(name, data=array)
            for key, value in attrs.items():
                fh.attrs[key] = value


def require_finite(features: np.ndarray, ok: np.ndarray, checkpoint: str | os.PathLike) -> None:
    """Refuse (exit 2) the features of a checkpoint whose weights diverged: NaN or inf in a decoded image's row would
    otherwise fail deep inside a classifier (or silently rank neighbours by NaN)."""
    bad = ~np.isfinite(features[ok]).all(axis=1)
    if bad.any():
        raise InputError(f"{checkpoint}: the features of {int(bad.sum())} of {int(ok.sum())} images are not finite "
                         "(NaN or inf): the checkpoint's weights diverged; evaluate an earlier checkpoint")


def extract_features(backbone: nn.Module, rows: LabeledSet, pre: Preprocess, *, checkpoint_sha256: str | None = None,
                     cache_dir: str | os.PathLike | None = None, batch_size: int = 64, device: str = "auto",
                     workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, C) float32, ok (N,) bool) for every row; ``ok`` is False where the image could not be decoded.

    With ``cache_dir`` and ``checkpoint_sha256`` the result is read from / written to an HDF5 file keyed by both.
    """
    path = cache_path(cache_dir, checkpoint_sha256, rows, pre) if cache_dir and checkpoint_sha256 else None
    if path is not None:
        announce_cache(cache_dir)
    if path is not None and path.is_file():
        cached = read_arrays(path, ("features", "ok"))
        if cached is not None and len(cached["features"]) == len(rows):
            current().info(f"features: reusing {path}")
            return cached["features"], cached["ok"].astype(bool)
    features, ok = _extract(backbone, rows, pre, batch_size, resolve_device(device), workers)
    if path is not None:
        write_arrays(path, {"features": features, "ok": ok}, {"checkpoint_sha256": checkpoint_sha256, "level": rows.level,
                                          "preprocess": json.dumps(asdict(pre)), "data_root": str(rows.source.root),
                                          "cache_version": CACHE_VERSION})
    return features, ok


def skipped_images(source: ImageSource, indices: list[int]) -> list[dict[str, str]]:
    """``{"path", "reason"}`` of each image among ``indices`` that gave no features (a result's ``skipped_images``).
    Each is read again (they are few), so the reason is the reader's own also when the features came from the
    cache."""
    skipped = []
    for i in sorted(set(indices)):
        try:
            source.load(i)
            reason = "could not be decoded when its features were extracted (it reads now: replaced since?)"
        except CorruptImageError as exc:
            reason = str(exc)
        skipped.append({"path": str(source.records[i].path), "reason": reason})
    return skipped
