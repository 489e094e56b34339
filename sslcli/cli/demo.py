"""`sslcli demo`: every stage of the tool on the embedded synthetic data, through the real CLI.

Each stage runs as its own `sslcli ... --json` subprocess, exactly as a user's shell script would, so the demo
proves the commands (not library shortcuts) work together. The working folder is scratch: a rerun replaces a folder
an earlier demo made (it carries a marker file) and refuses any other non-empty folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer
import yaml

from sslcli.cli.apps import app
from sslcli.cli.common import command, current
from sslcli.errors import InputError, SslcliError

MARKER = ".sslcli-demo"


@dataclass
class Stage:
    name: str
    args: list[str]
    summary: Callable[[dict], str]  # the figures worth a line, from the stage's JSON result


def _tiny_spec(out: Path, method: dict, name: str, steps: int, batch: int, images: int, c4: bool = False) -> Path:
    """A CPU-sized run spec on the synthetic data (resnet18 at width 16, 64 px), ``steps`` steps long."""
    epochs = max(1, -(-steps * batch // images))  # enough epochs for the steps, so the schedule spans the run
    spec = {
        "spec_version": 1, "name": name,
        "data": {"root": str(out / "data"), "format": "coco", "split": "train2017", "image_size": 64, "workers": 0},
        "model": {"arch": "resnet18", "width": 16, "c4": c4},
        "method": method,
        "optimizer": {"name": "sgd", "base_lr": 0.06, "weight_decay": 1e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0},
        "batch_size": batch, "epochs": epochs, "max_steps": steps, "seed": 0,
        "output_dir": str(out / "runs" / name), "checkpoint_every": 1,
    }
    path = out / "specs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _keys(*keys: str) -> Callable[[dict], str]:
    return lambda r: ", ".join(f"{k}={_fmt(r[k])}" for k in keys if k in r)


def _per_layer(r: dict) -> str:
    """Mean CR / MCS per layer and checkpoint: 'moco-tiny res2..res5 1.00 1.00 0.99 0.97; ...'."""
    parts = []
    for ckpt in r.get("checkpoints", []):
        parts.append(f"{ckpt['label']} res2..res5 " + " ".join(f"{v['mean']:.3f}" for v in ckpt["layers"].values()))
    return "; ".join(parts)


def _knn(r: dict) -> str:
    return ", ".join(f"k={k}: " + _keys("top1", "mAP")(v) for k, v in r.get("k", {}).items())


def _oknn(r: dict) -> str:
    return "; ".join(f"{c['label']} " + _keys("top1", "top5")(c["clean"]) for c in r.get("checkpoints", []))


def _study(r: dict) -> str:
    verdicts = r.get("report", {}).get("expectations", [])
    return f"{r.get('rows', 0)} result rows; " + "; ".join(
        f"{v['metric']} {v['arm']} {v['direction']} than {v['than']}: {v['verdict']}" for v in verdicts)


def tiny_study_file() -> Path:
    """studies/tiny.yaml of the repository this sslcli runs from (the studies are not part of the wheel)."""
    path = Path(__file__).resolve().parents[2] / "studies" / "tiny.yaml"
    if not path.is_file():
        raise SslcliError(f"{path}: the tiny study is not here (it ships with the repository, not the package); "
                          "run the demo from a checkout of the repository")
    return path


def _stages(out: Path, images: int, steps: int) -> list[Stage]:
    data = out / "data"
    fh = out / "stores" / "fh.h5"
    boxes = out / "stores" / "ss.h5"
    moco = _tiny_spec(out, {"name": "moco", "queue_size": 256, "dim": 64, "hidden_dim": 128}, "moco-tiny",
                      steps, 16, images)
    detcon = _tiny_spec(out, {"name": "detcon", "variant": "S", "dim": 64, "hidden_dim": 128, "num_samples": 8,
                              "masks": {"kind": "store", "path": str(fh)}}, "detcon-s-tiny", steps, 16, images)
    soco = _tiny_spec(out, {"name": "soco", "boxes": str(boxes), "dim": 64, "hidden_dim": 128}, "soco-tiny",
                      steps, 16, images, c4=True)
    d3ssl = _tiny_spec(out, {"name": "d3ssl", "boxes": str(boxes), "dim": 64, "hidden_dim": 128, "bank_size": 1024},
                       "d3ssl-tiny", steps, 16, images, c4=True)
    moco_ckpt = str(out / "runs" / "moco-tiny" / "last.pt")
    detcon_ckpt = str(out / "runs" / "detcon-s-tiny" / "last.pt")
    soco_ckpt = str(out / "runs" / "soco-tiny" / "last.pt")
    d3ssl_ckpt = str(out / "runs" / "d3ssl-tiny" / "last.pt")
    common = ["--data", str(data)]
    reports = out / "reports"
    cache = ["--cache", str(out / "cache")]
    return [
        Stage("synthetic data", ["prepare", "synthetic", str(data), "--images", str(images), "--force"],
              _keys("images", "objects_per_image")),
        Stage("FH masks", ["prepare", "masks", str(data), "--method", "fh", "--scales", "500", "--out", str(fh)],
              _keys("images", "status")),
        Stage("selective-search boxes", ["prepare", "boxes", str(data), "--out", str(boxes)],
              _keys("images", "status")),
        Stage("mask quality (ABO)", ["analyze", "abo", str(fh), "--gt", str(data)], _keys("abo", "recall@0.5")),
        Stage("crop IoU", ["analyze", "crop-iou", str(data), "--pairs", "2000", "--out", str(reports / "crop-iou")],
              _keys("mean_iou", "fraction_no_overlap")),
        Stage("pretrain MoCo-v2", ["pretrain", str(moco)], _keys("steps", "final_loss")),
        Stage("pretrain DetCon_S (FH masks)", ["pretrain", str(detcon)],
              _keys("steps", "final_loss")),
        Stage("pretrain SoCo (boxes)", ["pretrain", str(soco)], _keys("steps", "final_loss")),
        Stage("pretrain D3SSL (boxes)", ["pretrain", str(d3ssl)], _keys("steps", "final_loss")),
        Stage("kNN probe", ["probe", "knn", moco_ckpt, *common, *cache, "--k", "10,20"], _knn),
        Stage("linear probe", ["probe", "linear", moco_ckpt, *common, *cache, "--c-grid", "9"], _keys("top1", "mAP")),
        Stage("coupling rate", ["analyze", "coupling", moco_ckpt, detcon_ckpt, soco_ckpt, d3ssl_ckpt, *common, "--pairs", "16",
                                "--out", str(reports / "coupling")], _per_layer),
        Stage("positional bias", ["analyze", "positional", moco_ckpt, detcon_ckpt, soco_ckpt, d3ssl_ckpt, *common, "--objects", "16",
                                  "--out", str(reports / "positional")], _per_layer),
        Stage("object kNN", ["analyze", "oknn", soco_ckpt, d3ssl_ckpt, *common, "--out", str(reports / "oknn")],
              _oknn),
        Stage("export to detectron2", ["export", moco_ckpt, "--to", "detectron2", "--out", str(out / "moco.pkl")],
              _keys("keys", "out")),
        Stage("study (studies/tiny.yaml: 2 arms x 2 seeds)", ["study", "run", str(tiny_study_file()), "--out",
                                                             str(out / "study")], _study),
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
    """Run every stage on generated data: synthetic scenes, masks and boxes, MoCo-v2, DetCon, SoCo and D3SSL pretraining,
    probes, analyses, export and a tiny study with its report — each through the real CLI.

    Example: sslcli demo --out demo-out --images 64 --steps 20
    """
    out = _fresh_workdir(out.resolve())
    results = {}
    for stage in _stages(out, images, steps):
        start = time.perf_counter()
        result = _run_stage(stage)
        seconds = time.perf_counter() - start
        results[stage.name] = {"seconds": round(seconds, 1), **result}
        current().info(f"[demo] {stage.name}: ok in {seconds:.1f}s  {stage.summary(result)}")
    if not current().json:  # the per-stage lines above are the human summary
        return {"out": str(out), "stages_ok": len(results)}
    return {"out": str(out), "stages": results}


def _fresh_workdir(out: Path) -> Path:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise InputError(f"--out {out}: folder is not empty and was not made by `sslcli demo`; choose another")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by sslcli demo; rerunning the demo replaces this folder\n")
    return out


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)
