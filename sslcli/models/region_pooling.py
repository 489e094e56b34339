"""Pooling a backbone's features over regions: DetCon's mask pooling on the res5 map and SoCo's / D3SSL's ResNet-C4
box features (RoIAlign on res4, res5 as the box head)."""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

from sslcli.models.backbone import ResNetBackbone, stage_strides


def mask_pool(features: torch.Tensor, grid: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """h_m = Σ m·h / max(Σ m, 1) for every sampled id (DetCon §3).

    Args:
        features: (B, C, h, w) res5 map. grid: (B, h, w) id per cell. ids: (B, R) sampled ids.
    Returns:
        (B, R, C) mask-pooled features.
    """
    masks = (grid.reshape(grid.shape[0], 1, -1) == ids[:, :, None]).to(features.dtype)   # (B, R, h·w)
    pooled = masks @ features.flatten(2).transpose(1, 2)                                 # (B, R, C)
    return pooled / masks.sum(-1, keepdim=True).clamp(min=1)


def roi_features(encoder: ResNetBackbone, images: torch.Tensor, boxes: torch.Tensor, roi_size: int) -> torch.Tensor:
    """ResNet-C4 box features: res4 → RoIAlign → res5 → average pool.

    Args:
        images: (B, 3, H, W). boxes: (B, K, 4) x0, y0, x1, y1 in the images' pixels. roi_size: RoIAlign output side.

    Returns:
        (B·K, C5) features, image-major (row b·K + k is box k of image b).
    """
    res4 = encoder.features(images, upto="res4")["res4"]
    pooled: torch.Tensor = encoder.layer4(align_rois(res4, boxes, roi_size, stage_strides(encoder)["res4"]))
    return pooled.mean(dim=(2, 3))


def align_rois(res4: torch.Tensor, boxes: torch.Tensor, roi_size: int, stride: int) -> torch.Tensor:
    """RoIAlign (aligned=True: box corners are continuous pixel coordinates) of (B, K, 4) image-pixel boxes on a
    (B, C, H/stride, W/stride) res4 map (stride 16 with the ImageNet stem, 4 with the small one; `stage_strides`)
    → (B·K, C, roi_size, roi_size), image-major."""
    aligned: torch.Tensor = roi_align(res4, list(boxes.to(res4.dtype).unbind(0)), output_size=roi_size,
                                      spatial_scale=1.0 / stride, sampling_ratio=-1, aligned=True)
    return aligned
