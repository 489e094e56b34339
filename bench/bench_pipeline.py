"""Data-pipeline throughput on real JPEGs (tiny-COCO): the CPU path per core, old vs new, and the device pipeline.

1. CPU, one thread (= one DataLoader worker), img per CPU second, measured alternately in one run, for MoCo-v2
   (2 × 224 px), MoCo-v2 + multi-crop (2 × 160 + 4 × 96), DetCon_S (2 × 224 px + label maps: 5×5 grid masks) and
   SoCo (paper recipe, 224 + 224 + 112 px, 4 boxes per view from 64 proposals per image):
   - old: the CPU path before issue 14: full decode (OpenCV), the views on the decoded array with torchvision's
     photometric pipeline (v2.ColorJitter with its tensor hue, v2 grayscale / solarize / normalise);
   - new: the current CPU path: `EncodedImage` (MoCo: decoded at 1/2, 1/4, 1/8 when every crop keeps its output
     size) and `sslcli.data.views.colour.OpenCvColour` (the same draws and pixels within 5e-5, computed with OpenCV);
   - gpu-pipeline worker: what a worker does with ``data.pipeline: gpu`` (read bytes, header, draw parameters,
     DetCon: read the label map; SoCo: compute the boxes).
   SoCo's proposals are random boxes made here (the views' cost does not depend on where boxes come from, and a
   selective-search store of tiny-COCO would take minutes to build); DetCon's masks are the grid source.
2. With ``--device`` (cuda, or cpu with ``--engine`` to run the same code at a tiny size):
   - device pipeline: batched decode alone, and decode + views (`DeviceViews.apply`) for MoCo-v2, MC, DetCon, SoCo
     and D3SSL, img/s on the device;
   - the backbone ceiling (bench_engine.ceiling: forward + backward + step on one batch already on the device) and
     the engine's img/s (`launch`, the real loop reading the JPEGs) for each of ``--pipelines`` (MoCo-v2; default
     cpu,gpu): ``cpu``, ``gpu``, ``cache`` (``data.pipeline: gpu`` with ``data.cache: device``: the images decoded
     once at start and held on the device) and ``cache-memory`` (``data.cache: memory``: held in host memory).
The last line is ``pipeline: cpu <new> img/s/core vs <old> img/s/core = <ratio>x`` (MoCo-v2); ``--engine-only``
runs the ceiling and the engine alone (no per-core or device-pipeline sections, so no such line): the engine-vs-ceiling
phase of bench/gpu_evidence.sh.

    python bench/bench_pipeline.py                    # CPU per core only (~1 min)
    python bench/bench_pipeline.py --device cuda      # + device pipelines, ceiling, engine: MoCo-v2 R50 224 bf16 b256
    python bench/bench_pipeline.py --device cpu --engine --size 32 --arch resnet18 --width 8 --batch 4 --steps 1 \\
        --seconds 0 --rounds 1 --images 4 --workers 1 # the cuda mode's code, tiny, on CPU (tests/test_bench_pipeline.py)
    python bench/bench_pipeline.py --device cuda --engine-only --pipelines cpu,gpu,cache   # bench/gpu_evidence.sh
    python bench/bench_pipeline.py --device cuda --pipelines cpu,gpu,cache,cache-memory   # + the image cache
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_engine import ceiling, sync  # noqa: E402
from common import TINY_COCO  # noqa: E402

from sslcli.cli import common as cli_common  # noqa: E402
from sslcli.data.readers.images import EncodedImage, load_image  # noqa: E402
from sslcli.data.readers.sources import write_manifest  # noqa: E402
from sslcli.data.views.colour import torchvision_colour_transform  # noqa: E402
from sslcli.data.views.device_crops import ImageDeviceViews  # noqa: E402
from sslcli.data.views.device_ops import DeviceViews, decode_batch  # noqa: E402
from sslcli.data.views.label_maps import MaskSource  # noqa: E402
from sslcli.data.views.regions import RegionViews  # noqa: E402
from sslcli.data.views.stored_boxes import StoredBoxViews  # noqa: E402
from sslcli.engine.data import collate  # noqa: E402
from sslcli.engine.launch import launch  # noqa: E402
from sslcli.methods.d3ssl.views import D3sslDeviceViews, D3sslViews  # noqa: E402
from sslcli.methods.detcon.views import COLOUR_PRESETS, DetconTransform, MaskDeviceViews, MaskViewPair  # noqa: E402  # noqa: E402
from sslcli.methods.moco.views import moco_views  # noqa: E402
from sslcli.methods.soco.views import BoxDeviceViews  # noqa: E402
from sslcli.spec import load_spec  # noqa: E402

EXAMPLES = REPO / "examples"
VIEW_SPECS = {"MoCo-v2": "moco-v2_r50_b256_200ep_coco", "MoCo-v2 MC": "moco-v2-mc_r50_b256_200ep_coco"}
# What the engine section runs for each name of --pipelines: cache = the images decoded once and held on the device,
# cache-memory = held in host memory (data.cache).
PIPELINE_SETS = {"cpu": ["data.pipeline=cpu"], "gpu": ["data.pipeline=gpu"],
                 "cache": ["data.pipeline=gpu", "data.cache=device"],
                 "cache-memory": ["data.pipeline=gpu", "data.cache=memory"]}


def rate(step, items: list, seconds: float) -> float:
    """Items per CPU second of ``step(item)`` over ``items`` (cycled) for about ``seconds`` of wall time, after one
    warm-up item. CPU time (one thread) is the cost per core; wall time would also measure how much of a core a shared
    machine's other jobs left this process."""
    step(items[0])
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while n < len(items) or time.perf_counter() - start < seconds:
        step(items[n % len(items)])
        n += 1
    return n / max(time.process_time() - cpu, 1e-9)


