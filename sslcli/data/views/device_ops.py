"""The batched device ops of ``data.pipeline: gpu``: workers sample the view parameters, the device decodes and augments.

Split of the work:
- in DataLoader workers (`DeviceViews.__call__`, per sample, under the engine's per-sample seeded RNG): read the file's
  bytes and header size, draw the crop boxes with the CPU path's own samplers (`CropViews.sample_boxes`: RandomResizedCrop,
  IoU-constrained pairs, multi-crop, CC), the flips and every colour parameter (the distributions of torchvision's
  ColorJitter / RandomGrayscale / GaussianBlur / RandomSolarize as `sslcli.data.views.colour` configures them). Cheap, and the
  views stay a function of (seed, epoch, index) only, as on the CPU path;
- on the device (`DeviceViews.apply`, per batch): nvJPEG batch decode (torchvision ``decode_jpeg(device="cuda")``; on
  a CPU device the same call decodes with libjpeg), crop + antialiased resize + flip of every image as two batched
  matmuls with torch's antialiasing weights (`resized_crops`), then colour jitter, grayscale, blur, solarize and
  normalisation as batched tensor ops with per-sample parameters.

Why not kornia: its colour jitter is not torchvision's (other hue/saturation maths), it draws parameters on the device
in the training process (so views would depend on batch composition, not on (seed, epoch, index)), and its batched
RandomResizedCrop needs equal-size inputs, while decoded images differ in size. The ops here are ~100 lines of torch
and equal torchvision's functional ops within float rounding (tests/test_device_views.py).

The device views built on these ops: the crop methods' `sslcli.data.views.device_crops.ImageDeviceViews` (moco, simclr,
byol; A+ needs ``data.pipeline: cpu``), and in the methods' homes DetCon's masks (sslcli/methods/detcon/views.py),
SoCo's boxes (sslcli/methods/soco/views.py) and D3SSL's (sslcli/methods/d3ssl/views.py). Which one runs a method's
transform is the method's ``device_views`` hook on its registry entry (`sslcli.method_registry`).

With ``data.cache`` (`sslcli.data.views.image_cache`) the images are decoded once at start: a worker gets a
`CachedImage` instead of the bytes, `encoded_fields` sends its position and `decode_fields` returns the cached images
the engine put into the batch, so no device views has code of its own for the cache.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sslcli.data.readers.images import EncodedImage
from sslcli.data.views.colour import (
    BLUR_ON,
    BRIGHTNESS,
    CONTRAST,
    FACTORS,
    GRAY,
    HUE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    JITTER_ON,
    ORDER,
    SATURATION,
    SIGMA,
    SOLARIZE,
    blur_kernel_size,
)
from sslcli.errors import CorruptImageError

# Kept as per-sample lists by the engine's collate (variable sizes): file bytes, paths, DetCon's label maps.
LIST_KEYS = ("encoded", "path", "label_map")


# ------------------------------------------------------------------------------------------- batched colour ops
def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) → (N, 1, H, W) luma with torchvision's weights."""
    return (x[:, 0] * 0.2989 + x[:, 1] * 0.587 + x[:, 2] * 0.114).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    return (x * f + other * (1 - f)).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of (N, 3, H, W) images in [0, 1] by ``shift`` (N,) turns (RGB → HSV → RGB, as torchvision)."""
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    flat = delta == 0
    s = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    d = torch.where(flat, torch.ones_like(delta), delta)
    r, g, b = x.unbind(1)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(flat, torch.zeros_like(h), h)
    h = (h / 6.0 + 1.0 + shift.view(-1, 1, 1)).remainder(1.0)
    # HSV → RGB: sector i of the hue circle picks (v, p, q, t) per channel.
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long().remainder(6)
    v = maxc
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    vpqt = torch.stack((v, p, q, t), dim=1)
    select = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=x.device)
    return vpqt.gather(1, select[:, i].permute(1, 0, 2, 3))


def _brightness(x, f):
    return (x * f.view(-1, 1, 1, 1)).clamp_(0, 1)


def _contrast(x, f):
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x, f):
    return _blend(x, grayscale(x), f)


_JITTER_OPS = {BRIGHTNESS: _brightness, CONTRAST: _contrast, SATURATION: _saturation, HUE: adjust_hue}


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image of (N, C, H, W) with its own σ: separable Gaussian, reflect border (torchvision's kernel)."""
    n, c, h, w = x.shape
    half = (kernel_size - 1) / 2
    pos = torch.linspace(-half, half, kernel_size, device=x.device)
    kernel = torch.exp(-0.5 * (pos[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N·C, k)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    return y.view(n, c, h, w)


def _rows(mask: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """Indices (on ``device``) of the True entries of a CPU mask; None when there are none (no device sync)."""
    idx = torch.nonzero(mask).flatten()
    return idx.to(device, non_blocking=True) if len(idx) else None


def apply_colour(x: torch.Tensor, params: torch.Tensor, kernel_size: int, normalize: bool = True) -> torch.Tensor:
    """The photometric pipeline of `sslcli.data.views.colour.colour_transform` on (N, 3, S, S) float [0, 1] images with one
    parameter row per image (``params`` on the CPU, from `sample_colour_params`)."""
    x = x.clone()
    dev = x.device
    on = params[:, JITTER_ON] > 0.5
    order = params[:, ORDER].long()
    factors = params[:, FACTORS].to(dev)
    for position in range(4):
        for op, fn in _JITTER_OPS.items():
            rows = _rows(on & (order[:, position] == op), dev)
            if rows is not None:
                x[rows] = fn(x[rows], factors[rows, op])
    rows = _rows(params[:, GRAY] > 0.5, dev)
    if rows is not None:
        x[rows] = grayscale(x[rows]).expand(-1, 3, -1, -1)
    rows = _rows(params[:, BLUR_ON] > 0.5, dev)
    if rows is not None:
        x[rows] = gaussian_blur(x[rows], params[:, SIGMA].to(dev)[rows], kernel_size)
    rows = _rows(params[:, SOLARIZE] > 0.5, dev)
    if rows is not None:
        x[rows] = torch.where(x[rows] >= 0.5, 1.0 - x[rows], x[rows])
    if normalize:
        mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


# ------------------------------------------------------------------------------------------- batched resized crops
# Pixels per padded chunk (n·H·W): ~0.8 GB of float32 RGB; a batch of 256 COCO images (640×480) takes two chunks,
# and one very large image cannot make the whole batch pad to its size.
PAD_BUDGET = 2 ** 26


def _aa_filter(x: torch.Tensor, bicubic: bool) -> torch.Tensor:
    """torch's antialiasing interpolation filters: triangle (bilinear) or Keys cubic with a = −0.5 (bicubic)."""
    x = x.abs()
    if not bicubic:
        return (1 - x).clamp_(min=0)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_weights(start: torch.Tensor, length: torch.Tensor, out_size: int, in_size: int,
                   bicubic: bool) -> torch.Tensor:
    """(N, out_size, in_size) matrices W with ``W[n] @ v`` = the antialiased resize of ``v[start:start+length]`` to
    ``out_size`` samples, as torch's ``interpolate(..., antialias=True)`` computes it (PIL's algorithm: centre
    ``scale·(i + 0.5)``, support ``interp/2 · max(scale, 1)``, filter argument scaled by ``1/max(scale, 1)``,
    taps truncated to the input and renormalised)."""
    dev = start.device
    scale = (length.double() / out_size)[:, None]  # (N, 1)
    support = torch.where(scale >= 1, scale, torch.ones_like(scale)) * (2.0 if bicubic else 1.0)
    invscale = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))
    center = scale * (torch.arange(out_size, device=dev, dtype=torch.float64) + 0.5)  # (N, out), crop coordinates
    xmin = (center - support + 0.5).trunc().clamp(min=0)
    xmax = torch.minimum((center + support + 0.5).trunc(), length.double()[:, None])
    j = torch.arange(in_size, device=dev, dtype=torch.float64)[None, None, :] - start.double()[:, None, None]
    w = _aa_filter((j - center[..., None] + 0.5) * invscale[..., None], bicubic)
    w = w * ((j >= xmin[..., None]) & (j < xmax[..., None]))
    return (w / w.sum(dim=2, keepdim=True)).float()


def resized_crops(images: list[torch.Tensor], boxes: torch.Tensor, size: int, flips: torch.Tensor,
                  bicubic: bool) -> torch.Tensor:
    """(N, 3, size, size) uint8-valued float crops: box ``boxes[n]`` of ``images[n]`` resized with antialiasing (as
    `sslcli.data.views.crops.crop_resize`), mirrored where ``flips[n]``. Two batched matmuls per chunk of images padded
    to a common size replace one resize call per crop (hundreds of kernel launches per batch)."""
    out, start = [], 0
    while start < len(images):  # chunks whose padded size fits PAD_BUDGET
        stop, h, w = start, 0, 0
        while stop < len(images):
            nh, nw = max(h, images[stop].shape[1]), max(w, images[stop].shape[2])
            if stop > start and (stop + 1 - start) * nh * nw > PAD_BUDGET:
                break
            stop, h, w = stop + 1, nh, nw
        chunk = images[start:stop]
        padded = torch.zeros(len(chunk), 3, h, w, dtype=torch.uint8, device=chunk[0].device)
        for i, img in enumerate(chunk):
            padded[i, :, :img.shape[1], :img.shape[2]] = img
        b = boxes[start:stop].to(padded.device)
        wy = resize_weights(b[:, 1], b[:, 3] - b[:, 1], size, h, bicubic)  # (n, size, h)
        wx = resize_weights(b[:, 0], b[:, 2] - b[:, 0], size, w, bicubic)  # (n, size, w)
        flip = flips[start:stop].to(padded.device)[:, None, None]
        wx = torch.where(flip, wx.flip(1), wx)
        crops = wy[:, None] @ padded.float() @ wx[:, None].transpose(-1, -2)  # (n, 3, size, size)
        out.append(crops.clamp_(0, 255).round_())  # as torchvision's resize of a uint8 image
        start = stop
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------------ decoding
def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1–8) to a (C, H, W) image, as OpenCV's and PIL's decoders do (PIL's
    exif_transpose: 2 mirror, 3 rotate 180°, 4 flip, 5 transpose, 6 rotate 90° clockwise, 7 transverse, 8 rotate 90°
    counter-clockwise)."""
    if orientation in (5, 6, 7, 8):
        image = image.transpose(-1, -2)
    flips = {2: (-1,), 3: (-1, -2), 4: (-2,), 6: (-1,), 7: (-1, -2), 8: (-2,)}.get(orientation, ())
    return image.flip(flips) if flips else image


def decode_batch(encoded: list[torch.Tensor], is_jpeg: list[bool], orientation: list[int], paths: list[str],
                 sizes: list[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
    """(3, H, W) uint8 RGB images on ``device``: JPEGs in one batched call (nvJPEG on CUDA), other formats on the CPU.

    An image the batched decoder rejects is decoded alone with OpenCV (the CPU path's decoder, which tolerates
    truncated files as the CPU path does); one that fails there too raises CorruptImageError naming its path.
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, j in enumerate(is_jpeg) if j]
    with warnings.catch_warnings():  # torchvision ≥ 0.29 flags its decoders as moving to TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        if jpegs:
            try:
                for i, img in zip(jpegs, decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB,
                                                     device=device), strict=True):
                    out[i] = img
            except RuntimeError:
                pass  # found below, image by image
        for i in range(len(encoded)):
            if out[i] is None:
                out[i] = _decode_one(encoded[i], paths[i], is_jpeg[i], decode_image, decode_jpeg, device)
    images = []
    for i, img in enumerate(out):
        img = orient(img, orientation[i])  # type: ignore[arg-type]
        if tuple(img.shape[1:]) != tuple(sizes[i]):
            raise CorruptImageError(paths[i], f"decoded {img.shape[2]}x{img.shape[1]}, header says "
                                              f"{sizes[i][1]}x{sizes[i][0]}")
        images.append(img)
    return images


