"""The toy plugin's views: two crops of the image (its crop pair) and their device views (imports torch)."""

from sslcli.data.views.colour import SIMCLR_COLOUR
from sslcli.data.views.crops import CropViews
from sslcli.data.views.device_crops import ImageDeviceViews

CROP_SCALE = (0.3, 1.0)  # its own area range, so `analyze crop-iou --spec` shows that the plugin's sampler ran


def toy_views(spec) -> CropViews:
    """Two crops at ``data.image_size`` (``{"views": (2, 3, S, S), ...}``), SimCLR's colour."""
    return CropViews(spec.data.image_size, CROP_SCALE, colours=SIMCLR_COLOUR)


def toy_device_views(transform: CropViews) -> ImageDeviceViews:
    """``data.pipeline: gpu``: the shared device views of a `CropViews`, built from the method's CPU transform."""
    return ImageDeviceViews(transform)
