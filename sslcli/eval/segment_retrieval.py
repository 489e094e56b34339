"""Semantic segment retrieval (METHODS.md §7, R App. A.7) on a COCO-layout set.

1. The backbone is rebuilt with res5 dilated (stride 1, dilation 2: output stride 16) and the same weights; no pooling.
2. Each image (resized to ``image_size``²) gives a (C, h, w) map; its L2-normalised pixel features are clustered by
   K-means (K = 15, k-means++ init seeded per image, so results do not depend on batching). A region's descriptor
   is the mean of its pixels' (unnormalised) features.
3. A training region is labelled with the majority ground-truth class of its pixels (at the original resolution).
4. Each test region takes the label of its nearest training region (cosine similarity); the predicted label map
   is upsampled (nearest) to the original resolution and scored against the ground truth: per-class IoU from one
   confusion matrix over the split, mIoU over the classes that occur in the ground truth or the prediction.

Ground truth (our choice where the paper is silent): background 0, class ``label + 1`` for each non-crowd instance,
painted largest first so smaller objects stay visible; crowd pixels not covered by another instance are ignored.
The regions (descriptors and region maps) are cached to HDF5 like the other features.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from sslcli.console import current, progress
from sslcli.data.readers.sources import CocoSource
from sslcli.errors import InputError
from sslcli.eval.features import (
    Preprocess,
    announce_cache,
    cache_path,
    default_cache_dir,
    iter_image_batches,
    read_arrays,
    resolve_device,
    skipped_images,
    write_arrays,
)
from sslcli.eval.labels import LabeledSet, default_splits, open_split
from sslcli.eval.overlap import check_disjoint
from sslcli.eval.roi import to_input

IGNORE = 255
NO_REGION = 255  # region-map value of images that could not be decoded


def kmeans(x: torch.Tensor, k: int, iters: int = 20, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's K-means with k-means++ initialisation. x: (P, D) -> (P,) cluster index in [0, min(k, P))."""
    k = min(k, len(x))
    gen_device = generator.device if generator is not None else x.device
    first = torch.randint(len(x), (1,), generator=generator, device=gen_device).to(x.device)
    centres = [x[first[0]]]
    d2 = (x - centres[0]).pow(2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / len(d2))
        pick = torch.multinomial(probs.to(gen_device), 1, generator=generator).to(x.device)
        centres.append(x[pick[0]])
        d2 = torch.minimum(d2, (x - centres[-1]).pow(2).sum(1))
    centres = torch.stack(centres)  # (k, D)
    assign = torch.cdist(x, centres).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)  # empty: keep
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


def dilate_res5(backbone: torch.nn.Module) -> torch.nn.Module:
    """Make res5 stride 1 with dilation 2, in place, keeping every weight (output stride 32 -> 16).

    Same as torchvision's ``replace_stride_with_dilation=[False, False, True]`` (first block dilation 1, the others 2),
    but also for BasicBlock ResNets (18/34), which torchvision refuses to dilate.
    """
    for b, block in enumerate(backbone.layer4):
        dilation = 1 if b == 0 else 2
        for conv in (m for m in block.modules() if isinstance(m, torch.nn.Conv2d)):
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
        block.stride = 1
    return backbone


def semantic_mask(source: CocoSource, index: int, height: int, width: int) -> np.ndarray:
    """(height, width) uint8: 0 background, label + 1 per non-crowd instance (largest painted first), IGNORE crowd."""
    masks, instances = source.instance_masks(index)
    out = np.zeros((height, width), dtype=np.uint8)
    order = sorted(range(len(instances)), key=lambda j: (not instances[j].iscrowd, -instances[j].area))
    for j in order:  # crowd first (so real instances paint over it), then largest to smallest
        mask = masks[j]
        if mask.shape != (height, width):
            mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
        out[mask] = IGNORE if instances[j].iscrowd else instances[j].label + 1
    return out


