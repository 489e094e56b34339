"""Benchmark SoCo's cost against BYOL (its image-level counterpart), measured side by side in one run.

(a) FLOPs of one training step (forward + backward of the online network, forward of the target) per image, counted
    with `torch.utils.flop_counter` on the same real COCO images: SoCo R50-C4 (V1, V2 at S, V3 at S/2; res5 runs on
    K RoIs of roi_size² per view) vs BYOL R50 (two views at S). Expected: SoCo's res5 work is K× BYOL's per view.
(b) CPU time of that step (min / median over interleaved repeats), one thread.
(c) The data side: SoCo's per-sample transform (store read + three views + K boxes) vs BYOL's two crops.

Usage: .venv/bin/python bench/bench_soco.py [--data ../shared/data/tiny-coco] [--size 224] [--batch 4] [--repeats 3]
The selective-search store for the benchmark images is built first in a temporary folder.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import model_bench_parser  # bench/ is on sys.path when a script here runs
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from sslcli.data.readers.sources import open_source
from sslcli.methods.base import StepInfo
from sslcli.methods.byol.method import BYOL
from sslcli.methods.soco.method import Soco
from sslcli.spec import parse_spec


def make_spec(args, method: dict, root: Path, c4: bool):
    return parse_spec({"data": {"root": str(root), "image_size": args.size, "workers": 0},
                       "model": {"arch": args.arch, "width": args.width, "c4": c4}, "method": method,
                       "batch_size": args.batch})


def step(method, batch, info) -> None:
    loss = method(dict(batch), info)["loss"]
    loss.backward()


def step_flops(method, batch, info) -> int:
    with FlopCounterMode(display=False) as counter:
        step(method, batch, info)
    method.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_transform(transform, samples, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for i, s in enumerate(samples):
            torch.manual_seed(i)
            transform(s)
        best = min(best, time.process_time() - start)
    return best / len(samples)


def main() -> None:
    parser = model_bench_parser(__doc__, batch=4, repeats=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    source = open_source(args.data, "train2017")
    samples = [source.sample(i) for i in range(args.batch)]

    with tempfile.TemporaryDirectory() as tmp:
        from typer.testing import CliRunner

        from sslcli.cli import app

        # The store over the whole (small) data set, exactly as a user makes it.
        store = Path(tmp) / "ss-soco.h5"
        start = time.perf_counter()
        result = CliRunner().invoke(app, ["prepare", "boxes", str(args.data), "--out", str(store)])
        assert result.exit_code == 0, result.stderr
        print(f"selective-search store for {len(source)} images: {time.perf_counter() - start:.1f} s")

        soco = Soco(make_spec(args, {"name": "soco", "boxes": str(store)}, args.data, c4=True))
        byol = BYOL(make_spec(args, {"name": "byol"}, args.data, c4=False))
        soco_t, byol_t = soco.transform(), byol.transform()
        soco_batch = default_collate([soco_t(s) for s in samples])
        byol_batch = default_collate([byol_t(s) for s in samples])
        info = StepInfo(step=0, epoch=0, steps_per_epoch=100, total_steps=100)
        k = soco.spec.method.boxes_per_image
        print(f"batch {args.batch} × {args.size} px, {args.arch} width {args.width}, K = {k} boxes, 1 thread")

        flops = {"soco": step_flops(soco, soco_batch, info), "byol": step_flops(byol, byol_batch, info)}
        print("\n(a) GFLOPs per image of one step (online forward + backward, target forward)")
        for name, f in flops.items():
            print(f"  {name:5s} {f / args.batch / 1e9:8.1f}")
        print(f"  ratio soco / byol: {flops['soco'] / flops['byol']:.2f}")

        cpu: dict[str, list[float]] = {"soco": [], "byol": []}
        for rep in range(args.repeats + 1):
            for name, method, batch in (("soco", soco, soco_batch), ("byol", byol, byol_batch)):
                start = time.process_time()
                step(method, batch, info)
                method.zero_grad(set_to_none=True)
                if rep:  # the first round warms up
                    cpu[name].append(time.process_time() - start)
        print(f"\n(b) CPU s per step (min / median of {args.repeats}, interleaved)")
        for name, times in cpu.items():
            print(f"  {name:5s} {min(times):7.2f} / {statistics.median(times):7.2f}")
        print(f"  ratio soco / byol (min): {min(cpu['soco']) / min(cpu['byol']):.2f}")

        per_soco, per_byol = time_transform(soco_t, samples, 3), time_transform(byol_t, samples, 3)
        print("\n(c) CPU ms per sample of the transform (best of 3)")
        print(f"  soco  {per_soco * 1e3:7.1f}   (store read + V1, V2, V3 + boxes)")
        print(f"  byol  {per_byol * 1e3:7.1f}   (two crops)")
        print(f"  ratio soco / byol: {per_soco / per_byol:.2f}")


if __name__ == "__main__":
    main()
