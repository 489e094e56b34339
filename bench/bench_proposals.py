"""Benchmark region proposals, everything measured side by side in one run on the same images and cores.

(a) selective search: the `prepare boxes` default (vectorized backend, diverse grouping), the vectorized backend with
    SoCo's single grouping, OpenCV's, and the `selectivesearch` package SoCo runs (the `reference` backend): seconds
    per image, speed ratio, and box recall@0.5 / ABO against the COCO GT boxes (raw and after SoCo's filter).
(b) `prepare masks --method fh` (the full runner: decode, FH per scale, compression, blocks, final store) vs bare
    `load_image` + `skimage.segmentation.felzenszwalb` calls on the same images: overhead in %.
(c) the same `prepare masks --method fh` run with --workers 1 vs 2: speed-up.

The images are the first --images of the --splits, in order (tiny-COCO: 50 train2017 + 50 val2017 = 100).
The last line sums up (a): `boxes: default <x>x reference speed, recall raw <a> vs <b>, filtered <c> vs <d>`.

Usage: .venv/bin/python bench/bench_proposals.py [--data ../shared/data/tiny-coco] [--images 100] [--repeats 1]
       [--skip masks]
Timings take the best of --repeats (other jobs share this machine's cores).
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from skimage.segmentation import felzenszwalb  # noqa: E402

from sslcli.analysis.quality import boxes_best_overlaps, summarize_overlaps  # noqa: E402
from sslcli.cli import common  # noqa: E402
from sslcli.data.readers.images import load_image  # noqa: E402
from sslcli.data.readers.sources import open_source, write_manifest  # noqa: E402
from sslcli.proposals import fh  # noqa: E402
from sslcli.proposals.filters import soco_filter  # noqa: E402
from sslcli.proposals.runner import Job, run_job  # noqa: E402
from sslcli.proposals.selective_search import selective_search  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def interleaved_best(repeats: int, jobs: dict) -> dict[str, float]:
    """Best wall time of each job over ``repeats`` rounds, the jobs alternating within a round (fairer on a shared
    machine than timing one job's repeats, then the next's)."""
    best = {name: float("inf") for name in jobs}
    for _ in range(repeats):
        for name, fn in jobs.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


# name -> (backend, strategies); the first is `prepare boxes`' default, "reference" is SoCo's package.
BOX_VARIANTS = {"default (vectorized, diverse)": ("vectorized", "diverse"),
                "vectorized, soco grouping": ("vectorized", "soco"),
                "opencv": ("opencv", "soco"),
                "reference (package)": ("reference", "soco")}


def bench_boxes(images: list, repeats: int) -> str:
    """(a): one line per variant; returns the summary line (default against the package)."""
    print(f"(a) selective search, one process, per image ({len(images)} images)")
    gt = [np.array([x.box for x in source.instances(i) if not x.iscrowd and x.box[2] > x.box[0]
                    and x.box[3] > x.box[1]], np.float64).reshape(-1, 4) for source, i in images]
    pixels = [source.load(i) for source, i in images]
    outputs: dict[str, list[np.ndarray]] = {}

    def run(name: str) -> None:
        outputs[name] = [selective_search(image, *BOX_VARIANTS[name]) for image in pixels]

    seconds = interleaved_best(repeats, {name: (lambda name=name: run(name)) for name in BOX_VARIANTS})
    figures = {}
    for name in BOX_VARIANTS:
        raw = outputs[name]
        filtered = [soco_filter(boxes, *image.shape[:2]) for boxes, image in zip(raw, pixels)]
        q_raw = summarize_overlaps(np.concatenate([boxes_best_overlaps(g, b) for g, b in zip(gt, raw)]))
        q_soco = summarize_overlaps(np.concatenate([boxes_best_overlaps(g, b) for g, b in zip(gt, filtered)]))
        figures[name] = (seconds[name] / len(images), q_raw["recall@0.5"], q_soco["recall@0.5"])
        print(f"  {name:30s} {figures[name][0]:6.3f} s/image  boxes/image raw {np.mean([len(r) for r in raw]):6.1f} "
              f"filtered {np.mean([len(r) for r in filtered]):5.1f}  recall@0.5 raw {q_raw['recall@0.5']:.3f} "
              f"filtered {q_soco['recall@0.5']:.3f}  ABO raw {q_raw['abo']:.3f} filtered {q_soco['abo']:.3f} "
              f"({q_raw['instances']} GT boxes)")
    default, package = figures[next(iter(BOX_VARIANTS))], figures["reference (package)"]
    return (f"boxes: default {package[0] / default[0]:.1f}x reference speed, recall raw {default[1]:.3f} vs "
            f"{package[1]:.3f}, filtered {default[2]:.3f} vs {package[2]:.3f}")


def bench_masks(images: list, repeats: int, scales: list[int]):
    print(f"(b, c) FH masks, scales {scales}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-proposals-"))
    try:
        manifest = tmp / "images.json"
        root = images[0][0].root
        write_manifest(manifest, root, [str(Path(source.records[i].path).relative_to(root)) for source, i in images])
        subset = open_source(manifest)
        job = Job("masks", "fh", {"scales": scales, "min_sizes": scales, "sigma": fh.DEFAULT_SIGMA})

        def bare():
            for rec in subset.records:
                image = load_image(rec.path)
                for s in scales:
                    felzenszwalb(image, scale=s, sigma=fh.DEFAULT_SIGMA, min_size=s)

        def ours(workers):
            out = tmp / f"fh-w{workers}.h5"
            out.unlink(missing_ok=True)
            run_job(subset, out, job, functools.partial(fh.compute_fh, scales=tuple(scales), sigma=fh.DEFAULT_SIGMA),
                    workers=workers, flush_every=4)

        best = interleaved_best(repeats, {"bare": bare, "w1": lambda: ours(1), "w2": lambda: ours(2)})
        t_bare, t_ours1, t_ours2 = best["bare"], best["w1"], best["w2"]
        n = len(images)
        print(f"  bare load_image + felzenszwalb: {n / t_bare:6.2f} images/s")
        print(f"  prepare masks --workers 1:      {n / t_ours1:6.2f} images/s  overhead "
              f"{100 * (t_ours1 / t_bare - 1):+.1f} %")
        print(f"  prepare masks --workers 2:      {n / t_ours2:6.2f} images/s  speed-up vs 1 worker "
              f"{t_ours1 / t_ours2:.2f}x")
        # The serial share: CPU the parent spends (collecting, writing shards and the store) against the workers'.
        self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        ours(2)
        self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        parent = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
        workers = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        serial = parent / (parent + workers)
        print(f"  --workers 2 CPU: parent {parent:.2f} s, workers {workers:.2f} s; serial share {100 * serial:.1f} % "
              f"-> Amdahl bound on 2 idle cores {1 / (serial + (1 - serial) / 2):.2f}x (derived, not measured)")
        same = (tmp / "fh-w1.h5").read_bytes() == (tmp / "fh-w2.h5").read_bytes()
        print(f"  stores from 1 and 2 workers byte-identical: {same}")
    finally:
        shutil.rmtree(tmp)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tiny-coco"))
    parser.add_argument("--splits", default="train2017,val2017", help="COCO splits, comma-separated, in order")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--scales", default="500,1000,1500")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: boxes, masks")
    args = parser.parse_args()
    common._CURRENT = common.Output(quiet=True)
    images = [(source, i) for source in (open_source(args.data, split) for split in args.splits.split(","))
              for i in range(len(source))][:args.images]
    print(f"{len(images)} images from {args.data} ({args.splits}); {os.cpu_count()} CPU cores visible "
          f"(shared with other jobs); load average {os.getloadavg()[0]:.1f} at start")
    if "masks" not in args.skip:
        bench_masks(images, args.repeats, [int(s) for s in args.scales.split(",")])
    if "boxes" not in args.skip:
        print(bench_boxes(images, args.repeats))  # the summary is the last line


if __name__ == "__main__":
    main()