@torch.no_grad()
def extract_regions(backbone, source: CocoSource, pre: Preprocess, clusters: int, seed: int, batch_size: int,
                    device: torch.device, workers: int) -> dict[str, np.ndarray]:
    """{"desc": (R, C) float32, "image": (R,) int32 image index, "maps": (N, h, w) uint8 region index per cell}."""
    backbone.eval().to(device)
    h = w = None
    descs, owners, maps = [], [], {}
    for batch in iter_image_batches(source, list(range(len(source))), pre, batch_size, workers, "regions"):
        fmap = backbone.forward_map(to_input([image for _, image, _ in batch], device)).float()  # (B, C, h, w)
        h, w = fmap.shape[2:]
        for b, (i, _, _) in enumerate(batch):
            pixels = fmap[b].flatten(1).T  # (h*w, C)
            generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
            assign = kmeans(F.normalize(pixels, dim=1), clusters, generator=generator)
            _, assign = torch.unique(assign, return_inverse=True)  # compact: regions 0..r-1
            r = int(assign.max()) + 1
            sums = torch.zeros(r, pixels.shape[1], device=device).index_add_(0, assign, pixels)
            descs.append((sums / torch.bincount(assign, minlength=r)[:, None]).cpu().numpy())
            owners.append(np.full(r, i, dtype=np.int32))
            maps[i] = assign.view(h, w).to(torch.uint8).cpu().numpy()
    if h is None:
        raise InputError(f"{source.root}: no image of the split could be decoded")
    region_maps = np.full((len(source), h, w), NO_REGION, dtype=np.uint8)
    for i, m in maps.items():
        region_maps[i] = m
    return {"desc": np.concatenate(descs).astype(np.float32), "image": np.concatenate(owners), "maps": region_maps}


def _regions_cached(backbone, sha, source, pre, clusters, seed, batch_size, device, workers, cache_dir):
    rows = LabeledSet(source, np.arange(len(source)), np.zeros(len(source), dtype=np.int64), [], False)
    extra = {"kind": "segment-retrieval", "clusters": clusters, "seed": seed, "dilate_res5": True}
    path = cache_path(cache_dir, sha, rows, pre, extra) if cache_dir else None
    if path is not None:
        announce_cache(cache_dir)
    if path is not None and path.is_file():
        cached = read_arrays(path, ("desc", "image", "maps"))
        if cached is not None and len(cached["maps"]) == len(source):
            current().info(f"regions: reusing {path}")
            return cached
    regions = extract_regions(backbone, source, pre, clusters, seed, batch_size, device, workers)
    if path is not None:
        write_arrays(path, regions, {"checkpoint_sha256": sha, "data_root": str(source.root), "clusters": clusters})
    return regions


