"""Data sets larger than one machine: ``prepare masks|boxes --shard I/N`` and ``prepare merge``.

Shard I of N computes the images [⌊I·n/N⌋, ⌊(I+1)·n/N⌋) of the source, in source order, into a *part*: a complete
region store of its own (resumable and crash-safe like any run), named ``<store>.shard-IIII-of-NNNN.h5`` beside the
store, with the attributes ``shard`` ("I/N"), ``shard_start`` and ``shard_stop``. Its ``input_hash`` covers its own
range; ``list_hash`` and ``n_inputs`` describe the whole list, so every part knows which data set it belongs to.

`merge_parts` checks that the parts come from one command (kind, method, parameters, image list, version, N) and
together cover every image exactly once, then writes the store one unsharded run would have written: the parts'
results in order through the same `write_store`, the attributes without the shard keys and the ``input_hash``
recomputed over all images' digests. Same results, same writer: the same file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sslcli.errors import InputError
from sslcli.io import check_output_writable

SHARD_KEYS = ("shard", "shard_start", "shard_stop")
# Attributes every part of one sharded run shares (the job and the whole input list).
SAME_IN_EVERY_PART = ("kind", "method", "parameters", "list_hash", "n_inputs", "source_kind", "sslcli_version",
                      "region_values_name", "format_version")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match or not 0 <= int(match[1]) < int(match[2]):
            raise InputError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4 (SLURM: "
                             "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def range(self, n: int) -> tuple[int, int]:
        """[start, stop) of this shard's images among ``n``: contiguous, sizes differing by at most one."""
        return self.index * n // self.count, (self.index + 1) * n // self.count

    def part_path(self, store: Path) -> Path:
        """``coco/sslcli/fh-s1000.h5`` → ``coco/sslcli/fh-s1000.shard-0003-of-0016.h5``."""
        return store.with_name(f"{store.stem}.shard-{self.index:04d}-of-{self.count:04d}{store.suffix}")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _read_part(path: Path) -> dict[str, Any]:
    import h5py

    from sslcli.data.stores.store import FORMAT

    if not path.is_file():
        raise InputError(f"{path}: part not found")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            has_digests = "input_digests" in f
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 region store ({exc})") from None
    if attrs.get("format") != FORMAT or not attrs.get("complete", False):
        raise InputError(f"{path}: not a complete sslcli region store (finish it by rerunning its prepare command)")
    if "shard" not in attrs or not has_digests:
        raise InputError(f"{path}: not a part of a sharded run (made without --shard I/N)")
    return attrs


def _describe(attrs: dict[str, Any]) -> str:
    return (f"{attrs.get('kind')} by {attrs.get('method')} with parameters {attrs.get('parameters')}, "
            f"{attrs.get('n_inputs')} images (list {str(attrs.get('list_hash'))[:12]}), "
            f"sslcli {attrs.get('sslcli_version')}, shard {attrs.get('shard')}")


def _check_parts(paths: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """The parts in shard order, after checking that they come from one command and cover every image once."""
    if not paths:
        raise InputError("prepare merge: no parts given")
    parts = [(p, _read_part(p)) for p in paths]
    first_path, first = parts[0]
    count = Shard.parse(first["shard"]).count
    for path, attrs in parts[1:]:
        differ = [k for k in SAME_IN_EVERY_PART if attrs.get(k) != first.get(k)]
        if differ or Shard.parse(attrs["shard"]).count != count:
            raise InputError(f"{path}: made with other parameters than {first_path} ({', '.join(differ) or 'N'} "
                             f"differ: {_describe(attrs)} vs {_describe(first)}); parts must come from one command")
    by_index: dict[int, Path] = {}
    for path, attrs in parts:
        index = Shard.parse(attrs["shard"]).index
        if index in by_index:
            raise InputError(f"{path}: shard {index}/{count} given twice (also {by_index[index]})")
        by_index[index] = path
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        raise InputError(f"prepare merge: shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing; "
                         f"got {len(by_index)} of {count} parts")
    parts.sort(key=lambda part: Shard.parse(part[1]["shard"]).index)
    n = int(first["n_inputs"])
    for path, attrs in parts:
        expected = Shard.parse(attrs["shard"]).range(n)
        if (int(attrs["shard_start"]), int(attrs["shard_stop"])) != expected:
            raise InputError(f"{path}: covers images {attrs['shard_start']}..{attrs['shard_stop']}, expected "
                             f"{expected[0]}..{expected[1]} for shard {attrs['shard']} of {n} images")
    return parts


def merge_parts(paths: list[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False) -> dict[str, Any]:
    """Join the parts of a sharded run into the store an unsharded run writes; returns the store's summary."""
    import h5py

    from sslcli.data.stores.store import RegionStore, read_encoded, write_store
    from sslcli.proposals.inputs import input_hash

    out = Path(out)
    parts = _check_parts([Path(p) for p in paths])
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    check_output_writable(out)
    files = [h5py.File(path, "r") for path, _ in parts]
    try:
        digests = np.concatenate([f["input_digests"][:] for f in files])
        for (path, attrs), f in zip(parts, files):
            own = f["input_digests"][:]
            if input_hash(attrs["list_hash"], own, (int(attrs["shard_start"]), int(attrs["shard_stop"]))) != \
                    attrs["input_hash"]:
                raise InputError(f"{path}: its input digests do not match its input_hash (a damaged part)")
        first = parts[0][1]
        if len(digests) != int(first["n_inputs"]):
            raise InputError(f"prepare merge: the parts hold {len(digests)} input digests for {first['n_inputs']} "
                             "images")
        kind = str(first["kind"])
        attrs = {k: v for k, v in first.items()
                 if k not in (*SHARD_KEYS, "format", "format_version", "kind", "n_images", "skipped", "complete")}
        attrs["input_hash"] = input_hash(first["list_hash"], digests)
        payload = "blobs" if kind == "masks" else "boxes"
        totals = {"images": sum(int(f.attrs["n_images"]) for f in files),
                  "payload": sum(len(f[payload]) for f in files),
                  "values": sum(len(f["region_values"]) for f in files)}
        results = (r for f in files for r in read_encoded(f, kind))
        write_store(out, kind, attrs, results, totals, digests)
    finally:
        for f in files:
            f.close()
    store = RegionStore(out)
    try:
        return {"store": str(out), "status": "merged", "parts": len(parts), "kind": store.kind,
                "method": store.method, "parameters": store.parameters, "images": len(store),
                "skipped": len(store.skipped), "skipped_images": store.skipped}
    finally:
        store.close()
