"""The point-level methods (DenseCL, PixPro, PLRC) through the CLI and the engine: `pretrain` with 2 gloo processes,
bit-identical resume, export to torchvision and detectron2, the analyses on their checkpoints, the gpu pipeline,
`--schema`, one-line errors for bad values, and the paper-scale examples. (Their tiny examples also train in
tests/test_examples_e2e.py.)"""

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
METHODS = ("densecl", "pixpro", "plrc")
QUEUE_METHODS = ("densecl", "plrc")  # a MoCo queue: the global batch must divide it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from sslcli.data.scenes.synthetic import generate

    root = tmp_path_factory.mktemp("dense") / "scenes"
    generate(root, n_train=16, n_val=12, seed=0, size=128)
    return root


def _spec(method: str, scenes: Path, out: Path, *sets: str, world_size: int = 1):
    return load_spec(EXAMPLES / f"{method}-tiny.yaml", [f"data.root={scenes}", f"output_dir={out}", *sets],
                     world_size=world_size)


@pytest.fixture(scope="module")
def checkpoints(scenes, tmp_path_factory) -> dict[str, Path]:
    """Each method's tiny example trained 2 steps by `sslcli pretrain` (the CLI, as a user runs it)."""
    from typer.testing import CliRunner

    from sslcli.cli import app

    out = {}
    for method in METHODS:
        run = tmp_path_factory.mktemp(method) / "run"
        result = CliRunner().invoke(app, ["pretrain", str(EXAMPLES / f"{method}-tiny.yaml"), "--set",
                                          f"data.root={scenes}", "--set", f"output_dir={run}", "--set",
                                          "max_steps=2", "--json", "--quiet"])
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["steps"] == 2
        out[method] = run / "last.pt"
    return out


@pytest.mark.parametrize("method", METHODS)
def test_two_gloo_processes_train_the_tiny_example(method, scenes, tmp_path):
    spec = _spec(method, scenes, tmp_path / "run", "max_steps=2", world_size=2)
    result = launch(spec, gpus=2, master_port=_free_port())
    assert result["world_size"] == 2 and result["steps"] == 2 and math.isfinite(result["final_loss"])
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 2 and len(state["rng"]["ranks"]) == 2
    expected = {"densecl": {"queue", "dense_queue", "queue_ptr"}, "pixpro": {"target_projector.0.weight"},
                "plrc": {"queue", "queue_ptr", "center"}}[method]
    assert expected <= state["method"].keys()
    if method in QUEUE_METHODS:  # both ranks' keys went into the queues: 2 steps x 16 images
        assert int(state["method"]["queue_ptr"]) == 32
    if method == "plrc":  # the teacher centre moved, and is saved
        assert state["method"]["center"].abs().sum() > 0


