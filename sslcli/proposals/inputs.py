"""What a region store was computed from: the ordered image list and the bytes of every image.

- ``list_hash``: sha256 of the ordered (image id, path relative to the root) lines. Cheap (no file is read); every
  shard of a ``--shard I/N`` run computes it for the whole list, so parts of different lists are never merged.
- per-image digests: sha256 of each image file's bytes (32 zero bytes for a file that cannot be read). Stored in the
  store (``input_digests``), so a store used with other images of the same names is detected (`stale_images`;
  `sslcli.data.stores.digests` holds the digests and the start-up check of `pretrain`).
- ``input_hash`` = sha256(list hash ‖ digests in source order): the store's identity of its inputs. A part of a
  sharded run hashes its own range into it too; `sslcli.proposals.merge` recomputes the unsharded value from the
  parts' digests, so a merged store carries exactly the hash of one unsharded run.

Hashing reads every image once before the work starts (a few threads; for COCO train2017, 18 GB, about a minute
from a local disk). A content hash rather than size + modification time: copies of a data set (to a cluster's
scratch disks, say) keep their bytes but rarely their times.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sslcli.data.readers.sources import ImageSource
from sslcli.data.stores.digests import UNREADABLE, content_digests, file_digest, unknown_images

__all__ = ["UNREADABLE", "content_digests", "file_digest", "input_hash", "list_hash", "stale_images"]


def list_hash(source: ImageSource) -> str:
    """sha256 of the ordered (image id, path relative to the root) list."""
    digest = hashlib.sha256()
    for rec in source.records:
        try:
            rel = Path(rec.path).relative_to(source.root)
        except ValueError:
            rel = Path(rec.path)
        digest.update(f"{rec.image_id}\t{rel.as_posix()}\n".encode())
    return digest.hexdigest()


def input_hash(list_hex: str, digests: np.ndarray, shard_range: tuple[int, int] | None = None) -> str:
    """sha256(list hash ‖ [shard range] ‖ digests): the inputs of a store (or of one part of a sharded run)."""
    digest = hashlib.sha256(bytes.fromhex(list_hex))
    if shard_range is not None:
        digest.update(f"shard {shard_range[0]}:{shard_range[1]}".encode())
    digest.update(np.ascontiguousarray(digests, np.uint8).tobytes())
    return digest.hexdigest()


def stale_images(stored_digests: np.ndarray | None, source: ImageSource, indices: Sequence[int]) -> int | None:
    """How many of ``source``'s images at ``indices`` are not, byte for byte, among the images a store was computed
    from (its ``input_digests``): a store used with other images of the same names. None when the store has no
    digests (made before they were recorded)."""
    if stored_digests is None:
        return None
    return len(unknown_images(stored_digests, source, indices))
