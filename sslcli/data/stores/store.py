"""The HDF5 region store: precomputed masks or boxes for every image of a data set, one file per data set and method.

Layout (flat arrays indexed by per-image offsets; no group per image, so millions of images stay fast):

- ``image_ids`` (N,) fixed-length UTF-8 bytes: ``str(image_id)`` of the source record, in source order.
- ``offsets`` (N+1,) int64: image i owns ``blobs[offsets[i]:offsets[i+1]]`` (masks) or ``boxes[...]`` (boxes).
- masks: ``shapes`` (N, 3) int32 = (S, H, W); ``dtypes`` (N,) uint8 code of the stored element type;
  ``blobs`` (B,) uint8: each image's (S, H, W) array as one zlib-compressed blob (label maps are stored in the
  narrowest of uint8/uint16/int32 that holds them: never wrapped past 255 segments).
- boxes: ``boxes`` (M, 4) float32 x0, y0, x1, y1 in pixels of the original image (chunked, gzip);
  ``image_sizes`` (N, 2) int32 = (H, W).
- ``region_counts`` (N, S) int32: regions per label map (segments; GT: visible instances; MCG: masks) or boxes,
  so a store can be summarised without decoding it.
- optional per-region values (GT: ``iscrowd``; MCG: ``score``): ``region_values`` (R,) float32 with
  ``region_offsets`` (N+1,) int64 and the attribute ``region_values_name``.

- ``input_digests`` (n_inputs, 32) uint8: sha256 of each input image file's bytes, in source order (skipped images
  included; an unreadable file has 32 zero bytes), so a store can be checked against the images it is used with.

Root attributes: ``format``, ``format_version``, ``kind`` ("masks"/"boxes"), ``method``, ``parameters`` (JSON),
``list_hash`` (ids and paths), ``input_hash`` (ids, paths and image bytes), ``n_inputs``, ``sslcli_version``,
``skipped`` (JSON list of images that could not be decoded) and ``complete``; a part written by ``--shard I/N``
adds ``shard``, ``shard_start`` and ``shard_stop``. A file is only ever created under a temporary name and renamed into place once ``complete`` is set
(see `write_store`); `RegionStore` refuses any file without ``complete=True``.

The writer is a pure function of its inputs: fixed chunk shapes, no timestamps (``track_times=False``), fixed HDF5
format versions and every chunk written exactly once in order, so the same results give a byte-identical file.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sslcli.errors import InputError
from sslcli.io import atomic_path

FORMAT = "sslcli-region-store"
FORMAT_VERSION = 1
# Element types a mask blob may hold, by code (the narrowest that fits the labels is chosen per image).
DTYPES = {0: np.dtype(np.uint8), 1: np.dtype(np.uint16), 2: np.dtype(np.int32)}
_CODE_OF = {dt: code for code, dt in DTYPES.items()}
BLOB_CHUNK = 1 << 20  # bytes per chunk of `blobs`
BOX_CHUNK = 16384  # rows per chunk of `boxes`
VALUE_CHUNK = 65536
LIBVER = ("v110", "v110")  # fixed HDF5 object formats: the bytes do not depend on the library's defaults


def narrowest_dtype(array: np.ndarray) -> np.dtype:
    """uint8, uint16 or int32: the narrowest type that holds every value of an integer ``array`` exactly."""
    if array.size == 0:
        return DTYPES[0]
    lo, hi = int(array.min()), int(array.max())
    if lo >= 0 and hi <= 255:
        return DTYPES[0]
    if lo >= 0 and hi <= 65535:
        return DTYPES[1]
    if lo < np.iinfo(np.int32).min or hi > np.iinfo(np.int32).max:
        raise ValueError(f"label values {lo}..{hi} do not fit in int32")
    return DTYPES[2]


@dataclass
class ImageResult:
    """What a proposal method produced for one image, ready to be stored.

    ``masks``: (S, H, W) integer array (label maps or binary masks); ``boxes``: (M, 4) float32 x0,y0,x1,y1;
    ``values``: optional per-region floats (M,) (``iscrowd`` of GT instances, ``score`` of MCG masks);
    ``region_counts``: regions per map when not simply the distinct labels of each map (GT, MCG);
    ``error``: set instead when the image could not be read (it is skipped and listed in the store).
    """

    image_id: str
    masks: np.ndarray | None = None
    boxes: np.ndarray | None = None
    image_size: tuple[int, int] = (0, 0)
    values: np.ndarray | None = None
    region_counts: list[int] | None = None
    error: str | None = None


@dataclass
class EncodedResult:
    """An `ImageResult` in its stored form (compressed in the worker so the writing process stays cheap)."""

    image_id: str
    payload: bytes = b""  # zlib blob (masks) or raw float32 rows (boxes)
    shape: tuple[int, int, int] = (0, 0, 0)  # masks: (S, H, W); boxes: (M, H, W) with H, W the image size
    dtype_code: int = 0
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    error: str | None = None
    counts: tuple[int, ...] = ()


def encode(result: ImageResult, kind: str, level: int = 6) -> EncodedResult:
    """Compress one image's regions for storage (masks: narrowest dtype + zlib; boxes: float32 rows)."""
    values = np.zeros(0, np.float32) if result.values is None else np.asarray(result.values, np.float32)
    if result.error is not None:
        return EncodedResult(result.image_id, error=result.error)
    if kind == "masks":
        masks = np.asarray(result.masks)
        if masks.ndim != 3:
            raise ValueError(f"masks of {result.image_id} must be (S, H, W), got {masks.shape}")
        dtype = narrowest_dtype(masks)
        blob = zlib.compress(np.ascontiguousarray(masks, dtype=dtype).tobytes(), level)
        counts = result.region_counts
        if counts is None:  # distinct labels per map (label maps are non-negative)
            counts = [int(np.count_nonzero(np.bincount(m.ravel()))) for m in masks.astype(np.int64)]
        return EncodedResult(result.image_id, blob, tuple(int(s) for s in masks.shape), _CODE_OF[dtype], values,
                             counts=tuple(int(c) for c in counts))
    boxes = np.ascontiguousarray(result.boxes, dtype=np.float32).reshape(-1, 4)
    h, w = result.image_size
    return EncodedResult(result.image_id, boxes.tobytes(), (len(boxes), int(h), int(w)), 0, values,
                         counts=(len(boxes),))


