"""Quality of region proposals against ground truth: pure functions, plus the store report shared by
`sslcli prepare inspect` and `sslcli analyze abo` (one implementation, two entry points).

- Mask ABO (average best overlap, DetCon Fig. 7): for every ground-truth instance mask, the best IoU over the
  proposal masks of its image; averaged over all instances of all images (not per image first).
- Box recall@0.5: the fraction of ground-truth boxes whose best IoU with a proposal box is ≥ 0.5; box ABO: the mean
  of those best IoUs.
Ground truth: COCO instances that are not crowd regions and have a non-empty mask (masks) or positive area (boxes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

RECALL_IOU = 0.5


# -- pure functions ----------------------------------------------------------------------------------------------
def label_map_best_overlaps(gt_masks: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """Best IoU of each GT mask over the segments of a label map.

    gt_masks: (N, H, W) bool; label_map: (H, W) non-negative ints, every label value one segment → (N,) float64.
    """
    labels = np.unique(label_map, return_inverse=True)[1].reshape(label_map.shape)
    n_segments = int(labels.max()) + 1 if labels.size else 0
    seg_area = np.bincount(labels.ravel(), minlength=n_segments)
    best = np.zeros(len(gt_masks))
    for i, mask in enumerate(gt_masks):
        inter = np.bincount(labels[mask], minlength=n_segments)
        union = seg_area + mask.sum() - inter
        best[i] = (inter / np.maximum(union, 1)).max() if n_segments else 0.0
    return best


def masks_best_overlaps(gt_masks: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Best IoU of each GT mask over (possibly overlapping) binary proposal masks.

    gt_masks: (N, H, W) bool; masks: (K, H, W) bool → (N,) float64 (0 when K = 0).
    """
    if len(masks) == 0:
        return np.zeros(len(gt_masks))
    g = gt_masks.reshape(len(gt_masks), -1).astype(np.float64)
    m = masks.reshape(len(masks), -1).astype(np.float64)
    inter = g @ m.T
    union = g.sum(1)[:, None] + m.sum(1)[None, :] - inter
    return (inter / np.maximum(union, 1)).max(1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) × (M, 4) x0,y0,x1,y1 boxes → (N, M) IoU."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def boxes_best_overlaps(gt_boxes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Best IoU of each GT box over the proposal boxes: (N,) float64 (0 when there are no proposals)."""
    if len(boxes) == 0:
        return np.zeros(len(gt_boxes))
    return box_iou(gt_boxes, boxes).max(1)


def summarize_overlaps(best: np.ndarray) -> dict[str, float | int]:
    """ABO and recall@0.5 of pooled best overlaps (N,)."""
    best = np.asarray(best, np.float64)
    if best.size == 0:
        return {"instances": 0, "abo": float("nan"), "recall@0.5": float("nan")}
    return {"instances": int(best.size), "abo": float(best.mean()), "recall@0.5": float((best >= RECALL_IOU).mean())}


# -- store report ------------------------------------------------------------------------------------------------
def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "min": 0, "max": 0}
    return {"mean": float(np.mean(values)), "min": int(np.min(values)), "max": int(np.max(values))}


def store_report(store_path: str | Path, gt_root: str | Path | None = None, split: str = "train2017",
                 limit: int | None = None) -> dict[str, Any]:
    """Summary of a region store and, given a COCO root, its quality against the GT instances.

    Masks: ABO and recall@0.5 per label map (dicts keyed by FH scale; one figure for one map or MCG's mask set).
    Boxes: recall@0.5 and ABO. The figures are top-level keys: gt, split, images_with_gt (images with at least one
    instance counted), images_without_gt (in the annotation file, but no instance counted), instances, abo,
    recall@0.5, and stale_images: how many evaluated images differ in content from those the store was computed from
    (a warning is printed; None for stores without input digests). ``limit`` evaluates the first ``limit`` stored
    images only.
    """
    from sslcli.console import current
    from sslcli.data.stores.store import RegionStore
    from sslcli.proposals.inputs import stale_images

    store = RegionStore(store_path)
    ids = store.image_ids[:limit] if limit is not None else store.image_ids
    report = _store_summary(store, store_path, ids)
    if gt_root is None:
        return report
    source, index_of, matched = _matched_ground_truth(gt_root, split, ids)
    stale = stale_images(store.input_digests(), source, [index_of[image_id] for image_id in matched])
    if stale:
        current().warn(f"{store_path}: {stale} of the {len(matched)} evaluated images in {gt_root} differ from the "
                       "images the store was computed from (content hash): its figures are not this data set's; "
                       "rebuild the store with prepare masks|boxes")
    best, with_gt = _best_overlaps(store, store_path, source, index_of, matched)
    pooled = [summarize_overlaps(np.concatenate(b) if b else np.zeros(0)) for b in best]
    report.update({"gt": str(gt_root), "split": split, "images_with_gt": with_gt,
                   "images_without_gt": len(matched) - with_gt, "instances": pooled[0]["instances"],
                   "stale_images": stale})
    if len(pooled) == 1:
        report.update({"abo": pooled[0]["abo"], "recall@0.5": pooled[0]["recall@0.5"]})
    else:  # one figure per label map, keyed by FH scale (or map index)
        keys = [str(s) for s in store.scales] if store.scales and len(store.scales) == len(pooled) else \
            [str(k) for k in range(len(pooled))]
        report["abo"] = {k: q["abo"] for k, q in zip(keys, pooled)}
        report["recall@0.5"] = {k: q["recall@0.5"] for k, q in zip(keys, pooled)}
    return report


