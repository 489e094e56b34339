"""Box features on a named stage: RoIAlign, then average pooling (D3SSL §3, §5.3; Mask R-CNN's aligned RoIAlign).

Shared by the probes' feature extraction and the coupling, positional-bias and O-KNN analyses. Images go in as uint8
RGB arrays, are normalised with the ImageNet statistics every supported checkpoint was trained with, and are batched
only with images of the same size (no padding), so a result never depends on the batch size or on which other images
share a batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_align

from sslcli.data.views.colour import IMAGENET_MEAN, IMAGENET_STD
from sslcli.models.backbone import STAGES, stage_strides


def to_input(images: Sequence[np.ndarray] | np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB (or a list of same-size arrays) → (B, 3, H, W) float, ImageNet-normalised."""
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(list(images)))).to(device)
    batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


def pooled_roi_features(feature_map: torch.Tensor, boxes: Sequence[torch.Tensor], stride: int, roi_size: int = 7,
                        sampling_ratio: int = -1) -> torch.Tensor:
    """RoIAlign (aligned=True, spatial_scale = 1/stride) then mean over the roi_size×roi_size grid.

    feature_map: (B, C, h, w); boxes: B tensors of shape (K_b, 4), (x0, y0, x1, y1) in input pixels.
    Returns (ΣK_b, C) in the order of ``boxes``.
    """
    boxes = [b.to(device=feature_map.device, dtype=feature_map.dtype) for b in boxes]
    pooled = roi_align(feature_map, boxes, output_size=roi_size, spatial_scale=1.0 / stride,
                       sampling_ratio=sampling_ratio, aligned=True)
    return pooled.mean(dim=(2, 3))


@torch.no_grad()
def box_features(backbone: nn.Module, items: Iterable[tuple[np.ndarray, np.ndarray]], stages: Sequence[str] = STAGES,
                 roi_size: int = 7, sampling_ratio: int = -1, batch_size: int = 16, device: torch.device | str = "cpu",
                 total: int | None = None, progress_description: str | None = None) -> dict[str, torch.Tensor]:
    """Pooled RoI features of every box of every image, on each of ``stages``.

    items: (image, boxes) pairs, read lazily: image (H, W, 3) uint8 RGB, boxes (K, 4) float (x0, y0, x1, y1) in
    that image's pixels. Returns {stage: (ΣK, C_stage) float32 CPU tensor}, rows in item order then box order.
    Images wait in per-size buckets until a bucket holds ``batch_size`` of them (or more than 4·batch_size images
    wait in all), so batches never need padding and memory stays bounded.
    """
    from sslcli.console import progress

    backbone.eval()  # BatchNorm must use its running statistics: features of one image never depend on the batch
    strides = stage_strides(backbone)
    deepest = max(stages, key=STAGES.index)
    results: dict[int, dict[str, torch.Tensor]] = {}
    buckets: dict[tuple[int, ...], list[tuple[int, np.ndarray, np.ndarray]]] = {}

    def run(bucket: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        x = to_input([image for _, image, _ in bucket], device)
        maps = backbone.features(x, upto=deepest)
        rois = [torch.as_tensor(np.asarray(b, dtype=np.float32)).reshape(-1, 4) for _, _, b in bucket]
        counts = [len(r) for r in rois]
        per_stage = {s: torch.split(pooled_roi_features(maps[s], rois, strides[s], roi_size, sampling_ratio).float()
                                    .cpu(), counts) for s in stages}
        for j, (index, _, _) in enumerate(bucket):
            results[index] = {s: per_stage[s][j] for s in stages}

    iterator = progress(items, total=total, description=progress_description) if progress_description else items
    waiting = 0
    for index, (image, boxes) in enumerate(iterator):
        if len(boxes) == 0:
            continue
        bucket = buckets.setdefault(tuple(image.shape), [])
        bucket.append((index, image, boxes))
        waiting += 1
        if len(bucket) >= batch_size or waiting > 4 * batch_size:
            fullest = max(buckets, key=lambda k: len(buckets[k]))
            waiting -= len(buckets[fullest])
            run(buckets.pop(fullest))
    for bucket in buckets.values():
        run(bucket)
    order = sorted(results)
    return {s: torch.cat([results[i][s] for i in order]) if order else torch.zeros(0, 0) for s in stages}
