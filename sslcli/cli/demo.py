"""`sslcli demo`: every stage of the tool on the embedded synthetic data, through the real CLI.

Each stage runs as its own `sslcli ... --json` subprocess, exactly as a user's shell script would, so the demo
proves the commands (not library shortcuts) work together. Stages share one working folder; rerunning reuses
finished outputs where the commands themselves resume (stores, checkpoints).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import typer
import yaml

from sslcli.cli.apps import app
from sslcli.cli.common import command, current
from sslcli.errors import SslcliError


@dataclass
class Stage:
    name: str
    args: list[str]
    show: tuple[str, ...]  # result keys worth a line in the summary


def _tiny_spec(out: Path, method: dict, name: str, steps: int, batch: int) -> Path:
    """A CPU-sized run spec on the synthetic data (resnet18 at width 16, 64 px)."""
    spec = {
        "spec_version": 1, "name": name,
        "data": {"root": str(out / "data"), "format": "coco", "split": "train2017", "image_size": 64, "workers": 0},
        "model": {"arch": "resnet18", "width": 16},
        "method": method,
        "optimizer": {"name": "sgd", "base_lr": 0.06, "weight_decay": 1e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0},
        "batch_size": batch, "epochs": 2, "max_steps": steps, "seed": 0,
        "output_dir": str(out / "runs" / name), "checkpoint_every": 1,
    }
    path = out / "specs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _stages(out: Path, images: int, steps: int) -> list[Stage]:
    data = out / "data"
    fh = out / "stores" / "fh.h5"
    boxes = out / "stores" / "ss.h5"
    moco = _tiny_spec(out, {"name": "moco", "queue_size": 256, "dim": 64, "hidden_dim": 128}, "moco-tiny", steps, 16)
    detcon = _tiny_spec(out, {"name": "detcon", "variant": "S", "dim": 64, "hidden_dim": 128, "num_samples": 8,
                              "masks": {"kind": "store", "path": str(fh)}}, "detcon-s-tiny", steps, 16)
    moco_ckpt = str(out / "runs" / "moco-tiny" / "last.pt")
    detcon_ckpt = str(out / "runs" / "detcon-s-tiny" / "last.pt")
    common = ["--data", str(data)]
    reports = out / "reports"
    cache = ["--cache", str(out / "cache")]
    return [
        Stage("synthetic data", ["prepare", "synthetic", str(data), "--images", str(images), "--force"],
              ("images", "objects_per_image")),
        Stage("FH masks", ["prepare", "masks", str(data), "--method", "fh", "--scales", "500", "--out", str(fh)],
              ("images", "regions_per_image")),
        Stage("selective-search boxes", ["prepare", "boxes", str(data), "--out", str(boxes)],
              ("images", "regions_per_image")),
        Stage("mask quality (ABO)", ["analyze", "abo", str(fh), "--gt", str(data)], ("abo",)),
        Stage("crop IoU", ["analyze", "crop-iou", str(data), "--pairs", "2000", "--out", str(reports / "crop-iou")],
              ("mean_iou",)),
        Stage("pretrain MoCo-v2", ["pretrain", str(moco), "--resume", "auto"], ("steps", "final_loss")),
        Stage("pretrain DetCon_S (FH masks)", ["pretrain", str(detcon), "--resume", "auto"], ("steps", "final_loss")),
        Stage("kNN probe", ["probe", "knn", moco_ckpt, *common, *cache, "--k", "10,20"], ("top1",)),
        Stage("linear probe", ["probe", "linear", moco_ckpt, *common, *cache, "--c-grid", "9"], ("top1", "map")),
        Stage("coupling rate", ["analyze", "coupling", moco_ckpt, detcon_ckpt, *common, "--pairs", "16",
                                "--out", str(reports / "coupling")], ("coupling",)),
        Stage("positional bias", ["analyze", "positional", moco_ckpt, detcon_ckpt, *common, "--objects", "16",
                                  "--out", str(reports / "positional")], ("mcs",)),
        Stage("object kNN", ["analyze", "oknn", moco_ckpt, *common, "--out", str(reports / "oknn")],
              ("top1", "top5")),
        Stage("export to detectron2", ["export", moco_ckpt, "--to", "detectron2", "--out", str(out / "moco.pkl")],
              ("keys",)),
    ]


def _run_stage(stage: Stage) -> dict:
    cmd = [sys.executable, "-m", "sslcli", *stage.args, "--json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SslcliError(f"demo stage '{stage.name}' failed (exit {proc.returncode}): {last}\n"
                          f"  command: sslcli {' '.join(stage.args)}")
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


@command(app, "demo")
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Working folder for data, stores, runs and reports."),
    images: int = typer.Option(64, "--images", help="Synthetic training images."),
    steps: int = typer.Option(20, "--steps", help="Training steps per pretraining run."),
):
    """Run every stage on generated data: synthetic scenes, masks and boxes, MoCo-v2 and DetCon pretraining,
    probes, analyses and export — each through the real CLI.

    Example: sslcli demo --out demo-out --images 64 --steps 20
    """
    out = out.resolve()
    results = {}
    for stage in _stages(out, images, steps):
        start = time.perf_counter()
        result = _run_stage(stage)
        seconds = time.perf_counter() - start
        results[stage.name] = {"seconds": round(seconds, 1), **result}
        shown = ", ".join(f"{k}={_fmt(result[k])}" for k in stage.show if k in result)
        current().info(f"[demo] {stage.name}: ok in {seconds:.1f}s {shown}")
    if not current().json:  # the per-stage lines above are the human summary
        return {"out": str(out), "stages_ok": len(results)}
    return {"out": str(out), "stages": results}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)
