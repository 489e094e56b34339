"""Ground-truth masks from COCO instance annotations: one label map per image, instance j+1 = j-th annotation.

Instances are painted largest first, so where two overlap the smaller one stays visible (it would otherwise vanish).
Crowd regions keep their ids and are flagged in the store's ``iscrowd`` region values.
"""

from __future__ import annotations

import numpy as np

from sslcli.data.readers.sources import CocoSource, ImageSource
from sslcli.data.stores.store import ImageResult
from sslcli.data.views.label_maps import gt_label_map
from sslcli.errors import InputError


def compute_gt(source: ImageSource, index: int) -> ImageResult:
    if not isinstance(source, CocoSource):
        raise InputError(f"{source.root}: --method gt needs COCO instance annotations (annotations/instances_*.json)")
    image = source.load(index)  # never store regions for an image that cannot be read in training
    masks, instances = source.instance_masks(index)
    if masks.shape[1:] != image.shape[:2]:
        raise InputError(f"{source.records[index].path}: image is {image.shape[1]}x{image.shape[0]} but the "
                         f"annotations say {masks.shape[2]}x{masks.shape[1]}")
    crowd = np.array([inst.iscrowd for inst in instances], np.float32)
    label_map = gt_label_map(masks)
    visible = int(np.count_nonzero(np.bincount(label_map.ravel(), minlength=len(masks) + 1)[1:]))
    return ImageResult(str(source.records[index].image_id), masks=label_map[None], image_size=image.shape[:2],
                       values=crowd, region_counts=[visible])
