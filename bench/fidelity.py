"""Measure what still differs between sslcli and the authors' code (docs/detcon.md, docs/soco.md, docs/methods.md).

Each figure is computed here from the authors' procedure as their code describes it, next to sslcli's own transform.

Usage: .venv/bin/python bench/fidelity.py detcon [--data ../shared/data/tiny-coco]
       .venv/bin/python bench/fidelity.py soco --boxes BOXES.h5     (a store of the same images, `sslcli prepare boxes`)
       .venv/bin/python bench/fidelity.py moco
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import TINY_COCO  # bench/ is on sys.path when a script here runs
from torchvision import tv_tensors
from torchvision.transforms import v2

SHAPES = ((480, 640), (640, 427), (224, 224))


def authors_detcon_window(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """DetCon's `get_random_crop_window`: one draw, clipped; (top, left, h, w)."""
    area = rng.uniform(0.08, 1.0) * height * width
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(int(np.rint(math.sqrt(area * ratio))), width)
    h = min(int(np.rint(math.sqrt(area / ratio))), height)
    return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


def detcon(args) -> None:
    from sslcli.data.readers.sources import open_source
    from sslcli.data.views.label_maps import MaskSource
    from sslcli.methods.detcon.views import MaskViewPair, label_grid

    rng = np.random.default_rng(0)
    print("mean crop area (fraction of the image), 20,000 windows each: authors | sslcli authors | sslcli torchvision")
    for height, width in SHAPES:
        authors = np.mean([np.prod(authors_detcon_window(height, width, rng)[2:]) for _ in range(20_000)])
        row = []
        for sampler in ("authors", "torchvision"):
            crop = MaskViewPair(16, crop_sampler=sampler).geometry.transforms[0]
            torch.manual_seed(0)
            image = torch.zeros(1, height, width)
            row.append(np.mean([(lambda p: p["height"] * p["width"])(crop.make_params([image]))
                                for _ in range(20_000)]))
        print(f"  {height}x{width}: {authors / (height * width):.3f} | {row[0] / (height * width):.3f} | "
              f"{row[1] / (height * width):.3f}")

    # Resampling on the same windows of real COCO images and GT label maps, at 224 px.
    source = open_source(args.data, "train2017")
    masks = MaskSource("gt", None, None, 5, str(args.data), "train2017")
    size, mask_pixels, grid_cells, image_delta = 224, [], [], []
    for index in range(len(source)):
        sample = source.sample(index)
        labels = torch.from_numpy(masks.label_map(sample).astype(np.int64))
        pixels = torch.from_numpy(np.asarray(sample["image"])).permute(2, 0, 1)
        height, width = labels.shape
        for _ in range(4):
            top, left, h, w = authors_detcon_window(height, width, rng)
            window = labels[top:top + h, left:left + w][None, None].float()
            ours = v2.functional.resize(tv_tensors.Mask(labels[top:top + h, left:left + w]), [size, size],
                                        v2.InterpolationMode.NEAREST)
            # TF2's tf.image.resize(NEAREST_NEIGHBOR) samples pixel centres (half-pixel), torchvision's floor(i·scale).
            theirs = F.interpolate(window, size=(size, size), mode="nearest-exact")[0, 0].long()
            mask_pixels.append((ours.as_subclass(torch.Tensor) != theirs).float().mean().item())
            grid_cells.append((label_grid(ours.as_subclass(torch.Tensor), 7) != label_grid(theirs, 7)).float()
                              .mean().item())
            crop = pixels[:, top:top + h, left:left + w][None].float() / 255
            with_aa = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
            without = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=False).clamp(0, 1)
            image_delta.append((with_aa - without).abs().mean().item())
    print(f"mask resampling (floor vs half-pixel nearest), {len(mask_pixels)} crops of {len(source)} images: "
          f"{np.mean(mask_pixels):.4f} of the 224² mask pixels and {np.mean(grid_cells):.4f} of the 7×7 res5 cells "
          "get another id")
    print(f"image resampling (bicubic with vs without antialias), same crops: mean |Δ| = {np.mean(image_delta):.4f} "
          "of the [0, 1] range")


