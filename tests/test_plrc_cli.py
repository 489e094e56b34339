"""PLRC through the CLI and the engine: `pretrain` with 2 gloo processes, bit-identical resume, export to torchvision
and detectron2, the analyses on its checkpoints, the gpu pipeline, `--schema`, one-line errors for bad values, and
the paper-scale example. (`examples/plrc-tiny.yaml` also trains in tests/test_examples_e2e.py.)"""

from __future__ import annotations

import json
import math
import pickle
import socket
from pathlib import Path

import pytest
import torch

from sslcli.engine.launch import launch
from sslcli.engine.training_checkpoint import load_checkpoint
from sslcli.models.backbone import build_backbone
from sslcli.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = EXAMPLES / "plrc-tiny.yaml"
PAPER = EXAMPLES / "plrc_r50_b256_100ep_in1k.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from sslcli.data.scenes.synthetic import generate

    root = tmp_path_factory.mktemp("plrc") / "scenes"
    generate(root, n_train=16, n_val=12, seed=0, size=128)
    return root


def _spec(scenes: Path, out: Path, *sets: str, world_size: int = 1):
    return load_spec(TINY, [f"data.root={scenes}", f"output_dir={out}", *sets], world_size=world_size)


@pytest.fixture(scope="module")
def checkpoint(scenes, tmp_path_factory) -> Path:
    """The tiny example trained 2 steps by `sslcli pretrain` (the CLI, as a user runs it)."""
    from typer.testing import CliRunner

    from sslcli.cli import app

    run = tmp_path_factory.mktemp("plrc-run") / "run"
    result = CliRunner().invoke(app, ["pretrain", str(TINY), "--set", f"data.root={scenes}", "--set",
                                      f"output_dir={run}", "--set", "max_steps=2", "--json", "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 2
    return run / "last.pt"


def test_two_gloo_processes_train_the_tiny_example(scenes, tmp_path):
    spec = _spec(scenes, tmp_path / "run", "max_steps=2", world_size=2)
    result = launch(spec, gpus=2, master_port=_free_port())
    assert result["world_size"] == 2 and result["steps"] == 2 and math.isfinite(result["final_loss"])
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 2 and len(state["rng"]["ranks"]) == 2
    assert int(state["method"]["queue_ptr"]) == 32  # both ranks' keys: 2 steps x 16 images
    assert state["method"]["center"].abs().sum() > 0  # the teacher centre moved, and is saved


def test_resume_is_bit_identical(scenes, tmp_path):
    # batch 8 of 16 images: 2 steps per epoch; cut at the epoch boundary (step 2), resume to step 3. The points and
    # shuffle-BN permutations are drawn in forward from the training RNG, which the checkpoint restores.
    common = ["batch_size=8", "epochs=2", "method.queue_size=64"]
    full = launch(_spec(scenes, tmp_path / "full", *common, "max_steps=3"))
    launch(_spec(scenes, tmp_path / "cut", *common, "max_steps=2"))
    resumed = launch(_spec(scenes, tmp_path / "cut", *common, "max_steps=3"), resume="auto")
    assert resumed["steps"] == full["steps"] == 3 and resumed["final_loss"] == full["final_loss"]
    a = load_checkpoint(tmp_path / "full" / "last.pt")["method"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["method"]
    assert a.keys() == b.keys() and {"queue", "queue_ptr", "center"} <= a.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_export_to_torchvision_and_detectron2(checkpoint, tmp_path, cli):
    ckpt = load_checkpoint(checkpoint)
    code, _, err = cli(["export", checkpoint, "--to", "torchvision", "--out", tmp_path / "tv.pth"])
    assert code == 0, err
    net = build_backbone(ckpt["arch"], ckpt["width"], stem=ckpt["spec"]["model"]["stem"])
    net.load_state_dict(torch.load(tmp_path / "tv.pth"))  # strict: every key of the backbone, nothing else
    for key, value in net.state_dict().items():
        assert torch.equal(value, ckpt["backbone"][key]), key
    code, _, err = cli(["export", checkpoint, "--to", "detectron2", "--out", tmp_path / "d2.pkl"])
    assert code == 0, err
    with open(tmp_path / "d2.pkl", "rb") as fh:
        model = pickle.load(fh)["model"]
    assert (model["res5.1.conv2.weight"] == ckpt["backbone"]["layer4.1.conv2.weight"].numpy()).all()


def test_analyses_run_on_the_checkpoint(checkpoint, scenes, tmp_path, cli):
    small = ["--min-size", "8", "--device", "cpu", "--json"]
    runs = {"coupling": ["--pairs", "3", "--cell", "32"], "positional": ["--objects", "3", "--tile", "32"],
            "oknn": ["--short-side", "64", "--max-images", "8"]}
    for analysis, options in runs.items():
        out = tmp_path / analysis
        code, _, err = cli(["analyze", analysis, checkpoint, "--data", scenes, "--out", out, *options, *small])
        assert code == 0, f"{analysis}: {err}"
        written = json.loads((out / f"{analysis}.json").read_text())
        assert written["checkpoints"][0]["checkpoint"]["format"] == "sslcli"


def test_the_gpu_pipeline_gives_the_cpu_paths_batch_and_trains(scenes, tmp_path):
    # `data.pipeline: gpu` (decoded and augmented on the training device; here the CPU): the same keys as the CPU
    # views (the teacher crop in "small"), boxes drawn by PLRC's own sampler (crop 0 and the teacher crop overlap).
    from sslcli.data.readers.images import EncodedImage
    from sslcli.data.views.crops import box_area, box_intersection
    from sslcli.engine.data import build_device_views, collate
    from sslcli.methods import build_method

    spec = _spec(scenes, tmp_path / "run", "data.pipeline=gpu", "max_steps=2")
    transform = build_method(spec).transform()
    image = EncodedImage.read(sorted((scenes / "train2017").glob("*.jpg"))[0])
    cpu = transform({"image": image, "index": 0})
    device_views = build_device_views(spec, transform)
    sample = device_views({"image": image, "index": 0})
    out = device_views.apply(collate([sample]), torch.device("cpu"))
    assert set(out) == set(cpu) and out["views"].shape[1:] == cpu["views"].shape
    assert out["small"].shape[1:] == cpu["small"].shape == (1, 3, 64, 64)
    query, _, teacher = (tuple(b) for b in sample["boxes"].tolist())
    assert box_intersection(query, teacher) >= 0.5 * max(box_area(query), box_area(teacher))
    result = launch(spec)
    assert result["steps"] == 2 and math.isfinite(result["final_loss"])


FIELDS = {"dim", "hidden_dim", "bottleneck_dim", "distill_dim", "queue_size", "momentum", "shuffle_bn", "image_weight",
          "point_weight", "distill_weight", "image_temperature", "point_temperature", "point_base_temperature", "grid",
          "mask_size", "points", "kept_points", "min_overlap", "overlap_tries", "pair_ratio", "affinity_divisor",
          "student_temperature", "teacher_temperature", "warmup_teacher_temperature", "warmup_teacher_epochs",
          "center_momentum"}


def test_schema_lists_the_fields_with_descriptions(cli):
    code, stdout, _ = cli(["pretrain", "--schema"])
    assert code == 0
    properties = json.loads(stdout)["$defs"]["PlrcSpec"]["properties"]
    assert set(properties) == FIELDS | {"name"}
    assert all(properties[f].get("description") for f in FIELDS)


@pytest.mark.parametrize(("override", "message"), [
    ("method.queue_size=100", "method.queue_size: must be divisible by the global batch size 16"),
    ("method.kept_points=40", "method.kept_points: 40 is more than method.points 32"),
    ("method.grid=1", "method.grid: Input should be greater than or equal to 2"),
    ("method.mask_size=1", "method.mask_size: Input should be greater than or equal to 2"),
    ("method.min_overlap=1.5", "method.min_overlap: Input should be less than or equal to 1"),
    ("method.teacher_temperature=0", "method.teacher_temperature: Input should be greater than 0"),
    ("method.bogus=1", "method.bogus: unknown key"),
])
def test_bad_values_are_one_line_errors_naming_the_field(override, message, scenes, refused):
    args = ["pretrain", TINY, "--set", f"data.root={scenes}", "--set", override, "--dry-run"]
    refused(args, message)


# ------------------------------------------------------------------------------------------- paper-scale example
# Written from the authors' released recipe, not from the code: main_plrc.py's defaults ("all the default
# hyper-parameters as described in the PLRC paper", README) and its 100-epoch released model: ImageNet-1K train,
# 100 epochs, batch 256, SGD lr 0.03 momentum 0.9 wd 1e-4 on every parameter, cosine to 0 per epoch
# (adjust_learning_rate), ts/cl/im ratios 0.3/0.3/0.7, key momentum 0.999; the hard-coded ones of builder.py,
# plrc_loss.py and datasets/imagenet.py: queue 65536, feat dim 128, ProjHead 2048/256/4096, 4 × 4 regions,
# mask size 56, 32 points (16 kept).
RECIPE = {
    "model": {"arch": "resnet50", "width": 64, "stem": "imagenet"},
    "data": {"format": "imagefolder", "image_size": 224}, "views": {"colour": "recipe", "crop_scale": None},
    "batch_size": 256, "epochs": 100,
    "method": {"name": "plrc", "dim": 128, "hidden_dim": 2048, "bottleneck_dim": 256, "distill_dim": 4096,
               "queue_size": 65536, "momentum": 0.999, "shuffle_bn": True, "image_weight": 0.7, "point_weight": 0.3,
               "distill_weight": 0.3, "grid": 4, "mask_size": 56, "points": 32, "kept_points": 16},
    "optimizer": {"name": "sgd", "base_lr": 0.03, "lr_scaling": "linear", "momentum": 0.9, "weight_decay": 1e-4,
                  "exclude_bias_and_norm": False},
    "schedule": {"name": "cosine", "warmup_epochs": 0.0, "final_lr": 0.0, "per_step": False},
}


def _mismatches(want: dict, got: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in want.items():
        if isinstance(value, dict):
            out += _mismatches(value, got.get(key) or {}, f"{prefix}{key}.")
        elif got.get(key) != (pytest.approx(value) if isinstance(value, float) else value):
            out.append(f"{prefix}{key}: {got.get(key)!r}, authors {value!r}")
    return out


def test_paper_scale_example_uses_the_authors_recipe():
    assert _mismatches(RECIPE, load_spec(PAPER).model_dump(mode="json")) == []


def test_tiny_twin_keeps_the_method_and_optimizer():
    """The twin only scales sizes down (crop side, point grid, queue, batch, steps)."""
    paper, tiny = (load_spec(path).model_dump(mode="json") for path in (PAPER, TINY))
    for spec in (paper, tiny):
        for key in ("queue_size", "mask_size"):
            spec["method"].pop(key)
    assert tiny["method"] == paper["method"] and tiny["optimizer"] == paper["optimizer"]
    assert tiny["schedule"] == paper["schedule"]
