"""Readers for every data layout sslcli accepts, behind one interface (`ImageSource`).

Layouts, detected by `open_source`:
- COCO: ``ROOT/annotations/instances_<split>.json`` + ``ROOT/<split>/`` (pycocotools).
- ImageFolder (ImageNet): ``ROOT/train/<class>/*.JPEG`` or ``ROOT/<class>/*.jpg``; labels from folder names.
- folder: any folder of images, searched recursively, unlabeled.
- manifest: a JSON file written by `prepare subset` (`write_manifest`), paths relative to its ``root``.
Corrupt images are reported with their path and skipped by `iter_images`, never crash a long job.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sslcli.data.readers.images import ImageRecord, is_image_file, load_image
from sslcli.errors import CorruptImageError, InputError
from sslcli.io import write_json_atomic

MANIFEST_FORMAT = "sslcli-manifest"
MANIFEST_VERSION = 1


@dataclass
class ImageSource:
    """An indexable list of images with optional image-level labels."""

    root: Path
    kind: str
    records: list[ImageRecord]
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ImageRecord:
        return self.records[index]

    def load(self, index: int) -> np.ndarray:
        return load_image(self.records[index].path)

    def sample(self, index: int) -> dict:
        """The sample dict every method's transform takes (`sslcli.methods.base`): image, index, image id."""
        return {"image": self.load(index), "index": index, "image_id": self.records[index].image_id}


@dataclass
class Instance:
    """One annotated object. ``box`` is (x0, y0, x1, y1) in pixels; ``label`` a contiguous class index."""

    box: tuple[float, float, float, float]
    category_id: int
    label: int
    iscrowd: bool
    area: float
    annotation_id: int


@dataclass
class CocoSource(ImageSource):
    """A COCO-layout split read with pycocotools; labels are contiguous indices over sorted category ids."""

    coco: object = None
    category_ids: list[int] = field(default_factory=list)
    annotation_file: Path | None = None  # named in errors about its entries

    def instances(self, index: int) -> list[Instance]:
        image_id = self.records[index].image_id
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id]))  # type: ignore[attr-defined]
        label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        out = []
        for ann in anns:
            x, y, w, h = ann["bbox"]
            out.append(Instance((x, y, x + w, y + h), ann["category_id"], label_of[ann["category_id"]],
                                bool(ann.get("iscrowd", 0)), float(ann.get("area", w * h)), ann["id"]))
        return out

    def instance_masks(self, index: int) -> tuple[np.ndarray, list[Instance]]:
        """(N, H, W) bool masks of the image's instances (polygons and RLE decoded by pycocotools)."""
        image_id = self.records[index].image_id
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id]))  # type: ignore[attr-defined]
        rec = self.records[index]
        for key in ("height", "width"):  # pycocotools draws masks on a canvas of the image record's size
            if anns and not isinstance(getattr(rec, key), int):
                raise InputError(f"{self.annotation_file}: image {image_id} ({rec.path.name}) has no integer "
                                 f"\"{key}\" (instance masks are drawn at the image size the record gives)")
        masks = np.zeros((len(anns), rec.height or 0, rec.width or 0), dtype=bool)
        for i, ann in enumerate(anns):
            if "segmentation" not in ann:
                raise InputError(f"annotation {ann['id']} of image {image_id}: no \"segmentation\" (instance masks "
                                 "need polygons or RLE)")
            masks[i] = self.coco.annToMask(ann).astype(bool)  # type: ignore[attr-defined]
        return masks, self.instances(index)


def _load_coco(root: Path, split: str) -> CocoSource:
    from pycocotools.coco import COCO

    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise InputError(f"{ann_file}: annotation file not found (COCO layout expects annotations/instances_{split}.json)")
    try:
        dataset = json.loads(ann_file.read_bytes())
    except json.JSONDecodeError as exc:
        raise InputError(f"{ann_file}: not valid JSON ({exc})") from None
    check_coco(dataset, ann_file)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on stdout
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    image_dir = root / split
    records = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        records.append(ImageRecord(image_id, image_dir / info["file_name"], None, info.get("width"), info.get("height")))
    category_ids = sorted(coco.cats)
    classes = [coco.cats[c]["name"] for c in category_ids]
    return CocoSource(root=root, kind="coco", records=records, classes=classes, coco=coco, category_ids=category_ids,
                      annotation_file=ann_file)


