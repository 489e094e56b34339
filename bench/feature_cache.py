"""Probe feature extraction: a cold run (network) vs a rerun that reads the HDF5 cache, side by side in one run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/feature_cache.py [--data ../shared/data/tiny-coco] [--arch resnet18]

Prints both wall times, their ratio and whether the cached features equal the computed ones bit for bit.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sslcli.cli.common import current
from sslcli.eval.features import Preprocess, extract_features
from sslcli.eval.labels import image_labels, open_split
from sslcli.models.backbone import build_backbone


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/tiny-coco"))
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    current().quiet = True
    torch.manual_seed(0)
    net = build_backbone(args.arch).eval()
    rows = image_labels(open_split(args.data, args.split))
    pre = Preprocess(args.image_size)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        cold, _ = extract_features(net, rows, pre, checkpoint_sha256="bench", cache_dir=cache, batch_size=args.batch_size)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        warm, _ = extract_features(net, rows, pre, checkpoint_sha256="bench", cache_dir=cache, batch_size=args.batch_size)
        warm_s = time.perf_counter() - start
    print(f"{len(rows)} images, {args.arch} at {args.image_size} px, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"cold (network): {cold_s:.2f} s   cached: {warm_s:.3f} s   ratio {cold_s / warm_s:.0f}x   "
          f"identical: {np.array_equal(cold, warm)}")


if __name__ == "__main__":
    main()
