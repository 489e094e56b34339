"""Engine efficiency: training images/s of `sslcli pretrain`'s engine vs the ceiling of the same passes alone.

Ceiling: the method's forward + backward + optimiser step + after_step on one pre-built batch already on the device
(no data loading, no lr schedule, no NaN check, no logging, no checkpoint). Engine: the real training loop
(`sslcli.engine.trainer.train`) reading JPEGs from disk with the spec's DataLoader workers, same spec, same batch,
same device. A third figure, the data pipeline alone (decode + augment + collate, one thread), tells how much of any gap is the
CPU cost of augmentation competing with compute for the same cores. Both are measured in this one run, alternating (ceiling, engine, ceiling, engine) so that load changes
on a shared machine hit both; the best of each is compared. The engine's first step (worker start-up) is excluded
from its own images/s, as in the result of `sslcli pretrain`.

    python bench/bench_engine.py                         # CPU: moco-v2-tiny at a compute-bound size
    python bench/bench_engine.py --device cuda           # GPU: MoCo-v2 ResNet-50, 224 px, bf16, batch 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sslcli.cli import common  # noqa: E402
from sslcli.data.scenes.synthetic import generate  # noqa: E402
from sslcli.engine.data import SKIPPED_KEY, build_loader  # noqa: E402
from sslcli.engine.trainer import Trainer, train  # noqa: E402
from sslcli.methods.base import StepInfo  # noqa: E402
from sslcli.spec import load_spec  # noqa: E402

PRESETS = {
    # CPU: the tiny MoCo twin made compute-bound enough to measure overhead rather than noise.
    "cpu": ("examples/moco-v2-tiny.yaml", ["model.width=32", "data.image_size=96", "batch_size=32",
                                            "method.queue_size=1024", "data.workers=1", "precision=fp32"]),
    # GPU: the paper-scale MoCo-v2 spec (ResNet-50, 224 px, bf16, batch 256).
    "cuda": ("examples/moco-v2_r50_b256_200ep_coco.yaml", ["data.workers=12", "precision=bf16"]),
}


def make_data(folder: Path, n_images: int, unique: int, size: int) -> Path:
    """A folder of ``n_images`` JPEGs: ``unique`` synthetic scenes, repeated as hard links (decode cost unchanged)."""
    scenes = folder / "scenes"
    generate(scenes, n_train=unique, n_val=0, seed=0, size=size)
    images = folder / "images"
    images.mkdir()
    sources = sorted((scenes / "train2017").glob("*.jpg"))
    for i in range(n_images):
        target = images / f"{i:06d}.jpg"
        try:
            os.link(sources[i % unique], target)
        except OSError:
            shutil.copyfile(sources[i % unique], target)
    return images


def ceiling(spec, device: torch.device, steps: int) -> float:
    """Images/s of forward + backward + optimiser step + after_step on one batch already on the device."""
    trainer = Trainer(spec, device)
    loader, sampler = build_loader(spec, trainer.method.transform(), 0, 1, 0, pin_memory=False)
    sampler.set_epoch(0)
    batch = next(iter(loader))
    batch.pop(SKIPPED_KEY)
    batch = trainer.to_device(batch)
    method, opt = trainer.method, trainer.optimizer
    spe = sampler.steps_per_epoch
    dtype = trainer.amp_dtype
    times = []
    for i in range(steps + 1):
        info = StepInfo(i, 0, spe, spe * spec.epochs)
        sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = method(batch, info)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(info)
        sync(device)
        times.append(time.perf_counter() - t)
    del loader
    return spec.batch_size / statistics.mean(times[1:])  # the first step warms up kernels and the allocator


def data_alone(spec, device: torch.device, batches: int) -> float:
    """Images/s of decoding + augmenting + collating in this process (one thread): the data pipeline's CPU cost."""
    trainer = Trainer(spec, device)
    serial = spec.model_copy(update={"data": spec.data.model_copy(update={"workers": 0})})
    loader, sampler = build_loader(serial, trainer.method.transform(), 0, 1, 0, pin_memory=False)
    sampler.set_epoch(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        t = time.perf_counter()
        for i, _ in enumerate(loader):
            if i + 1 == batches:
                break
        return batches * spec.batch_size / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)


def engine(spec, device: torch.device, steps: int, out: Path) -> float:
    if out.exists():
        shutil.rmtree(out)
    run = spec.model_copy(update={"max_steps": steps + 1, "output_dir": str(out)})
    return train(run, device)["images_per_s"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--spec", help="run spec (default: the device's preset)")
    parser.add_argument("--set", action="append", default=[], help="spec override, repeatable")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 8 / 20)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU (default: cores − workers)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU visible")
    preset_spec, preset_sets = PRESETS[device.type]
    probe = load_spec(REPO / (args.spec or preset_spec), [*preset_sets, *args.set, "data.root=.", "output_dir=."])
    if device.type == "cpu":
        # Same threads for ceiling and engine; by default the cores left over by the DataLoader workers.
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - probe.data.workers))
    steps = args.steps or (8 if device.type == "cpu" else 20)
    common._CURRENT = common.Output(quiet=True)
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        tmp = Path(tmp)
        n_images = probe.batch_size * (steps + 2)
        data = make_data(tmp, n_images, unique=min(n_images, 256), size=max(160, probe.data.image_size))
        spec = load_spec(REPO / (args.spec or preset_spec),
                         [*preset_sets, *args.set, f"data.root={data}", "data.format=folder", "epochs=2",
                          f"output_dir={tmp / 'run'}", "schedule.warmup_epochs=0"])
        data_rate = data_alone(spec, device, batches=min(steps, 4))
        print(f"data pipeline alone: {data_rate:.1f} img/s per worker", file=sys.stderr)
        ceilings, engines = [], []
        for r in range(args.rounds):
            ceilings.append(ceiling(spec, device, steps))
            engines.append(engine(spec, device, steps, tmp / "run"))
            print(f"round {r + 1}: ceiling {ceilings[-1]:.1f} img/s, engine {engines[-1]:.1f} img/s, "
                  f"ratio {engines[-1] / ceilings[-1]:.3f}", file=sys.stderr)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
              "method": spec.method.name, "arch": spec.model.arch, "width": spec.model.width,
              "image_size": spec.data.image_size, "batch_size": spec.batch_size, "precision": spec.precision,
              "workers": spec.data.workers, "steps": steps, "ceiling_images_per_s": max(ceilings),
              "engine_images_per_s": max(engines), "ratio": max(engines) / max(ceilings),
              "rounds": [round(e / c, 3) for e, c in zip(engines, ceilings)],
              "data_images_per_s_per_worker": data_rate,
              # Where the workers cannot get cores of their own, data and compute share the CPU: this is the bound.
              "ratio_if_data_shares_the_compute_cores": (1 / max(ceilings)) / (1 / max(ceilings) + 1 / data_rate)}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
