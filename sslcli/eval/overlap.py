"""Evaluation images that are also training images: found by file path or by content, refused unless allowed.

A probe whose test split repeats training images scores memorisation, not features (a random-init kNN probe scored
mAP 71.0 on a split that repeats train vs 14.4 on a disjoint one). Paths are compared resolved; contents by SHA-256,
hashing only the files whose byte size also occurs on the other side (sizes come from one ``stat`` each, so a large
training set costs no full read). Empty and undecodable files are no evidence of overlap (two empty files hold "the
same bytes" by accident, and every reader skips them): a match counts only when the evaluation image decodes.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path

from sslcli.console import current
from sslcli.data.readers.images import load_image
from sslcli.errors import CorruptImageError, InputError

ALLOW_HELP = ("Evaluate even when evaluation images are also training images (same file or same bytes); the scores "
              "are then inflated, and a warning says how many images overlap.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None  # a missing file is reported (and skipped) where it is read, not here


def _is_image(path: Path) -> bool:
    """Whether ``path`` decodes (called only for matched files, so a large data set is not decoded)."""
    try:
        load_image(path)
    except CorruptImageError:
        return False
    return True


def overlapping_images(train_paths: list[Path], test_paths: list[Path]) -> list[tuple[Path, Path]]:
    """(test image, training image) pairs that are the same file or hold the same bytes, empty and undecodable files
    left out."""
    train_resolved = {Path(p).resolve(): Path(p) for p in train_paths}
    pairs, rest = [], []
    for path in test_paths:
        if not _size(path):  # empty (or missing): skipped wherever it is read
            continue
        same = train_resolved.get(Path(path).resolve())
        if same is not None:
            pairs.append((Path(path), same))
        else:
            rest.append(Path(path))
    by_size: dict[int, list[Path]] = defaultdict(list)
    for path in train_resolved.values():
        size = _size(path)
        if size:
            by_size[size].append(path)
    hashes: dict[Path, str] = {}

    def sha(p: Path) -> str:
        if p not in hashes:
            hashes[p] = _sha256(p)
        return hashes[p]

    for path in rest:
        candidates = by_size.get(_size(path), []) if _size(path) is not None else []
        if candidates:
            digest = sha(path)
            match = next((c for c in candidates if sha(c) == digest), None)
            if match is not None:
                pairs.append((path, match))
    return [(test, train) for test, train in pairs if _is_image(test)]


def check_disjoint(train_paths: list[Path], test_paths: list[Path], allow: bool) -> int:
    """Refuse (exit 2) evaluation images that are training images; with ``allow``, warn and return their count."""
    pairs = overlapping_images(list(dict.fromkeys(train_paths)), list(dict.fromkeys(test_paths)))
    if not pairs:
        return 0
    test, train = pairs[0]
    what = "is a training image" if test.resolve() == train.resolve() else f"has the same bytes as {train}"
    message = (f"{len(pairs)} of the {len(set(test_paths))} evaluation images are also training images (e.g. {test} "
               f"{what}): the scores are inflated")
    if not allow:
        raise InputError(f"{message}; use disjoint splits, or pass --allow-overlap to evaluate anyway")
    current().warn(f"EVALUATION IMAGES OVERLAP TRAINING IMAGES: {message} (--allow-overlap)")
    return len(pairs)