def check_coco(data: object, path: Path) -> None:
    """Check the fields sslcli reads from a COCO annotation file; InputError naming the file, entry and field.

    Done once at load so that a bad entry fails here with its index, not as a KeyError or TypeError deep inside a
    job (or, worse, as an empty data set that trains on nothing).
    """
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with \"images\", \"annotations\" and \"categories\", "
                         f"got a {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{path}: no \"{key}\" list (not a COCO annotation file)")
    categories = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise InputError(f"{path}: categories[{i}]: expected an object with an integer \"id\" and a \"name\"")
        categories.add(cat["id"])
    image_ids = set()
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict):
            raise InputError(f"{path}: images[{i}]: expected an object, got {image!r:.40}")
        for key, kind, expected in (("id", int, "an integer"), ("file_name", str, "a string")):
            if key not in image:
                raise InputError(f"{path}: images[{i}] has no \"{key}\"")
            if not isinstance(image[key], kind):
                raise InputError(f"{path}: images[{i}].{key}: expected {expected}, got {image[key]!r:.40}")
        image_ids.add(image["id"])
    for i, ann in enumerate(data.get("annotations") or []):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise InputError(f"{where}: expected an object, got {ann!r:.40}")
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise InputError(f"{where} has no \"{key}\"")
        if ann["image_id"] not in image_ids:
            raise InputError(f"{where}.image_id: {ann['image_id']!r:.40} is not the id of any image")
        if ann["category_id"] not in categories:
            raise InputError(f"{where}.category_id: {ann['category_id']!r:.40} is not the id of any category")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
                and bbox[2] >= 0 and bbox[3] >= 0):
            raise InputError(f"{where}.bbox: expected [x, y, width, height] with width, height ≥ 0, got {bbox!r:.40}")
        if "segmentation" in ann and not isinstance(ann["segmentation"], (list, dict)):
            raise InputError(f"{where}.segmentation: expected polygons (a list) or RLE (an object), got "
                             f"{json.dumps(ann['segmentation'])[:40]}")


def _load_image_folder(class_root: Path, root: Path) -> ImageSource:
    classes = sorted(d.name for d in class_root.iterdir() if d.is_dir())
    records = []
    for label, name in enumerate(classes):
        for path in sorted((class_root / name).rglob("*")):
            if is_image_file(path):
                records.append(ImageRecord(str(path.relative_to(class_root)), path, label))
    if not records:
        raise InputError(f"{class_root}: no images found in class folders")
    return ImageSource(root=root, kind="imagefolder", records=records, classes=classes)


def _load_folder(root: Path) -> ImageSource:
    records = [ImageRecord(str(p.relative_to(root)), p) for p in sorted(root.rglob("*")) if is_image_file(p)]
    if not records:
        raise InputError(f"{root}: no images found (looked for {', '.join(('.jpg', '.png', '...'))} recursively)")
    return ImageSource(root=root, kind="folder", records=records)


def write_manifest(path: str | os.PathLike, root: str | os.PathLike, paths: list[str], labels: list[int] | None = None,
                   classes: list[str] | None = None, extra: dict | None = None) -> None:
    """Write a manifest atomically: image paths relative to ``root`` and optional labels into ``classes``."""
    images = [{"path": p} if labels is None else {"path": p, "label": int(lab)} for p, lab in
              zip(paths, labels if labels is not None else [None] * len(paths), strict=False)]
    write_json_atomic(path, {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "root": str(root),
                             "classes": classes, "images": images, **(extra or {})})


def _load_manifest(path: Path) -> ImageSource:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path}: not an sslcli manifest (expected \"format\": \"{MANIFEST_FORMAT}\")")
    root = Path(data["root"])
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    records = []
    for i, item in enumerate(data.get("images", [])):
        if "path" not in item:
            raise InputError(f"{path}: images[{i}] has no \"path\"")
        records.append(ImageRecord(item["path"], root / item["path"], item.get("label")))
    return ImageSource(root=root, kind="manifest", records=records, classes=data.get("classes"))


def detect_format(root: Path, fmt: str = "auto") -> str:
    """The layout of ``root`` (cheap: looks at folder names only); InputError if ``root`` does not exist."""
    if not root.exists():
        raise InputError(f"{root}: no such file or directory")
    if fmt != "auto":
        return fmt
    if root.is_file():
        return "manifest"
    if (root / "annotations").is_dir():
        return "coco"
    if (root / "train").is_dir() and any(d.is_dir() for d in (root / "train").iterdir()):
        return "imagefolder"
    return "folder"


def check_data_root(root: str | os.PathLike, split: str = "train2017", fmt: str = "auto", field: str = "data.root"
                    ) -> None:
    """The checks of `open_source` that need no reading (for --dry-run): the root exists, a COCO split's annotation
    file is there. InputError naming ``field``."""
    root = Path(root)
    try:
        fmt = detect_format(root, fmt)
    except InputError:
        raise InputError(f"{field}: {root}: no such file or directory") from None
    ann_file = root / "annotations" / f"instances_{split}.json"
    if fmt == "coco" and not ann_file.is_file():
        raise InputError(f"{field}: {ann_file}: annotation file not found (COCO layout expects "
                         f"annotations/instances_{split}.json)")


def open_source(root: str | os.PathLike, split: str = "train2017", fmt: str = "auto") -> ImageSource:
    """Open a data set. ``fmt``: auto | coco | imagefolder | folder | manifest."""
    root = Path(root)
    fmt = detect_format(root, fmt)
    if fmt == "coco":
        return _load_coco(root, split)
    if fmt == "imagefolder":
        class_root = root / "train" if (root / "train").is_dir() else root
        return _load_image_folder(class_root, root)
    if fmt == "folder":
        return _load_folder(root)
    if fmt == "manifest":
        return _load_manifest(root)
    raise InputError(f"format {fmt!r}: expected one of auto, coco, imagefolder, folder, manifest")


def iter_images(source: ImageSource, indices=None, corrupt: list[str] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, image) pairs, skipping images that fail to decode; their messages are appended to ``corrupt``."""
    for i in range(len(source)) if indices is None else indices:
        try:
            yield i, source.load(i)
        except CorruptImageError as exc:
            if corrupt is not None:
                corrupt.append(str(exc))