def decode_masks(blob: bytes, shape: tuple[int, ...], dtype_code: int) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype=DTYPES[dtype_code]).reshape(shape)


class _ChunkWriter:
    """Fill a pre-sized chunked dataset front to back, writing each chunk exactly once (keeps the bytes deterministic)."""

    def __init__(self, dataset, chunk_rows: int):
        self.dataset, self.chunk_rows = dataset, chunk_rows
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.written = 0

    def append(self, rows: np.ndarray) -> None:
        if len(rows):
            self.pending.append(rows)
            self.pending_rows += len(rows)
        if self.pending_rows >= self.chunk_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.pending_rows:
            return
        data = np.concatenate(self.pending)
        n = len(data) if final else (len(data) // self.chunk_rows) * self.chunk_rows
        self.dataset[self.written:self.written + n] = data[:n]
        self.written += n
        rest = data[n:]
        self.pending, self.pending_rows = ([rest], len(rest)) if len(rest) else ([], 0)

    def close(self) -> None:
        self._flush(final=True)
        if self.written != len(self.dataset):
            raise RuntimeError(f"{self.dataset.name}: wrote {self.written} rows, expected {len(self.dataset)}")


def _dataset(f, name: str, shape: tuple[int, ...], dtype, chunk_rows: int | None = None, compress: bool = False):
    kwargs: dict[str, Any] = {"track_times": False}
    if chunk_rows is not None and shape[0] > 0:
        kwargs["chunks"] = (min(chunk_rows, shape[0]), *shape[1:])
        if compress:
            kwargs.update(compression="gzip", compression_opts=4, shuffle=True)
    return f.create_dataset(name, shape=shape, dtype=dtype, **kwargs)


def write_store(path: str | os.PathLike, kind: str, attrs: dict[str, Any],
                results: Iterable[EncodedResult], totals: dict[str, int],
                input_digests: np.ndarray | None = None) -> dict[str, Any]:
    """Write a complete store atomically (temporary file, fsync, rename); return the final attributes.

    ``results`` are the images in source order (skipped ones carry ``error``); ``totals`` gives the sizes to allocate:
    ``images`` (stored ones), ``payload`` (blob bytes or box rows), ``values``. The ``complete`` attribute is set last,
    and the file only appears under ``path`` after it is closed and synced. ``input_digests``: (n_inputs, 32) uint8
    sha256 of every input image's bytes (see `sslcli.proposals.inputs`).
    """
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver=LIBVER, track_order=False) as f:
            index = _write_rows(f, kind, results, totals)
            _write_index(f, kind, index, input_digests)
            final = {**attrs, "format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
                     "n_images": totals["images"], "skipped": json.dumps(index.skipped)}
            for key in sorted(final):
                f.attrs[key] = final[key]
            f.attrs["complete"] = True  # last: a file without it is never trusted
    return final