def soco(args) -> None:
    from sslcli.data.stores.store import RegionStore
    from sslcli.data.views.crops import sample_crop_box
    from sslcli.data.views.regions import overlapping, sanitize_boxes

    store = RegionStore(str(args.boxes))
    k, size, draws = 4, 224, 200
    none, fewer_half, padded, total, inv_w, cut_inside = 0, 0, 0, 0, [], []
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    for image_id in store.image_ids:
        height, width = store.image_size(image_id)
        boxes = sanitize_boxes(store.boxes(image_id), height, width)
        inv_w += (1 / (boxes[:, 2:] - boxes[:, :2])).flatten().tolist()
        for _ in range(draws):
            crop = sample_crop_box(height, width, (0.6, 1.0), (3 / 4, 4 / 3))
            seen = boxes[overlapping(boxes, crop)]
            total += 1
            none += int(len(seen) == 0)
            fewer_half += int(len(seen) < k // 2)
            padded += int(len(seen) < k)
            # The released C4 call: cut positions from the unflipped V2 boxes applied to the flipped view. Share of
            # the cut square that stays inside its own box (counted for flipped views only).
            if len(seen):
                x0, y0, x1, y1 = crop
                b = seen[int(rng.integers(len(seen)))].numpy()
                scale = np.array([size / (x1 - x0), size / (y1 - y0)] * 2)
                b = np.clip((b - np.array([x0, y0, x0, y0])) * scale, 0, size)
                side = round(math.sqrt(rng.uniform(0.1, 0.3) * (b[2] - b[0]) * (b[3] - b[1])))
                cx, cy = rng.uniform(b[0], b[2]), rng.uniform(b[1], b[3])
                mx = size - cx  # the mirrored centre
                ix = max(0.0, min(mx + side / 2, b[2]) - max(mx - side / 2, b[0]))
                iy = max(0.0, min(cy + side / 2, b[3]) - max(cy - side / 2, b[1]))
                cut_inside.append(ix * iy / max(side * side, 1))
    print(f"{len(store)} images × {draws} V2 crops (area 0.6–1): no proposal sees V2 in {none / total:.4f}; fewer "
          f"than K/2 = {k // 2} (the authors redraw) in {fewer_half / total:.4f}; fewer than K = {k} (padded) in "
          f"{padded / total:.4f}")
    print(f"box corners (authors one image pixel shorter): mean 1/w, 1/h over {len(inv_w) // 2} boxes = "
          f"{np.mean(inv_w):.4f} (relative side difference)")
    print(f"C4 cutout on flipped V2 views (half of them): mean share of the cut inside its box = "
          f"{np.mean(cut_inside):.3f} (sslcli: 1 up to clipping)")

    # Resizing: the authors' PIL bilinear (torchvision's PIL path) vs sslcli's tensor bilinear with antialias.
    from PIL import Image

    from sslcli.data.readers.sources import open_source
    from sslcli.data.views.crops import crop_resize

    source = open_source(args.data, "train2017")
    deltas = []
    for index in range(len(source)):
        image = np.asarray(source.load(index))
        height, width = image.shape[:2]
        for _ in range(4):
            x0, y0, x1, y1 = sample_crop_box(height, width, (0.6, 1.0), (3 / 4, 4 / 3))
            pil = Image.fromarray(image[y0:y1, x0:x1]).resize((size, size), Image.BILINEAR)
            ours = crop_resize(torch.from_numpy(image).permute(2, 0, 1), (x0, y0, x1, y1), size)
            deltas.append(np.abs(np.asarray(pil, np.float64) - ours.permute(1, 2, 0).numpy()).mean() / 255)
    print(f"V2 resize, PIL bilinear vs torchvision antialiased bilinear, {len(deltas)} crops: mean |Δ| = "
          f"{np.mean(deltas):.6f} of the [0, 1] range")


def moco(args) -> None:
    from sslcli.data.views.crops import overlap_fraction, sample_crop_box

    torch.manual_seed(0)
    height, width, tries = 480, 640, 20_000
    passes = {0.1: 0, 0.2: 0}
    for _ in range(tries):
        key = sample_crop_box(height, width, (0.2, 1.0), (3 / 4, 4 / 3))
        small = sample_crop_box(height, width, (0.05, 0.14), (3 / 4, 4 / 3))
        overlap = overlap_fraction(small, key)
        for threshold in passes:
            passes[threshold] += int(overlap >= threshold)
    print(f"CC, 480×640, one draw of a small crop (0.05–0.14) against a key crop (0.2–1): passes 0.1 in "
          f"{passes[0.1] / tries:.3f}, 0.2 in {passes[0.2] / tries:.3f}; fallback after 10 tries (unconstrained) in "
          f"{(1 - passes[0.1] / tries) ** 10:.2e} / {(1 - passes[0.2] / tries) ** 10:.2e} of small crops")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("detcon", "soco", "moco"))
    parser.add_argument("--data", type=Path, default=TINY_COCO)
    parser.add_argument("--boxes", type=Path, help="box store of --data (soco)")
    args = parser.parse_args()
    if args.what == "soco" and not args.boxes:
        parser.error("soco: --boxes is required (make one with `sslcli prepare boxes DATA --out BOXES.h5`)")
    {"detcon": detcon, "soco": soco, "moco": moco}[args.what](args)


if __name__ == "__main__":
    main()
