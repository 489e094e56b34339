"""n×n grid masks (DetCon, METHODS.md §3: 1×1 = SimCLR/BYOL, 5×5 the best grid)."""

from __future__ import annotations

from sslcli.data.readers.sources import ImageSource
from sslcli.data.stores.store import ImageResult
from sslcli.data.views.label_maps import grid_label_map


def compute_grid(source: ImageSource, index: int, n: int) -> ImageResult:
    # Decode anyway: a grid store must not list images that cannot be read in training.
    image = source.load(index)
    h, w = image.shape[:2]
    return ImageResult(str(source.records[index].image_id), masks=grid_label_map(h, w, n)[None], image_size=(h, w))
