"""PLRC's views and points (the authors' PLRC/datasets/imagenet.py, `ImageNet.__getitem__`).

Three crops of each image at ``data.image_size`` (area 0.2-1, MoCo-v2 colour, flip, bilinear): crop 0 (the query,
with points), crop 1 (the key, with points) and the teacher crop of crop 0's self-distillation. Crop 0 and the
teacher crop are drawn as a pair, redrawn together until they overlap by ≥ ``min_overlap`` of the larger one (at most
``overlap_tries`` draws); crop 1 is drawn the same way with a partner of its own that the authors' forward never
reads (sslcli draws it, to sample crop 1 from the same distribution, and drops it). The crops are a `CropViews` with
one extra crop at full size (its ``"small"`` slot), so ``data.pipeline: gpu`` runs them with the shared
`sslcli.data.views.device_crops.ImageDeviceViews`.

The points are drawn on the training device from the crops' boxes (`region_labels`, `sample_region_points`): the
image is cut into a ``grid`` × ``grid`` partition of pseudo-regions; each point crop's M × M point grid takes the
region of its pixel; a region both point crops show is drawn and ``points`` grid pixels of it in each crop.
"""

from __future__ import annotations

import torch

from sslcli.data.views.colour import MOCO_V2_COLOUR, view_colours
from sslcli.data.views.crops import Box, CropViews, box_area, box_intersection, sample_crop_box

PLRC_CROP_SCALE = (0.2, 1.0)  # datasets/imagenet.py: RandomResizedCropCoord(224, scale=(0.2, 1.0))
QUERY, KEY, TEACHER = 0, 1, 2  # the crops' order in "boxes" and "flips"


class PlrcViews(CropViews):
    """Crop 0, crop 1 (``"views"``, (2, 3, S, S)) and the teacher crop (``"small"``, (1, 3, S, S)), with
    ``"boxes"`` (3, 4), ``"flips"`` (3,) and ``"image_size"`` as every `CropViews`."""

    def __init__(self, size: int, scale: tuple[float, float], colours, min_overlap: float, overlap_tries: int):
        super().__init__(size, scale, colours, small_size=size, small_scale=scale, n_small=1)
        self.min_overlap, self.overlap_tries = min_overlap, overlap_tries

    def overlapping_pair(self, height: int, width: int, generator: torch.Generator | None) -> tuple[Box, Box]:
        """Two crops drawn together until their intersection is ≥ ``min_overlap`` × the larger area; the last pair
        when ``overlap_tries`` draws all fail (the authors' loop: ``>= 0.5 or iii > 100``)."""
        for _ in range(self.overlap_tries):
            first = sample_crop_box(height, width, self.large_scale, self.ratio, generator)
            second = sample_crop_box(height, width, self.large_scale, self.ratio, generator)
            if box_intersection(first, second) >= self.min_overlap * max(box_area(first), box_area(second)):
                break
        return first, second

    def sample_boxes(self, height: int, width: int, generator: torch.Generator | None = None) -> list[Box]:
        query, teacher = self.overlapping_pair(height, width, generator)
        key, _ = self.overlapping_pair(height, width, generator)  # the unread partner of crop 1
        return [query, key, teacher]


def plrc_views(spec) -> PlrcViews:
    """The views of a PLRC run spec (``views.crop_scale`` and ``views.colour`` override the recipe; the teacher crop
    takes crop 0's colour pipeline)."""
    m = spec.method
    return PlrcViews(spec.data.image_size, spec.views.crop_scale or PLRC_CROP_SCALE,
                     view_colours(spec.views.colour, (MOCO_V2_COLOUR, MOCO_V2_COLOUR)), m.min_overlap,
                     m.overlap_tries)


# ------------------------------------------------------------------------------------------------------- points
def crop_coordinates(boxes: torch.Tensor, flips: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """(N, 4) normalised ``(x_left, y_top, x_right, y_bottom)`` of crops ``boxes`` (N, 4: pixels, x1 and y1
    exclusive), in the authors' convention (transforms.py `resized_crop`: first and last pixel over size − 1), x
    swapped where ``flips`` (N,) (their RandomHorizontalFlipCoord); ``image_size`` (N, 2) is (H, W)."""
    height = image_size[:, 0:1].to(boxes.dtype) - 1
    width = image_size[:, 1:2].to(boxes.dtype) - 1
    last = boxes - torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype, device=boxes.device)
    coords = last / torch.cat([width, height, width, height], dim=1)
    return torch.where(flips[:, None], coords[:, [2, 1, 0, 3]], coords)


def region_labels(boxes: torch.Tensor, flips: torch.Tensor, image_size: torch.Tensor, grid: int,
                  mask_size: int) -> torch.Tensor:
    """(N, M, M) pseudo-region (0 … grid² − 1, row-major) of every pixel of each crop's M × M point grid: the region
    of the original-image position of the pixel's centre (a mirrored crop's columns run right to left), as the
    authors' nearest-neighbour resize of their region map with the crop."""
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    centre = (torch.arange(mask_size, dtype=boxes.dtype, device=boxes.device) + 0.5) / mask_size
    x = x0[:, None] + (x1 - x0)[:, None] * torch.where(flips[:, None], 1 - centre, centre)  # (N, M)
    y = y0[:, None] + (y1 - y0)[:, None] * centre
    height, width = image_size[:, 0:1].to(boxes.dtype), image_size[:, 1:2].to(boxes.dtype)
    column = (x * grid / width).long().clamp(0, grid - 1)
    row = (y * grid / height).long().clamp(0, grid - 1)
    return row[:, :, None] * grid + column[:, None, :]


def sample_region_points(query_labels: torch.Tensor, key_labels: torch.Tensor, regions: int, points: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``points`` grid pixels of one pseudo-region in each crop, (N, P, 2) as ``(x, y)`` floats, for the query and
    the key crop (the authors' positive group, datasets/imagenet.py:225-255).

    A region both crops show is drawn uniformly; when a crop shows a single region or they share none (the
    authors' ``flag = -1``), each crop draws a region of its own (lines 272-289). The points are drawn uniformly
    with replacement among the region's pixels. ``*_labels``: (N, M, M) `region_labels`; ``regions``: grid².
    """
    shown = [torch.zeros(len(labels), regions, dtype=torch.bool, device=labels.device)
             .scatter_(1, labels.flatten(1), True) for labels in (query_labels, key_labels)]
    shared = shown[0] & shown[1]
    paired = (shown[0].sum(dim=1) > 1) & (shown[1].sum(dim=1) > 1) & shared.any(dim=1)
    query_region = torch.multinomial(torch.where(paired[:, None], shared, shown[0]).float(), 1)
    key_region = torch.where(paired[:, None], query_region, torch.multinomial(shown[1].float(), 1))
    side = query_labels.shape[-1]
    out = []
    for labels, region in ((query_labels, query_region), (key_labels, key_region)):
        pixel = torch.multinomial((labels.flatten(1) == region).float(), points, replacement=True)
        out.append(torch.stack([pixel % side, pixel // side], dim=-1).to(torch.float32))
    return out[0], out[1]
