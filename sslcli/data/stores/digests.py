"""Image contents as sha256 digests, and the check that a region store was computed from the images it is used with.

A region store records the digest of every image it was computed from (``input_digests``, written by
`sslcli.proposals.runner`). A store used with other images of the same ids and sizes (a mirrored or re-encoded copy, a
newer version of the data set) would hand out regions that do not belong to them; `require_store_matches` refuses it.
The rule is a full content check: every training image is hashed once at start-up (a few threads; COCO train2017,
18 GB, about a minute from a local disk), because a size + modification-time rule misses a mirrored image of the same
size and a sample misses a single replaced one.

Once per run, not once per rank: a launcher that checked a store before spawning its ranks records the check in the
environment (`CHECKED_ENV`) that the ranks inherit, keyed by a fingerprint of the store file and of every training
image as the file system describes them (path, size, modification time). A rank whose fingerprint is recorded skips
the hashing; an image or store replaced since the check changes the fingerprint, and the check runs again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sslcli.console import current
from sslcli.data.readers.sources import ImageSource, open_source
from sslcli.errors import InputError

UNREADABLE = bytes(32)
CHECKED_ENV = "SSLCLI_CHECKED_STORES"  # fingerprints of the checks this process (or its launcher) passed


def file_digest(path: str | os.PathLike) -> bytes:
    """sha256 of a file's bytes; 32 zero bytes when it cannot be read (the image is then skipped as corrupt)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return UNREADABLE
    return digest.digest()


def content_digests(source: ImageSource, indices: Sequence[int], threads: int = 8) -> np.ndarray:
    """(len(indices), 32) uint8: `file_digest` of each image (threads overlap the reads; hashlib drops the GIL)."""
    paths = [source.records[i].path for i in indices]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        digests = list(pool.map(file_digest, paths, chunksize=64))
    return np.frombuffer(b"".join(digests), np.uint8).reshape(len(paths), 32)


def unknown_images(stored_digests: np.ndarray, source: ImageSource, indices: Sequence[int]) -> list[int]:
    """The indices among ``indices`` whose image is not, byte for byte, among the images of ``stored_digests``."""
    known = {bytes(row) for row in stored_digests}
    digests = content_digests(source, indices)
    return [i for i, row in zip(indices, digests) if bytes(row) not in known]


def require_store_matches(store, data, field: str) -> None:
    """Refuse (exit 2) a region store when any training image (``data``: a run spec's data section, with ``root``,
    ``split`` and ``format``) is not one it was computed from; ``field`` names the spec field that chose the store.
    A store made before digests were recorded cannot be checked: a warning says so."""
    stored = store.input_digests()
    if stored is None:
        current().warn(f"{field}: {store.path} records no image digests (made by an older sslcli), so whether it was "
                       f"computed from the images of {data.root} cannot be checked; recompute it to have it checked")
        return
    source = open_source(data.root, data.split, data.format)
    fingerprint = check_fingerprint(store.path, source)
    if fingerprint in os.environ.get(CHECKED_ENV, "").split(","):
        return  # checked by this process or the launcher that spawned it, on these very files
    unknown = unknown_images(stored, source, range(len(source)))
    if unknown:
        raise InputError(f"{field}: {store.path} was computed from other images: {len(unknown)} of the {len(source)} "
                         f"training images differ in content from those it holds regions for (e.g. "
                         f"{source.records[unknown[0]].path}); recompute it with `sslcli prepare` on this data set")
    os.environ[CHECKED_ENV] = ",".join(filter(None, [os.environ.get(CHECKED_ENV), fingerprint]))


def check_fingerprint(store_path: str | os.PathLike, source: ImageSource) -> str:
    """sha256 over the store file and every training image as ``os.stat`` describes them (absolute path, size,
    modification time in ns); a file that cannot be stat'ed counts as missing. Cheap next to hashing the contents."""
    digest = hashlib.sha256()
    for path in [store_path, *(record.path for record in source.records)]:
        try:
            stat = os.stat(path)
            described = f"{stat.st_size}|{stat.st_mtime_ns}"
        except OSError:
            described = "missing"
        digest.update(f"{os.path.abspath(path)}|{described}\n".encode())
    return digest.hexdigest()