def _decode_one(data, path, is_jpeg, decode_image, decode_jpeg, device) -> torch.Tensor:
    from torchvision.io import ImageReadMode

    try:
        if is_jpeg:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        return decode_image(data, mode=ImageReadMode.RGB).to(device)
    except RuntimeError:
        import cv2

        image = cv2.imdecode(data.numpy(), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None:
            raise CorruptImageError(path, "cannot decode image") from None
        rgb = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return torch.from_numpy(rgb).permute(2, 0, 1).to(device)


# ------------------------------------------------------------------------------------------------- the views
CACHED_KEY = "cached"  # a batch's positions in the image cache (``data.cache``), instead of file bytes
IMAGES_KEY = "images"  # the batch's (3, H, W) uint8 images, put there by the engine from the image cache


@dataclass(frozen=True)
class CachedImage:
    """What the workers see of an image held in the image cache (``data.cache``, `sslcli.data.views.image_cache`):
    its place there, path and size, no pixels. It stands in for the `EncodedImage` the device views' worker side
    reads (``height``, ``width``), so they draw the same parameters from it; ``error``: why it could not be cached."""

    position: int
    path: Path
    height: int
    width: int
    error: str | None = None


def encoded_fields(image: EncodedImage | CachedImage) -> dict:
    """What a worker sends for the device to decode: the file's bytes, path, format, EXIF orientation, header size;
    for a cached image, its position in the cache instead of the bytes (the engine looks the pixels up)."""
    if isinstance(image, CachedImage):
        return {CACHED_KEY: image.position, "path": str(image.path), "size": torch.tensor([image.height, image.width])}
    return {"encoded": torch.from_numpy(np.frombuffer(image.data, np.uint8).copy()), "path": str(image.path),
            "jpeg": image.is_jpeg, "orientation": image.orientation,
            "size": torch.tensor([image.height, image.width])}


def decode_fields(batch: dict, device: torch.device) -> list[torch.Tensor]:
    """The (3, H, W) uint8 images of a collated batch of `encoded_fields` on ``device``: decoded there, or, with an
    image cache, the cached images the engine looked up (the one place that tells the two apart)."""
    if IMAGES_KEY in batch:
        return batch[IMAGES_KEY]
    return decode_batch(batch["encoded"], batch["jpeg"].tolist(), batch["orientation"].tolist(), batch["path"],
                        [tuple(s) for s in batch["size"].tolist()], device)


def coloured_crops(images: list[torch.Tensor], boxes: torch.Tensor, size: int, flips: torch.Tensor,
                   colour: torch.Tensor, bicubic: bool) -> torch.Tensor:
    """(N, 3, size, size) normalised views: `resized_crops` then `apply_colour` with one parameter row per image."""
    pixels = resized_crops(images, boxes.long(), size, flips, bicubic)
    return apply_colour(pixels / 255, colour, blur_kernel_size(size))


class DeviceViews:
    """The views of a method's transform computed on the training device: ``__call__`` runs in the workers
    (parameters), ``apply`` in the training process (pixels). ``apply``'s batch has the CPU path's keys and shapes.

    A method names the function that builds its device views from its CPU transform on its registry entry
    (``device_views``, `sslcli.method_registry`): `sslcli.data.views.device_crops.ImageDeviceViews` for the crop
    methods, the region methods' own in their homes (sslcli/methods/<name>/views.py).
    """

    accepts_encoded = True  # the engine hands the workers EncodedImage samples (bytes + header size)

    def __call__(self, sample: dict) -> dict:
        raise NotImplementedError

    def apply(self, batch: dict, device: torch.device) -> dict:
        raise NotImplementedError

    def region_stores(self) -> list:
        """The region stores (`sslcli.data.stores.store.RegionStore`) the worker side reads per sample, which
        ``data.cache`` holds in memory; none for views without stored regions."""
        return []


def downsample_views(views: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, S, S) float → (N, 3, size, size), bilinear and antialiased (`regions.downsample`, batched)."""
    return F.interpolate(views, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