def _upsampled(region_map: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(region_map, (width, height), interpolation=cv2.INTER_NEAREST)


def label_train_regions(source: CocoSource, regions: dict[str, np.ndarray], num_labels: int) -> np.ndarray:
    """(R,) majority ground-truth label of each training region, -1 where all its pixels are ignored."""
    labels = np.full(len(regions["desc"]), -1, dtype=np.int64)
    first = np.searchsorted(regions["image"], np.arange(len(source)))  # regions are stored image by image
    for i in progress(np.unique(regions["image"]).tolist(), description="train labels"):
        rec = source.records[i]
        gt = semantic_mask(source, i, rec.height, rec.width)
        region = _upsampled(regions["maps"][i], rec.height, rec.width).astype(np.int64)
        valid = gt != IGNORE
        r = int(regions["maps"][i].max()) + 1
        votes = np.bincount(region[valid] * num_labels + gt[valid], minlength=r * num_labels).reshape(r, num_labels)
        has = votes.sum(1) > 0
        labels[first[i]:first[i] + r] = np.where(has, votes.argmax(1), -1)
    return labels


def score_regions(source: CocoSource, regions: dict[str, np.ndarray], region_labels: np.ndarray,
                  num_labels: int) -> np.ndarray:
    """(L, L) confusion matrix (rows: ground truth, columns: prediction) over the split's non-ignored pixels, each
    pixel predicted as the label of its region (region maps upsampled, nearest, to the original resolution)."""
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    first = np.searchsorted(regions["image"], np.arange(len(source)))
    for i in progress(np.unique(regions["image"]).tolist(), description="scoring"):
        rec = source.records[i]
        gt = semantic_mask(source, i, rec.height, rec.width)
        r = int(regions["maps"][i].max()) + 1
        pred = region_labels[first[i]:first[i] + r][_upsampled(regions["maps"][i], rec.height, rec.width)]
        valid = gt != IGNORE
        confusion += np.bincount(gt[valid].astype(np.int64) * num_labels + pred[valid],
                                 minlength=num_labels ** 2).reshape(num_labels, num_labels)
    return confusion


def retrieve(train_desc: np.ndarray, test_desc: np.ndarray, device: torch.device, chunk: int = 4096) -> np.ndarray:
    """(M,) index of the most cosine-similar training descriptor for each test descriptor."""
    train = F.normalize(torch.as_tensor(train_desc, device=device), dim=1)
    out = []
    for start in range(0, len(test_desc), chunk):
        test = F.normalize(torch.as_tensor(test_desc[start:start + chunk], device=device), dim=1)
        out.append((test @ train.T).argmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def confusion_to_iou(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-class IoU, mask of classes that occur in the ground truth or the prediction) from a (L, L) matrix."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return np.where(present, tp / np.maximum(union, 1), 0.0), present


def _sample(source: CocoSource, count: int | None, seed: int) -> CocoSource:
    """A seeded subset of ``count`` images (all when None): the region bank grows with the number of images."""
    if count is None or count >= len(source):
        return source
    if count < 1:
        raise InputError(f"image count {count}: expected a positive number")
    chosen = np.sort(np.random.default_rng(seed).choice(len(source), count, replace=False))
    subset = copy.copy(source)
    subset.records = [source.records[i] for i in chosen]
    return subset


def segment_retrieval(checkpoint: str | os.PathLike, data: str | os.PathLike, *, test_data=None, train_split=None,
                      test_split=None, image_size: int = 224, clusters: int = 15, batch_size: int = 32, workers: int = 0,
                      device: str = "auto", cache_dir=None, use_cache: bool = True, trust: bool = False,
                      seed: int = 0, prefix: str | None = None, train_images: int | None = None,
                      test_images: int | None = None, allow_overlap: bool = False) -> dict:
    """Run the whole probe; returns {"mIoU", "pixel_accuracy", "per_class_iou", ...}."""
    from sslcli.backbone_checkpoints import load_backbone

    if clusters < 2 or clusters > 255:
        raise InputError(f"--clusters {clusters}: expected 2..255")
    default_train, default_test = default_splits(data)
    train_split, test_split = train_split or default_train, test_split or default_test
    sources = []
    for root, split in ((data, train_split), (test_data or data, test_split)):
        source = open_split(root, split)
        if not isinstance(source, CocoSource):
            raise InputError(f"{root}: segment retrieval needs a COCO-layout set with instance masks")
        sources.append(source)
    train_src, test_src = _sample(sources[0], train_images, seed), _sample(sources[1], test_images, seed)
    if train_src.classes != test_src.classes:
        raise InputError(f"{test_src.root}: test classes differ from the training classes")
    overlap = check_disjoint([r.path for r in train_src.records], [r.path for r in test_src.records], allow_overlap)
    backbone, report = load_backbone(checkpoint, trust=trust, prefix=prefix)
    dilate_res5(backbone)
    current().info(report.summary())
    dev = resolve_device(device)
    pre = Preprocess(image_size, "square")
    cache = (Path(cache_dir) if cache_dir else default_cache_dir()) if use_cache else None
    train = _regions_cached(backbone, report.identity, train_src, pre, clusters, seed, batch_size, dev, workers, cache)
    test = _regions_cached(backbone, report.identity, test_src, pre, clusters, seed, batch_size, dev, workers, cache)
    num_labels = len(train_src.classes or []) + 1  # + background
    train_labels = label_train_regions(train_src, train, num_labels)
    keep = train_labels >= 0
    if not keep.any():
        raise InputError(f"{train_src.root}: no training region has a ground-truth label")
    test_labels = train_labels[keep][retrieve(train["desc"][keep], test["desc"], dev)]
    confusion = score_regions(test_src, test, test_labels, num_labels)
    iou, present = confusion_to_iou(confusion)
    names = ["background", *(train_src.classes or [])]
    return {"checkpoint": report.to_dict(), "data": str(data), "train_split": train_split, "test_split": test_split,
            "image_size": image_size, "clusters": clusters, "train_images": len(train_src),
            "test_images": len(test_src), "train_regions": int(keep.sum()),
            "test_regions": len(test["desc"]), "overlapping_images": overlap, "mIoU": float(iou[present].mean() * 100),
            "pixel_accuracy": float(np.trace(confusion) / max(confusion.sum(), 1) * 100),
            "classes_scored": int(present.sum()),
            "per_class_iou": {names[c]: float(iou[c] * 100) for c in np.flatnonzero(present)},
            "skipped_images": [{"split": split, **s} for split, src, regions in
                               ((train_split, train_src, train), (test_split, test_src, test))
                               for s in skipped_images(src, _unmapped(regions))]}


def _unmapped(regions: dict[str, np.ndarray]) -> list[int]:
    """Images that got no region map (they could not be decoded; every decoded image has at least one region)."""
    return np.flatnonzero((regions["maps"] == NO_REGION).all(axis=(1, 2))).tolist()
