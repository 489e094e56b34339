"""Benchmark DetCon's cost, everything measured side by side in one run on the same batch and cores.

(a) Step time (forward + backward + SGD step) of DetCon_S vs SimCLR and DetCon_B vs BYOL on the *same* batch of real
    COCO views (the DetCon transform's views; SimCLR/BYOL read the same ``views``), interleaved repetitions, median.
    The paper's FLOP overheads are 5.3 % (DetCon_S) and 11.6 % (DetCon_B); the goal on CPU is under 12 %.
(b) The data side: DetCon's per-sample transform with the masks read from an FH store (three scales, one drawn per
    image) vs the same transform with the label maps already in memory; the difference per batch as a share of the
    DetCon_S step time (goal under 5 %). The store is built first from the same images (FH s = 500, 1000, 1500).

Usage: .venv/bin/python bench/bench_detcon.py [--data ../shared/data/tiny-coco] [--arch resnet50] [--size 224]
       [--batch 8] [--repeats 5]
Defaults are the paper's network (ResNet-50, 224 px, 16 masks, full-size heads); small batches keep CPU runs short
(the heads and mask pooling scale with the batch like the backbone does; only the loss grows faster, so its FLOPs are
also counted alone at --loss-batch 256).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import model_bench_parser  # bench/ is on sys.path when a script here runs

from sslcli.data.readers.sources import open_source
from sslcli.data.stores.store import encode, write_store
from sslcli.methods.base import StepInfo
from sslcli.methods.byol.method import BYOL
from sslcli.methods.detcon.method import Detcon
from sslcli.methods.simclr.method import SimCLR
from sslcli.proposals import fh
from sslcli.spec import parse_spec

SCALES = (500, 1000, 1500)


def build_store(source, count: int, path: Path) -> None:
    import json

    results = [encode(fh.compute_fh(source, i, SCALES, 0.8), "masks") for i in range(count)]
    totals = {"images": count, "payload": sum(len(r.payload) for r in results), "values": 0}
    write_store(path, "masks", {"method": "fh", "parameters": json.dumps({"scales": list(SCALES), "sigma": 0.8})},
                results, totals)


def make_spec(args, method: dict, root: Path):
    return parse_spec({"data": {"root": str(root), "image_size": args.size, "workers": 0},
                       "model": {"arch": args.arch, "width": args.width}, "method": method,
                       "batch_size": args.batch})


class InMemory:
    """A MaskSource stand-in holding every label map already decoded (what the store read is compared with)."""

    def __init__(self, store_source, samples):
        self.maps = {}
        for s in samples:
            indices = store_source.scale_indices()
            self.maps[str(s["image_id"])] = [store_source.store().label_map(s["image_id"], k) for k in indices]

    def label_map(self, sample):
        maps = self.maps[str(sample["image_id"])]
        return maps[int(torch.randint(len(maps), ()))]


def time_transform(transform, samples, repeats: int) -> float:
    """Best-of-repeats CPU seconds to transform the whole batch."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for s in samples:
            transform(s)
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = model_bench_parser(__doc__, batch=8, repeats=5)
    parser.add_argument("--loss-batch", type=int, default=256, help="batch per rank for the loss-alone FLOP count")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 by default: with one thread the process CPU time is the cost of the "
                             "work itself, little disturbed by other jobs on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    source = open_source(args.data, "train2017")
    samples = [source.sample(i) for i in range(args.batch)]

    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "fh.h5"
        start = time.perf_counter()
        build_store(source, args.batch, store_path)
        print(f"FH store for {args.batch} images, scales {SCALES}: built in {time.perf_counter() - start:.1f} s")
        masks = {"kind": "store", "path": str(store_path)}
        methods = {
            "simclr": SimCLR(make_spec(args, {"name": "simclr"}, args.data)),
            "detcon_s": Detcon(make_spec(args, {"name": "detcon", "variant": "S", "masks": masks}, args.data)),
            "byol": BYOL(make_spec(args, {"name": "byol"}, args.data)),
            "detcon_b": Detcon(make_spec(args, {"name": "detcon", "variant": "B", "masks": masks}, args.data)),
        }
        transform = methods["detcon_s"].transform()
        items = [transform(s) for s in samples]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        print(f"batch: {args.batch} images × 2 views of {args.size} px, {args.arch} width {args.width}, "
              f"{torch.get_num_threads()} thread(s); distinct ids per image in view 1 "
              f"(of {batch['masks'][0, 0].numel()} res5 cells): {[len(batch['masks'][i, 0].unique()) for i in range(args.batch)]}")

        # (a) step times, interleaved so that load changes on the shared machine hit every method alike.
        info = StepInfo(step=0, epoch=0, steps_per_epoch=100, total_steps=100)
        optimisers = {name: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                      for name, m in methods.items()}
        cpu: dict[str, list[float]] = {name: [] for name in methods}
        wall: dict[str, list[float]] = {name: [] for name in methods}
        for rep in range(args.repeats + 1):
            for name, method in methods.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                loss = method(dict(batch), info)["loss"]
                optimisers[name].zero_grad()
                loss.backward()
                optimisers[name].step()
                method.after_step(info)
                if rep:  # the first round warms up allocators and caches
                    cpu[name].append(time.process_time() - start_cpu)
                    wall[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) for name, t in cpu.items()}
        best = {name: min(t) for name, t in cpu.items()}
        med_wall = {name: statistics.median(t) for name, t in wall.items()}
        flops = {name: step_flops(method, batch, info) for name, method in methods.items()}
        print(f"\n(a) one training step (forward + backward + SGD step) on the same batch; {args.repeats} interleaved "
              "repeats")
        print("  method      GFLOP/step   CPU ms (min)   CPU ms (median)   wall ms (median)")
        for name in methods:
            print(f"  {name:9s} {flops[name] / 1e9:11.2f} {best[name] * 1000:14.1f} {med[name] * 1000:17.1f} "
                  f"{med_wall[name] * 1000:18.1f}")
        for a, b, paper in (("detcon_s", "simclr", 5.3), ("detcon_b", "byol", 11.6)):
            print(f"  {a} over {b}: FLOPs {(flops[a] / flops[b] - 1) * 100:+.1f} %, CPU time "
                  f"{(best[a] / best[b] - 1) * 100:+.1f} % (min) / {(med[a] / med[b] - 1) * 100:+.1f} % (median), "
                  f"wall {(med_wall[a] / med_wall[b] - 1) * 100:+.1f} %   (paper: +{paper} % FLOPs; goal < 12 %)")

        # The loss grows with the square of the batch: count it alone at the paper-scale batch per rank.
        per_image = {name: f / args.batch for name, f in flops.items()}
        for variant, dim, base in (("S", 128, "simclr"), ("B", 256, "byol")):
            loss_flops = loss_only_flops(args.loss_batch, 16, dim)
            print(f"  DetCon_{variant} loss alone at batch {args.loss_batch}: {loss_flops / 1e9:.1f} GFLOP = "
                  f"{loss_flops / (per_image[base] * args.loss_batch) * 100:.2f} % of {base}'s step at that batch")

        # (b) masks from the store vs masks already in memory, same transform otherwise.
        from_store = methods["detcon_s"].transform()
        in_memory = methods["detcon_s"].transform()
        in_memory.masks = InMemory(from_store.masks, samples)
        t_store = time_transform(from_store, samples, args.repeats)
        t_memory = time_transform(in_memory, samples, args.repeats)
        read_store = min(_time_reads(from_store.masks, samples) for _ in range(args.repeats))
        read_memory = min(_time_reads(in_memory.masks, samples) for _ in range(args.repeats))
        extra = max(read_store - read_memory, 0.0)
        print(f"\n(b) masks for the batch ({args.batch} images, one process, CPU time, best of {args.repeats})")
        print(f"  label maps read from the store: {read_store * 1000:8.1f} ms   in memory: {read_memory * 1000:.2f} ms")
        print(f"  store cost: {extra * 1000:.1f} ms per batch = {extra / med['detcon_s'] * 100:.2f} % of a DetCon_S "
              "step (goal < 5 %)")
        print(f"  whole DetCon transform (decode excluded): {t_store * 1000:.1f} ms with the store, "
              f"{t_memory * 1000:.1f} ms in memory = {t_store / med['detcon_s'] * 100:.1f} % of a step, before "
              "spreading it over DataLoader workers")
        shapes = [s["image"].shape[:2] for s in samples]
        print(f"  image sizes: {sorted(set(shapes))[:4]}{' ...' if len(set(shapes)) > 4 else ''}; "
              f"label ids per image (s=500): {[len(np.unique(m[0])) for m in in_memory.masks.maps.values()]}")


def step_flops(method, batch: dict, info: StepInfo) -> float:
    """FLOPs of one forward + backward (torch's FLOP counter: matmuls and convolutions, the paper's measure)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        method(dict(batch), info)["loss"].backward()
    method.zero_grad()
    return float(counter.get_total_flops())


def loss_only_flops(batch: int, samples: int, dim: int) -> float:
    """FLOPs of the DetCon loss (forward + backward) alone for ``batch`` images on one rank."""
    from torch.utils.flop_counter import FlopCounterMode

    from sslcli.losses.detcon import detcon_loss

    z1, z2 = (torch.randn(batch, samples, dim, requires_grad=True) for _ in range(2))
    ids1, ids2 = (torch.randint(0, 8, (batch, samples)) for _ in range(2))
    with FlopCounterMode(display=False) as counter:
        detcon_loss(z1, z2, z1, z2, ids1, ids2).backward()
    return float(counter.get_total_flops())


def _time_reads(mask_source, samples) -> float:
    start = time.process_time()
    for s in samples:
        mask_source.label_map(s)
    return time.process_time() - start


if __name__ == "__main__":
    main()
