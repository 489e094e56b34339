"""How `prepare subset --kind oi-mini` scales: a synthetic OpenImages tree, timed stage by stage.

Prints each stage's time beside a bare `csv.reader` pass over the same box CSV (the floor any Python CSV reader
pays), and extrapolates to OpenImages V6 train (1.74M images, 14.6M boxes): the folder scan linearly in images, the rest
in box rows.

    OMP_NUM_THREADS=1 .venv/bin/python bench/subset_scale.py --images 20000 --boxes-per-image 8
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sslcli.cli.common import Output
from sslcli.data.readers import subsets
from sslcli.data.readers.coco_openimages import COCO_TO_OPENIMAGES

HEADER = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", "IsOccluded",
          "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]
OI_IMAGES, OI_BOXES = 1_743_042, 14_610_229  # OpenImages V6 train (boxable)


def build(root: Path, images: int, per_image: int, rng: np.random.Generator) -> list[str]:
    mids = [m.mid for m in COCO_TO_OPENIMAGES] + [f"/m/x{i:04d}" for i in range(520)]  # 600 classes
    (root / "train").mkdir()
    with open(root / "class-descriptions-boxable.csv", "w", newline="") as fh:
        csv.writer(fh).writerows((m, m) for m in mids)
    with open(root / "train-annotations-bbox.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        for n in range(images):
            image_id = f"{n:016x}"
            (root / "train" / f"{image_id}.jpg").touch()
            for c in rng.zipf(1.6, size=rng.poisson(per_image) + 1) % len(mids):
                writer.writerow([image_id, "xclick", mids[c], 1, 0.1, 0.5, 0.2, 0.6, 0, 0, 0, 0, 0])
    return mids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--boxes-per-image", type=float, default=8.0)
    args = parser.parse_args()
    import sslcli.cli.common as common

    common._CURRENT = Output(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, args.images, args.boxes_per_image, np.random.default_rng(0))
        coco = root / "coco.json"
        cats = [{"id": i, "name": m.coco} for i, m in enumerate(COCO_TO_OPENIMAGES)]
        anns = [{"id": i, "image_id": 0, "category_id": i % 80} for i in range(args.images * 2)]
        coco.write_text(json.dumps({"images": [{"id": 0}], "annotations": anns, "categories": cats}))

        t0 = time.perf_counter()
        with open(root / "train-annotations-bbox.csv", newline="") as fh:
            rows = sum(1 for _ in csv.reader(fh)) - 1
        bare = time.perf_counter() - t0
        timings = {}
        t0 = time.perf_counter()
        tree = subsets.read_openimages(root)
        timings["scan image folder"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels, _, _ = subsets.read_openimages_boxes(tree)
        timings["read box CSV"] = time.perf_counter() - t0
        counts = subsets.read_coco_counts(coco)
        t0 = time.perf_counter()
        subset = subsets.build_oi_mini(tree, counts, seed=0)
        timings["oi-mini total (reads CSV again + select + stats)"] = time.perf_counter() - t0
    print(f"{args.images} images, {rows} box rows; bare csv.reader pass {bare:.2f} s")
    for stage, seconds in timings.items():
        print(f"  {stage:50s} {seconds:7.2f} s  = {seconds / bare:5.2f} x bare csv pass")
    scan, build_time = timings["scan image folder"], timings["oi-mini total (reads CSV again + select + stats)"]
    full = scan * OI_IMAGES / args.images + build_time * OI_BOXES / rows  # folder scales with images, CSV with rows
    print(f"selected {subset.stats['images']} images; end to end {scan + build_time:.2f} s; linear extrapolation to "
          f"V6 train ({OI_IMAGES / 1e6:.2f}M images, {OI_BOXES / 1e6:.1f}M boxes): {full / 60:.1f} min")


if __name__ == "__main__":
    main()
