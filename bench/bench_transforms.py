"""Per-worker throughput of the image-level view transforms, measured side by side in one run.

Each paper-scale example's own transform (`moco_views` / `simclr_views` / `byol_views` of the spec) runs on the same
COCO-sized random image in one thread (as one DataLoader worker does). Prints images/s per worker, the cost ratio
against the MoCo-v2 two-crop baseline, the workers needed to feed a given training speed, and the speed-up of the
OpenCV Gaussian blur (`sslcli.data.views.colour.GaussianBlur`) over torchvision's ``v2.GaussianBlur`` in the same pipeline.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_transforms.py --seconds 2 --target 1000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

import sslcli.data.views.colour as color
from sslcli.methods.byol.views import byol_views
from sslcli.methods.moco.views import moco_views
from sslcli.methods.simclr.views import simclr_views
from sslcli.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPECS = ["moco-v2_r50_b256_200ep_coco", "moco-v2-mc_r50_b256_200ep_coco", "moco-v2-mc-cc_r50_b256_200ep_coco",
         "moco-v2-mc-cc-m-aplus_r50_b256_200ep_coco", "simclr_r50_b256_200ep_coco", "byol_r50_b256_200ep_coco"]
VIEWS = {"moco": moco_views, "simclr": simclr_views, "byol": byol_views}


def images_per_second(transform, image: np.ndarray, seconds: float) -> float:
    for _ in range(3):  # warm-up
        transform({"image": image, "index": 0})
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        transform({"image": image, "index": n})
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="Timing per transform.")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--target", type=float, default=1000.0, help="Training images/s to feed (workers needed).")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    rates = {}
    for name in SPECS:
        spec = load_spec(EXAMPLES / f"{name}.yaml")
        rates[name] = images_per_second(VIEWS[spec.method.name](spec), image, args.seconds)
    base = rates[SPECS[0]]
    print(f"image {args.height}x{args.width}, one thread, {args.seconds:.1f} s per transform")
    print(f"{'spec':45s} {'img/s/worker':>13s} {'cost vs MoCo-v2':>16s} {'workers for ' + str(int(args.target)):>17s}")
    for name, rate in rates.items():
        print(f"{name:45s} {rate:13.1f} {base / rate:16.2f} {args.target / rate:17.1f}")
    # The same MoCo-v2 transform built with torchvision's blur, for the side-by-side ratio.
    spec = load_spec(EXAMPLES / f"{SPECS[0]}.yaml")
    fast = color.GaussianBlur
    color.GaussianBlur = lambda kernel_size, sigma: v2.GaussianBlur(kernel_size, sigma=sigma)
    try:
        reference = images_per_second(moco_views(spec), image, args.seconds)
    finally:
        color.GaussianBlur = fast
    print(f"MoCo-v2 views with torchvision's GaussianBlur: {reference:.1f} img/s/worker; "
          f"OpenCV blur speed-up {base / reference:.2f}x")


if __name__ == "__main__":
    main()