@pytest.mark.parametrize("method", METHODS)
def test_resume_is_bit_identical(method, scenes, tmp_path):
    # batch 8 of 16 images: 2 steps per epoch; cut at the epoch boundary (step 2), resume to step 3. (PLRC draws its
    # points and shuffle-BN permutations in forward from the training RNG, which the checkpoint restores.)
    common = ["batch_size=8", "epochs=2"] + (["method.queue_size=64"] if method in QUEUE_METHODS else [])
    full = launch(_spec(method, scenes, tmp_path / "full", *common, "max_steps=3"))
    launch(_spec(method, scenes, tmp_path / "cut", *common, "max_steps=2"))
    resumed = launch(_spec(method, scenes, tmp_path / "cut", *common, "max_steps=3"), resume="auto")
    assert resumed["steps"] == full["steps"] == 3 and resumed["final_loss"] == full["final_loss"]
    a = load_checkpoint(tmp_path / "full" / "last.pt")["method"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["method"]
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("method", METHODS)
def test_export_to_torchvision_and_detectron2(method, checkpoints, tmp_path, cli):
    ckpt = load_checkpoint(checkpoints[method])
    code, _, err = cli(["export", checkpoints[method], "--to", "torchvision", "--out", tmp_path / "tv.pth"])
    assert code == 0, err
    net = build_backbone(ckpt["arch"], ckpt["width"], stem=ckpt["spec"]["model"]["stem"])
    net.load_state_dict(torch.load(tmp_path / "tv.pth"))  # strict: every key of the backbone, nothing else
    for key, value in net.state_dict().items():
        assert torch.equal(value, ckpt["backbone"][key]), key
    code, _, err = cli(["export", checkpoints[method], "--to", "detectron2", "--out", tmp_path / "d2.pkl"])
    assert code == 0, err
    with open(tmp_path / "d2.pkl", "rb") as fh:
        model = pickle.load(fh)["model"]
    assert (model["res5.1.conv2.weight"] == ckpt["backbone"]["layer4.1.conv2.weight"].numpy()).all()


@pytest.mark.parametrize("method", METHODS)
def test_analyses_run_on_the_checkpoint(method, checkpoints, scenes, tmp_path, cli):
    small = ["--min-size", "8", "--device", "cpu", "--json"]
    runs = {"coupling": ["--pairs", "3", "--cell", "32"], "positional": ["--objects", "3", "--tile", "32"],
            "oknn": ["--short-side", "64", "--max-images", "8"]}
    for analysis, options in runs.items():
        out = tmp_path / analysis
        code, stdout, err = cli(["analyze", analysis, checkpoints[method], "--data", scenes, "--out", out,
                                 *options, *small])
        assert code == 0, f"{analysis}: {err}"
        written = json.loads((out / f"{analysis}.json").read_text())
        assert written["checkpoints"][0]["checkpoint"]["format"] == "sslcli"


@pytest.mark.parametrize("method", METHODS)
def test_the_gpu_pipeline_gives_the_cpu_paths_batch_and_trains(method, scenes, tmp_path):
    # `data.pipeline: gpu` (decoded and augmented on the training device; here the CPU): the same keys as the CPU
    # views, the crops' coordinates (boxes, flips, image size: PixPro's and PLRC's positives) included, and a run
    # trains.
    from sslcli.data.readers.images import EncodedImage
    from sslcli.engine.data import build_device_views, collate
    from sslcli.methods import build_method

    spec = _spec(method, scenes, tmp_path / "run", "data.pipeline=gpu", "max_steps=2")
    transform = build_method(spec).transform()
    image = EncodedImage.read(sorted((scenes / "train2017").glob("*.jpg"))[0])
    cpu = transform({"image": image, "index": 0})
    device_views = build_device_views(spec, transform)
    sample = device_views({"image": image, "index": 0})
    out = device_views.apply(collate([sample]), torch.device("cpu"))
    assert set(out) == set(cpu) and out["views"].shape[1:] == cpu["views"].shape
    assert out["image_size"][0].tolist() == cpu["image_size"].tolist() == [image.height, image.width]
    assert torch.equal(out["flips"][0], sample["flips"]) and torch.equal(out["boxes"][0], sample["boxes"])
    if method == "plrc":  # the teacher crop travels in "small", drawn by PLRC's sampler to overlap crop 0 by >= 0.5
        from sslcli.data.views.crops import box_area, box_intersection

        assert out["small"].shape[1:] == cpu["small"].shape == (1, 3, 64, 64)
        query, _, teacher = (tuple(b) for b in sample["boxes"].tolist())
        assert box_intersection(query, teacher) >= 0.5 * max(box_area(query), box_area(teacher))
    result = launch(spec)
    assert result["steps"] == 2 and math.isfinite(result["final_loss"])


PLRC_FIELDS = {"dim", "hidden_dim", "bottleneck_dim", "distill_dim", "queue_size", "momentum", "shuffle_bn",
               "image_weight", "point_weight", "distill_weight", "image_temperature", "point_temperature",
               "point_base_temperature", "grid", "mask_size", "points", "kept_points", "min_overlap", "overlap_tries",
               "pair_ratio", "affinity_divisor", "student_temperature", "teacher_temperature",
               "warmup_teacher_temperature", "warmup_teacher_epochs", "center_momentum"}


def test_schema_lists_the_new_fields_with_descriptions(cli):
    code, stdout, _ = cli(["pretrain", "--schema"])
    assert code == 0
    definitions = json.loads(stdout)["$defs"]
    for name, fields in (("DenseclSpec", {"dim", "hidden_dim", "queue_size", "temperature", "momentum",
                                          "dense_weight", "grid", "shuffle_bn"}),
                         ("PixproSpec", {"dim", "hidden_dim", "threshold", "sharpness", "clamp", "value_layers",
                                         "instance_weight", "base_momentum"}),
                         ("PlrcSpec", PLRC_FIELDS)):
        properties = definitions[name]["properties"]
        assert set(properties) == fields | {"name"}
        assert all(properties[f].get("description") for f in fields), name


@pytest.mark.parametrize(("method", "override", "message"), [
    ("densecl", "method.queue_size=100", "method.queue_size: must be divisible by the global batch size 16"),
    ("densecl", "method.dense_weight=1.5", "method.dense_weight: Input should be less than or equal to 1"),
    ("densecl", "method.grid=0", "method.grid: Input should be greater than or equal to 1"),
    ("pixpro", "method.threshold=-0.5", "method.threshold: Input should be greater than 0"),
    ("pixpro", "method.value_layers=3", "method.value_layers: 3 is not allowed"),
    ("pixpro", "method.sharpness=0", "method.sharpness: Input should be greater than 0"),
    ("pixpro", "method.bogus=1", "method.bogus: unknown key"),
    ("plrc", "method.queue_size=100", "method.queue_size: must be divisible by the global batch size 16"),
    ("plrc", "method.kept_points=40", "method.kept_points: 40 is more than method.points 32"),
    ("plrc", "method.grid=1", "method.grid: Input should be greater than or equal to 2"),
    ("plrc", "method.mask_size=1", "method.mask_size: Input should be greater than or equal to 2"),
    ("plrc", "method.min_overlap=1.5", "method.min_overlap: Input should be less than or equal to 1"),
    ("plrc", "method.teacher_temperature=0", "method.teacher_temperature: Input should be greater than 0"),
    ("plrc", "method.bogus=1", "method.bogus: unknown key"),
])
def test_bad_values_are_one_line_errors_naming_the_field(method, override, message, scenes, tmp_path, refused):
    args = ["pretrain", EXAMPLES / f"{method}-tiny.yaml", "--set", f"data.root={scenes}", "--set", override,
            "--dry-run"]
    refused(args, message)


# ------------------------------------------------------------------------------------------- paper-scale examples
# Written from the authors' released recipes, not from the code: DenseCL configs/selfsup/densecl/densecl_coco_800ep.py
# (800 epochs, 32 × 8 images, SGD lr 0.3 momentum 0.9 wd 1e-4 on every parameter, mmcv cosine to 0 per epoch, queue
# 65536, feat_dim 128, hid 2048, τ 0.2, momentum 0.999, loss_lambda 0.5) and PixPro tools/pixpro_base_r50_400ep.sh
# with contrast/lr_scheduler.py and lars.py (400 epochs, 128 × 8 images, LARS base lr 1.0 × B/256, wd 1e-5 without
# 1-D parameters, 5 warm-up epochs from lr / 100, cosine to 1e-6 per step; p 2, pos-ratio 0.7, transform layer 1,
# momentum 0.99, no instance loss, crop 0.08); PLRC main_plrc.py's defaults ("all the default hyper-parameters as
# described in the PLRC paper", README) and its 100-epoch released model: ImageNet-1K train, 100 epochs, batch 256,
# SGD lr 0.03 momentum 0.9 wd 1e-4 on every parameter, cosine to 0 per epoch (adjust_learning_rate), ts/cl/im ratios
# 0.3/0.3/0.7, key momentum 0.999; the hard-coded ones of builder.py, plrc_loss.py and datasets/imagenet.py: queue
# 65536, feat dim 128, ProjHead 2048/256/4096, 4 × 4 regions, mask size 56, 32 points (16 kept).
PAPER = {
    "densecl_r50_b256_800ep_coco": {
        "batch_size": 256, "epochs": 800,
        "method": {"name": "densecl", "dim": 128, "hidden_dim": 2048, "queue_size": 65536, "temperature": 0.2,
                   "momentum": 0.999, "dense_weight": 0.5, "grid": None, "shuffle_bn": True},
        "optimizer": {"name": "sgd", "base_lr": 0.3, "lr_scaling": "linear", "momentum": 0.9, "weight_decay": 1e-4,
                      "exclude_bias_and_norm": False},
        "schedule": {"name": "cosine", "warmup_epochs": 0.0, "final_lr": 0.0, "per_step": False}},
    "pixpro_r50_b1024_400ep_coco": {
        "batch_size": 1024, "epochs": 400,
        "method": {"name": "pixpro", "dim": 256, "hidden_dim": 4096, "threshold": 0.7, "sharpness": 2.0,
                   "clamp": 0.0, "value_layers": 1, "instance_weight": 0.0, "base_momentum": 0.99},
        "optimizer": {"name": "lars", "base_lr": 1.0, "lr_scaling": "linear", "momentum": 0.9, "weight_decay": 1e-5,
                      "exclude_bias_and_norm": True, "lars_eta": 1e-3},
        "schedule": {"name": "cosine", "warmup_epochs": 5.0, "warmup_start_factor": 0.01, "final_lr": 1e-6,
                     "per_step": True}},
    "plrc_r50_b256_100ep_in1k": {
        "data": {"format": "imagefolder", "image_size": 224}, "batch_size": 256, "epochs": 100,
        "method": {"name": "plrc", "dim": 128, "hidden_dim": 2048, "bottleneck_dim": 256, "distill_dim": 4096,
                   "queue_size": 65536, "momentum": 0.999, "shuffle_bn": True, "image_weight": 0.7,
                   "point_weight": 0.3, "distill_weight": 0.3, "grid": 4, "mask_size": 56, "points": 32,
                   "kept_points": 16},
        "optimizer": {"name": "sgd", "base_lr": 0.03, "lr_scaling": "linear", "momentum": 0.9, "weight_decay": 1e-4,
                      "exclude_bias_and_norm": False},
        "schedule": {"name": "cosine", "warmup_epochs": 0.0, "final_lr": 0.0, "per_step": False}},
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_scale_example_uses_the_authors_recipe(name):
    spec = load_spec(EXAMPLES / f"{name}.yaml").model_dump(mode="json")
    expected = {"model": {"arch": "resnet50", "width": 64, "stem": "imagenet"},
                "data": {"format": "coco", "split": "train2017", "image_size": 224},
                "views": {"colour": "recipe", "crop_scale": None}, **PAPER[name]}

    def mismatches(want: dict, got: dict, prefix: str = "") -> list[str]:
        out = []
        for key, value in want.items():
            if isinstance(value, dict):
                out += mismatches(value, got.get(key) or {}, f"{prefix}{key}.")
            elif got.get(key) != (pytest.approx(value) if isinstance(value, float) else value):
                out.append(f"{prefix}{key}: {got.get(key)!r}, authors {value!r}")
        return out

    assert mismatches(expected, spec) == []


@pytest.mark.parametrize("name", sorted(PAPER))
def test_tiny_twin_keeps_the_method_and_optimizer(name):
    """The twin only scales sizes down (crop side, queue, PLRC's point grid, batch, steps, warm-up)."""
    paper = load_spec(EXAMPLES / f"{name}.yaml").model_dump(mode="json")
    tiny = load_spec(EXAMPLES / f"{name.split('_')[0]}-tiny.yaml").model_dump(mode="json")
    for spec in (paper, tiny):
        for key in ("queue_size", "mask_size"):
            spec["method"].pop(key, None)
        spec["schedule"].pop("warmup_epochs")
    assert tiny["method"] == paper["method"] and tiny["optimizer"] == paper["optimizer"]
    assert tiny["schedule"] == paper["schedule"]
