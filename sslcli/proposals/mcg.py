"""Import precomputed MCG proposals (MCG itself is MATLAB-only) and keep the 16 highest-scoring masks (DetCon).

Expected layout: one MATLAB ``.mat`` file per image in a folder, named after the image file's stem
(``000000000009.mat`` for ``train2017/000000000009.jpg``; a prefix ending in ``_`` is allowed, as in the public
release's ``COCO_train2014_000000000009.mat``), holding the fields of MCG's ``candidates`` struct:

- ``superpixels``: (H, W) integer superpixel map, ids starting at 1;
- ``labels``: cell array (K×1 or 1×K) of integer vectors, proposal k = the union of those superpixel ids;
- ``scores``: K scores, higher is better.

Both classic ``.mat`` (read with scipy.io) and v7.3 (HDF5, read with h5py; MATLAB stores arrays transposed there)
are accepted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sslcli.data.readers.sources import ImageSource
from sslcli.data.stores.store import ImageResult
from sslcli.errors import InputError

TOP_K = 16


def index_mcg_dir(folder: str | Path) -> dict[str, Path]:
    """Map image stems to ``.mat`` files: ``<stem>.mat`` and ``<prefix>_<stem>.mat`` both resolve to ``stem``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--mcg-dir {folder}: not a folder of MCG .mat files")
    index: dict[str, Path] = {}
    for path in sorted(folder.glob("*.mat")):
        index.setdefault(path.stem.rsplit("_", 1)[-1], path)
        index[path.stem] = path  # an exact name wins over a suffix match
    if not index:
        raise InputError(f"--mcg-dir {folder}: no .mat files found")
    return index


def _read_v73(path: Path) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        superpixels = f["superpixels"][()].T
        refs = f["labels"][()].ravel()
        labels = [np.asarray(f[ref][()]).ravel() for ref in refs]
        scores = np.asarray(f["scores"][()]).ravel()
    return superpixels, labels, scores


def read_mcg(path: str | Path) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(superpixels (H, W) int64, labels: list of K id vectors, scores (K,) float64) from one MCG ``.mat`` file."""
    import scipy.io

    path = Path(path)
    try:
        data = scipy.io.loadmat(path)
        superpixels, cells, scores = data["superpixels"], data["labels"], data["scores"]
        labels = [np.asarray(c).ravel() for c in cells.ravel()]
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        try:
            superpixels, labels, scores = _read_v73(path)
        except (OSError, KeyError) as exc:
            raise InputError(f"{path}: not a readable MCG file ({exc}); expected superpixels, labels, scores") from None
    except KeyError as exc:
        raise InputError(f"{path}: MCG file lacks the field {exc}; expected superpixels, labels, scores") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable .mat file ({exc})") from None
    scores = np.asarray(scores, np.float64).ravel()
    if len(scores) != len(labels):
        raise InputError(f"{path}: {len(labels)} proposals in labels but {len(scores)} scores")
    return np.asarray(superpixels).astype(np.int64), [lab.astype(np.int64) for lab in labels], scores


def top_masks(superpixels: np.ndarray, labels: list[np.ndarray], scores: np.ndarray,
              k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """The k best proposals as (k, H, W) uint8 binary masks, by decreasing score (ties: file order), and their scores."""
    order = np.argsort(-scores, kind="stable")[:k]
    masks = np.stack([np.isin(superpixels, labels[j]) for j in order]) if len(order) else \
        np.zeros((0, *superpixels.shape), bool)
    return masks.astype(np.uint8), scores[order].astype(np.float32)


def compute_mcg(source: ImageSource, index: int, mcg_index: dict[str, Path], k: int = TOP_K) -> ImageResult:
    rec = source.records[index]
    path = mcg_index.get(Path(rec.path).stem)
    if path is None:
        raise InputError(f"no MCG file for image {rec.path.name} (expected <mcg-dir>/{Path(rec.path).stem}.mat)")
    image = source.load(index)
    superpixels, labels, scores = read_mcg(path)
    if superpixels.shape != image.shape[:2]:
        raise InputError(f"{path}: superpixels are {superpixels.shape[1]}x{superpixels.shape[0]} but image "
                         f"{rec.path.name} is {image.shape[1]}x{image.shape[0]}")
    masks, top_scores = top_masks(superpixels, labels, scores, k)
    return ImageResult(str(rec.image_id), masks=masks, image_size=image.shape[:2], values=top_scores,
                       region_counts=[len(masks)])