class RandomProposals:
    """A box store stand-in: ``per_image`` random boxes per image (seeded by its name), at the header's size."""

    path = "random-proposals"

    def __init__(self, paths: list[Path], per_image: int = 64):
        self.sizes = {p.name: (lambda e: (e.height, e.width))(EncodedImage.read(p)) for p in paths}
        self.per_image = per_image

    def image_size(self, image_id):
        return self.sizes[image_id]

    def boxes(self, image_id):
        h, w = self.sizes[image_id]
        rng = np.random.default_rng(zlib.crc32(str(image_id).encode()))
        xy = rng.uniform(0, 1, (self.per_image, 2)) * [w * 0.8, h * 0.8]
        wh = rng.uniform(0.1, 0.5, (self.per_image, 2)) * [w, h]
        return np.concatenate([xy, np.minimum(xy + wh, [w, h])], axis=1).astype(np.float32)


def old_colours(augs, size: int) -> list:
    """The photometric pipelines before issue 14: the uint8 view scaled to float by torch, then torchvision's
    v2.ColorJitter (tensor hue) and v2 ops."""
    def old(compose):
        return lambda view: compose(view.float() / 255)

    return [old(torchvision_colour_transform(aug, size, jitter=v2.ColorJitter)) for aug in augs]


def view_makers(paths: list[Path], size: int) -> dict[str, tuple]:
    """Per view spec: (old transform, new transform, gpu-pipeline worker, sample builder for decoded pixels)."""
    makers = {}
    for label, name in VIEW_SPECS.items():
        spec = load_spec(EXAMPLES / f"{name}.yaml", ["data.root=.", f"data.image_size={size}"])
        old, new = moco_views(spec), moco_views(spec)
        old.large_colours = tuple(old_colours(old.colours, old.large_size))
        if old.n_small:
            old.small_colour = old_colours(old.colours[:1], old.small_size)[0]
        makers[label] = (old, new, ImageDeviceViews(new), "moco")
    masks = MaskSource("grid", grid=5)
    old_pair, new_pair = MaskViewPair(size, "S"), MaskViewPair(size, "S")
    old_pair._pipelines = (old_pair._build()[0], old_colours(COLOUR_PRESETS["S"], size))
    grid_side = -(-size // 32)  # res5 of the ImageNet stem, as the bench's DetCon spec trains it
    new = DetconTransform(masks, new_pair, grid_side)
    makers["DetCon_S"] = (DetconTransform(masks, old_pair, grid_side), new, MaskDeviceViews(new), "region")
    store = RandomProposals(paths)
    old_views, new_views = RegionViews(size), RegionViews(size)
    old_views._colours = tuple(old_colours(old_views.colours, size))
    new = StoredBoxViews(store, new_views)
    makers["SoCo"] = (StoredBoxViews(store, old_views), new, BoxDeviceViews(new), "region")
    return makers


def cpu_per_core(paths: list[Path], args) -> dict[str, dict[str, float]]:
    """img/s in one thread for old / new / gpu-worker, per view spec; best of ``rounds`` alternating rounds."""
    torch.set_num_threads(1)
    results = {}
    for label, (old, new, worker, kind) in view_makers(paths, args.size).items():
        if kind == "moco":
            variants = {
                "old": lambda p, v=old: v({"image": load_image(p), "index": 0}),
                "new": lambda p, v=new: v({"image": EncodedImage.read(p), "index": 0}),
            }
        else:  # the region methods' CPU paths decode in full (their crops rarely allow a reduced decode)
            variants = {
                "old": lambda p, v=old: v({"image": load_image(p), "index": 0, "image_id": p.name}),
                "new": lambda p, v=new: v({"image": load_image(p), "index": 0, "image_id": p.name}),
            }
        variants["gpu-worker"] = lambda p, w=worker: w({"image": EncodedImage.read(p), "index": 0,
                                                        "image_id": p.name})
        best = dict.fromkeys(variants, 0.0)
        for _ in range(args.rounds):
            for key, fn in variants.items():
                best[key] = max(best[key], rate(fn, paths, args.seconds))
        results[label] = best
        print(f"{label:12s} one thread: old {best['old']:7.1f}  new {best['new']:7.1f}  "
              f"({best['new'] / best['old']:.2f}x)  gpu-pipeline worker {best['gpu-worker']:7.1f} img/s/core",
              flush=True)
    return results


def device_pipelines(paths: list[Path], size: int, batch: int) -> dict[str, DeviceViews]:
    """The device views of every method at ``size`` (D3SSL on SoCo's random proposals)."""
    out = {label: worker for label, (_, _, worker, _) in view_makers(paths, size).items()}
    out["D3SSL"] = D3sslDeviceViews(StoredBoxViews(RandomProposals(paths), D3sslViews(size)))
    return out


def device_pipeline(paths: list[Path], views: DeviceViews, batch_size: int, device: torch.device, batches: int,
                    decode: bool) -> tuple[float, float | None]:
    """(decode + views, decode alone or None) img/s of ``views.apply`` on ``device``, batches sampled beforehand."""
    torch.manual_seed(0)
    samples = [views({"image": EncodedImage.read(paths[i % len(paths)]), "index": i,
                      "image_id": paths[i % len(paths)].name}) for i in range(batch_size)]
    batch = collate(samples)

    def decode_only():
        decode_batch(batch["encoded"], batch["jpeg"].tolist(), batch["orientation"].tolist(), batch["path"],
                     [tuple(s) for s in batch["size"].tolist()], device)

    rates = []
    for fn in (lambda: views.apply(batch, device), decode_only)[:2 if decode else 1]:
        fn()  # warm-up (nvJPEG handles, cuDNN/conv kernels)
        sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            fn()
        sync(device)
        rates.append(batches * batch_size / (time.perf_counter() - start))
    return rates[0], (rates[1] if decode else None)


def engine_rate(spec, out: Path) -> float:
    if out.exists():
        shutil.rmtree(out)
    return launch(spec.model_copy(update={"output_dir": str(out)}))["images_per_s"]


def engine_section(paths: list[Path], args) -> None:
    """Device pipelines (unless --engine-only), the backbone ceiling and the engine for each of --pipelines."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU visible")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    workers = args.workers if args.workers is not None else max(1, min(12, (os.cpu_count() or 2) - 2))
    cli_common._CURRENT = cli_common.Output(quiet=True)
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        tmp = Path(tmp)
        # A manifest repeating the real JPEGs so that every step reads a full batch from disk.
        n = args.batch * (args.steps + 3)
        manifest = tmp / "images.json"
        write_manifest(manifest, paths[0].parent, [paths[i % len(paths)].name for i in range(n)])
        sets = [f"data.root={manifest}", "data.format=manifest", f"data.image_size={args.size}",
                f"data.workers={workers}", f"model.arch={args.arch}", f"model.width={args.width}",
                f"batch_size={args.batch}", "epochs=2",
                f"max_steps={args.steps + 1}", "schedule.warmup_epochs=0", f"output_dir={tmp / 'run'}",
                f"precision={'bf16' if device.type == 'cuda' else 'fp32'}",
                f"data.pin_memory={device.type == 'cuda'}"]
        spec = load_spec(EXAMPLES / f"{VIEW_SPECS['MoCo-v2']}.yaml", sets)
        # Each section reports its own failure and the next one still runs: one GPU session gets every figure
        # that can be measured.
        if not args.engine_only:
            device_sections(paths, args, device, name)
        ceil = ceiling(spec, device, args.steps)
        print(f"backbone ceiling ({args.arch} w{args.width}, {args.size} px, {spec.precision}, batch "
              f"{args.batch}) on {name}: {ceil:.1f} img/s", flush=True)
        for label in args.pipelines.split(","):
            try:
                engine = engine_rate(load_spec(EXAMPLES / f"{VIEW_SPECS['MoCo-v2']}.yaml",
                                               [*sets, *PIPELINE_SETS[label]]), tmp / "run")
            except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                print(f"engine, data.pipeline: {label} FAILED: {type(exc).__name__}: {exc}", flush=True)
                continue
            print(f"engine, data.pipeline: {label}, {workers} workers: {engine:.1f} img/s = "
                  f"{engine / ceil:.2f} of the ceiling", flush=True)


def device_sections(paths: list[Path], args, device: torch.device, name: str) -> None:
    for k, (label, views) in enumerate(device_pipelines(paths, args.size, args.batch).items()):
        try:
            rate_views, rate_decode = device_pipeline(paths, views, args.batch, device,
                                                      max(2, args.steps // 4), decode=k == 0)
            if rate_decode is not None:
                print(f"device pipeline on {name}: nvJPEG decode alone {rate_decode:.1f} img/s", flush=True)
            print(f"device pipeline on {name}: decode + {label} views {rate_views:.1f} img/s", flush=True)
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on
            print(f"device pipeline {label} FAILED: {type(exc).__name__}: {exc}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=TINY_COCO)
    parser.add_argument("--images", type=int, default=None, help="use the first N JPEGs only (smoke runs)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="also measure the device pipeline")
    parser.add_argument("--engine", action="store_true", help="with --device cpu: run the device/engine part too")
    parser.add_argument("--seconds", type=float, default=2.0, help="per CPU measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (ceiling and engine)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores − 2, ≤ 12)")
    parser.add_argument("--engine-only", action="store_true", help="with --device: the ceiling and the engine only")
    parser.add_argument("--pipelines", default="cpu,gpu",
                        help=f"what the engine runs, comma-separated, of {', '.join(PIPELINE_SETS)}")
    args = parser.parse_args()
    if args.engine_only and args.device is None:
        parser.error("--engine-only needs --device cuda or cpu")
    unknown = [name for name in args.pipelines.split(",") if name not in PIPELINE_SETS]
    if unknown:
        parser.error(f"--pipelines: {', '.join(unknown)}: expected names from {', '.join(PIPELINE_SETS)}")

    args.data = args.data.resolve()  # the engine runs from a scratch folder: a relative root would not be found
    paths = sorted((args.data / "train2017").glob("*.jpg"))[:args.images]
    if not paths:
        sys.exit(f"{args.data}: no train2017/*.jpg (tiny-COCO expected)")
    print(f"{len(paths)} JPEGs from {args.data}; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start", flush=True)
    cpu = {} if args.engine_only else cpu_per_core(paths, args)

    if args.device == "cuda" or (args.device == "cpu" and (args.engine or args.engine_only)):
        engine_section(paths, args)
    if args.engine_only:
        return
    old, new = cpu["MoCo-v2"]["old"], cpu["MoCo-v2"]["new"]
    print(f"pipeline: cpu {new:.1f} img/s/core vs {old:.1f} img/s/core = {new / old:.2f}x")


if __name__ == "__main__":
    main()