@dataclass
class _RowIndex:
    """Where each stored image's rows are, gathered while they are written (n = the stored images)."""

    ids: list[bytes]
    offsets: np.ndarray  # (n + 1,) payload row offsets
    value_offsets: np.ndarray  # (n + 1,) region value offsets
    shapes: np.ndarray  # (n, 3)
    codes: np.ndarray  # (n,) dtype codes
    counts: list[tuple[int, ...]]  # regions per label map, per image
    skipped: list[dict[str, str]]

    @classmethod
    def allocate(cls, n: int) -> _RowIndex:
        return cls([], np.zeros(n + 1, np.int64), np.zeros(n + 1, np.int64), np.zeros((n, 3), np.int32),
                   np.zeros(n, np.uint8), [], [])


def _write_rows(f, kind: str, results: Iterable[EncodedResult], totals: dict[str, int]) -> _RowIndex:
    """Stream every stored image's payload rows and region values into ``f``; skipped images are only listed."""
    n = totals["images"]
    index = _RowIndex.allocate(n)
    if kind == "masks":
        payload = _ChunkWriter(_dataset(f, "blobs", (totals["payload"],), np.uint8, BLOB_CHUNK), BLOB_CHUNK)
    else:
        payload = _ChunkWriter(_dataset(f, "boxes", (totals["payload"], 4), np.float32, BOX_CHUNK, True), BOX_CHUNK)
    values = _ChunkWriter(_dataset(f, "region_values", (totals["values"],), np.float32, VALUE_CHUNK, True),
                          VALUE_CHUNK)
    i = 0
    for res in results:
        if res.error is not None:
            index.skipped.append({"image_id": res.image_id, "error": res.error})
            continue
        if i >= n:
            raise RuntimeError(f"more stored images than the {n} allocated")
        index.ids.append(res.image_id.encode("utf-8"))
        if kind == "masks":
            rows = np.frombuffer(res.payload, np.uint8)
        else:
            rows = np.frombuffer(res.payload, np.float32).reshape(-1, 4)
        payload.append(rows)
        values.append(res.values)
        index.offsets[i + 1] = index.offsets[i] + len(rows)
        index.value_offsets[i + 1] = index.value_offsets[i] + len(res.values)
        index.shapes[i], index.codes[i] = res.shape, res.dtype_code
        index.counts.append(res.counts)
        i += 1
    if i != n:
        raise RuntimeError(f"{i} stored images, expected {n}")
    payload.close()
    values.close()
    return index


def _write_index(f, kind: str, index: _RowIndex, input_digests: np.ndarray | None) -> None:
    """The per-image datasets: ids, offsets, region counts, shapes (masks) or sizes (boxes), input digests."""
    n = len(index.shapes)
    width = max((len(s) for s in index.ids), default=1)
    f.create_dataset("image_ids", data=np.array(index.ids, dtype=f"S{width}"), track_times=False)
    f.create_dataset("offsets", data=index.offsets, track_times=False)
    f.create_dataset("region_offsets", data=index.value_offsets, track_times=False)
    if len({len(c) for c in index.counts}) > 1:
        raise RuntimeError("images have different numbers of label maps")
    region_counts = np.array(index.counts, np.int32).reshape(n, -1) if n else np.zeros((0, 1), np.int32)
    f.create_dataset("region_counts", data=region_counts, track_times=False)
    if kind == "masks":
        f.create_dataset("shapes", data=index.shapes, track_times=False)
        f.create_dataset("dtypes", data=index.codes, track_times=False)
    else:
        f.create_dataset("image_sizes", data=index.shapes[:, 1:], track_times=False)
    if input_digests is not None:
        f.create_dataset("input_digests", data=np.asarray(input_digests, np.uint8).reshape(-1, 32),
                         track_times=False)


def read_encoded(f, kind: str) -> Iterator[EncodedResult]:
    """The stored images of an open store file ``f`` (h5py) back in their encoded form, in order; then its skipped
    images as error results. Feeding them to `write_store` rebuilds the same datasets (used to merge shard parts)."""
    offsets, value_offsets = f["offsets"][:], f["region_offsets"][:]
    counts = f["region_counts"][:]
    ids = [s.decode("utf-8") for s in f["image_ids"][:]]
    payload, values = f["blobs" if kind == "masks" else "boxes"], f["region_values"]
    sizes = f["shapes"][:] if kind == "masks" else f["image_sizes"][:]
    codes = f["dtypes"][:] if kind == "masks" else np.zeros(len(ids), np.uint8)
    for i, image_id in enumerate(ids):
        rows = payload[offsets[i]:offsets[i + 1]]
        shape = tuple(int(s) for s in sizes[i]) if kind == "masks" else (len(rows), *(int(s) for s in sizes[i]))
        yield EncodedResult(image_id, rows.tobytes(), shape, int(codes[i]),
                            values[value_offsets[i]:value_offsets[i + 1]], None, tuple(int(c) for c in counts[i]))
    for entry in json.loads(f.attrs["skipped"]):
        yield EncodedResult(entry["image_id"], error=entry["error"])