def _store_summary(store, store_path: str | Path, ids: list[str]) -> dict[str, Any]:
    """What the store holds, from its attributes and recorded region counts (no decoding)."""
    attrs = store.attrs
    counts = store.region_counts()[:len(ids)]  # recorded at write time: no decoding
    per_map = [_stats(counts[:, k].tolist()) for k in range(counts.shape[1])]
    return {
        "store": str(store_path), "kind": store.kind, "method": store.method, "parameters": store.parameters,
        "images": len(store), "images_summarized": len(ids), "skipped": len(store.skipped),
        "skipped_images": store.skipped,
        "regions_per_image": per_map[0] if len(per_map) == 1 else {"per_map": per_map},
        "sslcli_version": attrs.get("sslcli_version"), "input_hash": attrs.get("input_hash"),
    }


def _matched_ground_truth(gt_root: str | Path, split: str, ids: list[str]):
    """The COCO source of ``gt_root``, its record index by image id, and the stored ids it annotates."""
    from sslcli.data.readers.sources import CocoSource, open_source
    from sslcli.errors import InputError

    source = open_source(gt_root, split)
    if not isinstance(source, CocoSource):
        raise InputError(f"--gt {gt_root}: ground truth needs a COCO root (annotations/instances_{split}.json)")
    index_of = {str(rec.image_id): i for i, rec in enumerate(source.records)}
    matched = [image_id for image_id in ids if image_id in index_of]
    if not matched:
        raise InputError(f"--gt {gt_root}: none of the store's image ids are in instances_{split}.json "
                         "(wrong --split or data set?)")
    return source, index_of, matched


def _best_overlaps(store, store_path: str | Path, source, index_of: dict[str, int],
                   matched: list[str]) -> tuple[list[list[np.ndarray]], int]:
    """Per label map, each image's best overlap of every (non-crowd) GT instance; and how many images have one."""
    from sslcli.console import progress
    from sslcli.errors import InputError

    best: list[list[np.ndarray]] = [[] for _ in range(store.region_counts().shape[1])]
    with_gt = 0
    for image_id in progress(matched, description="measuring overlap with ground truth"):
        i = index_of[image_id]
        if store.kind == "boxes":
            gt = np.array([inst.box for inst in source.instances(i)
                           if not inst.iscrowd and inst.box[2] > inst.box[0] and inst.box[3] > inst.box[1]],
                          np.float64).reshape(-1, 4)
            best[0].append(boxes_best_overlaps(gt, store.boxes(image_id)))
            with_gt += len(gt) > 0
            continue
        gt_masks, instances = source.instance_masks(i)
        keep = np.array([not inst.iscrowd for inst in instances], bool) & gt_masks.any(axis=(1, 2))
        gt_masks = gt_masks[keep]
        with_gt += len(gt_masks) > 0
        masks = store.masks(image_id)
        if gt_masks.shape[1:] != masks.shape[1:]:
            raise InputError(f"{store_path}: image {image_id} regions are {masks.shape[2]}x{masks.shape[1]} "
                             f"but its annotations are {gt_masks.shape[2]}x{gt_masks.shape[1]}")
        if store.method == "mcg":
            best[0].append(masks_best_overlaps(gt_masks, masks.astype(bool)))
        else:
            for k, label_map in enumerate(masks):
                best[k].append(label_map_best_overlaps(gt_masks, label_map))
    return best, with_gt


def render_regions(store_path: str | Path, root: str | Path, out_dir: str | Path, count: int = 4,
                   split: str = "train2017") -> list[str]:
    """Draw the regions of the first ``count`` stored images onto the images, as PNGs in ``out_dir``.

    Masks: segment boundaries of the first label map; boxes: rectangles. Returns the written paths.
    """
    import cv2
    from skimage.segmentation import find_boundaries

    from sslcli.data.readers.sources import open_source
    from sslcli.data.stores.store import RegionStore
    from sslcli.errors import InputError
    from sslcli.io import atomic_path

    store = RegionStore(store_path)
    source = open_source(root, split)
    index_of = {str(rec.image_id): i for i, rec in enumerate(source.records)}
    written = []
    for image_id in [i for i in store.image_ids if i in index_of][:count]:
        image = source.load(index_of[image_id])[:, :, ::-1].copy()  # BGR for OpenCV
        if store.kind == "boxes":
            for x0, y0, x1, y1 in store.boxes(image_id).round().astype(int):
                cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), (0, 255, 255), 1)
        else:
            image[find_boundaries(store.label_map(image_id, 0), mode="inner")] = (0, 255, 255)
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise InputError(f"cannot encode a PNG for image {image_id}")
        path = Path(out_dir) / (str(Path(image_id).with_suffix("")).replace("/", "__") + ".png")
        with atomic_path(path, suffix=".png") as tmp:
            tmp.write_bytes(png.tobytes())
        written.append(str(path))
    return written