class RegionStore:
    """Read a region store. Opens lazily and re-opens after a fork, so it is safe to share with DataLoader workers.

    ``store.masks(id)`` → (S, H, W) int32 label maps (or (K, H, W) uint8 binary masks for MCG);
    ``store.label_map(id, k)`` → (H, W) int32; ``store.boxes(id)`` → (M, 4) float32 x0,y0,x1,y1 in pixels.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: region store not found")
        self._file = None
        self._pid: int | None = None
        self._index: dict[str, int] | None = None
        self._meta: dict[str, Any] | None = None
        self._ids: list[str] | None = None
        self._held: dict[str, np.ndarray] | None = None  # the region rows, once `hold_in_memory` read them

    # -- opening -------------------------------------------------------------------------------------------------
    def _h5(self):
        """The open h5py file of this process (h5py handles must not cross a fork)."""
        import h5py

        if self._file is None or self._pid != os.getpid():
            try:
                f = h5py.File(self.path, "r")
            except OSError as exc:
                raise InputError(f"{self.path}: not a readable HDF5 region store ({exc})") from None
            if f.attrs.get("format") != FORMAT:
                f.close()
                raise InputError(f"{self.path}: not an sslcli region store (format attribute is not {FORMAT!r})")
            if not bool(f.attrs.get("complete", False)):
                f.close()
                raise InputError(f"{self.path}: incomplete region store (an interrupted write); rerun the prepare "
                                 "command to finish it")
            self._file, self._pid = f, os.getpid()
        return self._file

    def _load_meta(self) -> dict[str, Any]:
        if self._meta is None:
            f = self._h5()
            meta = {"offsets": f["offsets"][:], "region_offsets": f["region_offsets"][:],
                    "kind": str(f.attrs["kind"]), "method": str(f.attrs["method"])}
            if f.attrs["kind"] == "masks":
                meta["shapes"], meta["dtypes"] = f["shapes"][:], f["dtypes"][:]
            else:
                meta["image_sizes"] = f["image_sizes"][:]
            self._meta = meta
        return self._meta

    # -- held in memory (data.cache) ------------------------------------------------------------------------------
    REGION_ROWS = ("blobs", "boxes")  # the datasets holding the regions themselves (compressed masks, boxes)

    def region_bytes(self) -> int:
        """Bytes `hold_in_memory` takes: the stored region rows as they are in the file (masks stay compressed)."""
        f = self._h5()
        return sum(int(f[name].nbytes) for name in self.REGION_ROWS if name in f)

    def hold_in_memory(self) -> None:
        """Read the region rows and the index into memory once, so later reads are array slices instead of HDF5
        reads (``data.cache``); DataLoader workers get them with the store."""
        f = self._h5()
        self._load_meta()
        self._id_list()
        self._held = {name: f[name][:] for name in self.REGION_ROWS if name in f}

    def _rows(self, name: str, start: int, stop: int) -> np.ndarray:
        if self._held is not None:
            return self._held[name][start:stop].copy()
        return self._h5()[name][start:stop]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self):  # pickled into DataLoader workers: never the handle
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state

    # -- metadata ------------------------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        out = {}
        for key, value in self._h5().attrs.items():
            if isinstance(value, np.generic):
                value = value.item()
            if key in ("parameters", "skipped") and isinstance(value, str):
                value = json.loads(value)
            out[key] = value
        return out

    @property
    def kind(self) -> str:
        return self._load_meta()["kind"]

    @property
    def method(self) -> str:
        return self._load_meta()["method"]

    @property
    def parameters(self) -> dict[str, Any]:
        return json.loads(self._h5().attrs["parameters"])

    @property
    def scales(self) -> list[int] | None:
        scales = self.parameters.get("scales")
        return None if scales is None else [int(s) for s in scales]

    @property
    def skipped(self) -> list[dict[str, str]]:
        return json.loads(self._h5().attrs["skipped"])

    @property
    def image_ids(self) -> list[str]:
        return list(self._id_list())

    def _id_list(self) -> list[str]:
        if self._ids is None:  # read once: plain data, valid in forked workers too
            self._ids = [s.decode("utf-8") for s in self._h5()["image_ids"][:]]
        return self._ids

    def __len__(self) -> int:
        return int(self._h5().attrs["n_images"])

    def index_of(self, image_id: int | str) -> int:
        """Position of ``image_id`` (the int or str id) in the store; KeyError if absent."""
        if self._index is None:
            self._index = {s: i for i, s in enumerate(self._id_list())}
        key = str(image_id)
        if key not in self._index:
            raise KeyError(f"image {key!r} is not in region store {self.path}")
        return self._index[key]

    def __contains__(self, image_id: int | str) -> bool:
        try:
            self.index_of(image_id)
        except KeyError:
            return False
        return True

    # -- regions -------------------------------------------------------------------------------------------------
    def image_size(self, image_id: int | str) -> tuple[int, int]:
        """(H, W) of the image the regions were computed on."""
        i, meta = self.index_of(image_id), self._load_meta()
        h, w = meta["shapes"][i, 1:] if "shapes" in meta else meta["image_sizes"][i]
        return int(h), int(w)

    def _require(self, kind: str) -> None:
        if self.kind != kind:
            raise InputError(f"{self.path}: a {self.kind} store has no {kind} (method {self.method})")

    def masks(self, image_id: int | str) -> np.ndarray:
        """(S, H, W) int32 label maps (FH: one per scale; grid; GT instance ids, 0 = background) or, for MCG,
        (K ≤ 16, H, W) uint8 binary masks sorted by decreasing score."""
        self._require("masks")
        i, meta = self.index_of(image_id), self._load_meta()
        with self._reading(image_id):
            blob = self._rows("blobs", meta["offsets"][i], meta["offsets"][i + 1]).tobytes()
            masks = decode_masks(blob, tuple(meta["shapes"][i]), int(meta["dtypes"][i]))
        return masks.astype(np.uint8) if self.method == "mcg" else masks.astype(np.int32)

    @contextmanager
    def _reading(self, image_id: int | str) -> Iterator[None]:
        """Bytes damaged inside the file (a bad disk, a partial copy) fail the read or the decompression: one line
        naming the store and the image, instead of zlib's or HDF5's message alone."""
        try:
            yield
        except (zlib.error, OSError, ValueError) as exc:
            raise InputError(f"{self.path}: the stored regions of image {image_id!r} are corrupt ({exc}); recompute "
                             "the store (delete it and rerun the prepare command)") from None

    def label_map(self, image_id: int | str, k: int = 0) -> np.ndarray:
        """One (H, W) int32 label map: label map k of the store, or for binary-mask stores (MCG) the masks
        flattened by score: each pixel takes 1 + the rank of the best-scoring mask covering it, 0 = none."""
        masks = self.masks(image_id)
        if self.method != "mcg":
            if not 0 <= k < len(masks):
                raise IndexError(f"label map {k} out of range: the store has {len(masks)} per image")
            return masks[k]
        out = np.zeros(masks.shape[1:], np.int32)
        for rank in range(len(masks) - 1, -1, -1):  # best mask painted last
            out[masks[rank].astype(bool)] = rank + 1
        return out

    def boxes(self, image_id: int | str) -> np.ndarray:
        """(M, 4) float32 boxes x0, y0, x1, y1 in pixels of the original image."""
        self._require("boxes")
        i, meta = self.index_of(image_id), self._load_meta()
        with self._reading(image_id):
            return self._rows("boxes", meta["offsets"][i], meta["offsets"][i + 1])

    def region_counts(self) -> np.ndarray:
        """(N, S) int32 regions per image and label map (boxes: S = 1), in ``image_ids`` order; no decoding."""
        return self._h5()["region_counts"][:]

    def input_digests(self) -> np.ndarray | None:
        """(n_inputs, 32) uint8 sha256 of every input image's bytes, in source order; None in older stores."""
        f = self._h5()
        return f["input_digests"][:] if "input_digests" in f else None

    def region_values(self, image_id: int | str) -> np.ndarray:
        """Per-region floats named by ``attrs['region_values_name']`` (GT: iscrowd per instance id; MCG: score)."""
        i, meta = self.index_of(image_id), self._load_meta()
        return self._h5()["region_values"][meta["region_offsets"][i]:meta["region_offsets"][i + 1]]

    def crowd(self, image_id: int | str) -> np.ndarray:
        """GT stores: bool (K,) where entry j flags instance id j+1 as a COCO crowd region."""
        if self._h5().attrs.get("region_values_name") != "iscrowd":
            raise InputError(f"{self.path}: only ground-truth stores flag crowd regions")
        return self.region_values(image_id) > 0.5

    def __iter__(self) -> Iterator[str]:
        return iter(self.image_ids)
