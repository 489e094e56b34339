"""`model.stem: imagenet | small`: the network, its strides, checkpoints and every method / analysis on a small stem."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torchvision.ops import roi_align

from sslcli.eval.roi import pooled_roi_features
from sslcli.models.backbone import build_backbone, map_side, stage_strides
from sslcli.models.region_pooling import align_rois, roi_features


# ---------------------------------------------------------------------------------------------------------- network
def test_small_stem_gives_res5_6x6_at_48_px():
    net = build_backbone("resnet18", width=8, stem="small").eval()
    with torch.no_grad():
        maps = net.features(torch.zeros(2, 3, 48, 48))
    # By hand: conv1 3×3 stride 1 and no max-pool keep 48; layer2..4 halve it: 48, 24, 12, 6.
    assert {s: tuple(m.shape[-2:]) for s, m in maps.items()} == {"res2": (48, 48), "res3": (24, 24),
                                                                 "res4": (12, 12), "res5": (6, 6)}
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    # The ImageNet stem at 48 px: 48/32 rounded up = 2.
    assert build_backbone("resnet18", width=8).forward_map(torch.zeros(1, 3, 48, 48)).shape[-2:] == (2, 2)


def test_imagenet_stem_is_torchvisions_resnet18():
    ours = build_backbone("resnet18", width=64).state_dict()
    stock = {k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in stock.items()}


def test_small_stem_differs_only_in_conv1s_kernel():
    small = build_backbone("resnet18", width=64, stem="small").state_dict()
    stock = build_backbone("resnet18", width=64).state_dict()
    assert small.keys() == stock.keys()
    assert [k for k in small if small[k].shape != stock[k].shape] == ["conv1.weight"]
    assert tuple(small["conv1.weight"].shape) == (64, 3, 3, 3)


def test_an_unknown_stem_is_refused():
    with pytest.raises(ValueError, match="stem 'cifar'"):
        build_backbone("resnet18", width=8, stem="cifar")


def test_stage_strides_of_both_stems():
    assert stage_strides(build_backbone("resnet18", width=8)) == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert stage_strides(build_backbone("resnet18", width=8, stem="small")) == {"res2": 1, "res3": 2, "res4": 4,
                                                                                 "res5": 8}
    assert stage_strides(build_backbone("resnet50", width=8, stem="small", dilate_res5=True))["res5"] == 4


# ---------------------------------------------------------------------------------------- boxes onto feature cells
def _cell_ids(side: int) -> torch.Tensor:
    """(1, side², side, side): channel r·side + c is 1 on cell (r, c) only, so a pooled vector says which cells a
    box read and with which weight."""
    return torch.eye(side * side).view(side * side, side, side).unsqueeze(0)


@pytest.mark.parametrize("stem, size, box, cells", [
    # ImageNet stem, 64 px: res5 is 2×2 at stride 32; the box [32, 0, 64, 32) is cell (row 0, column 1).
    ("imagenet", 64, (32.0, 0.0, 64.0, 32.0), [(0, 1)]),
    # Small stem, 48 px: res5 is 6×6 at stride 8; the box [8, 16, 32, 40) covers columns 1..3 and rows 2..4.
    ("small", 48, (8.0, 16.0, 32.0, 40.0), [(r, c) for r in (2, 3, 4) for c in (1, 2, 3)]),
])
def test_a_box_maps_onto_the_cells_it_covers(stem, size, box, cells):
    net = build_backbone("resnet18", width=4, stem=stem).eval()
    with torch.no_grad():
        side = net.forward_map(torch.zeros(1, 3, size, size)).shape[-1]
    assert side == map_side(net, size)
    roi = int(math.sqrt(len(cells)))  # one RoIAlign bin per covered cell, sampled at its centre
    pooled = pooled_roi_features(_cell_ids(side), [torch.tensor([box])], stage_strides(net)["res5"], roi_size=roi,
                                 sampling_ratio=1)[0]
    expected = torch.zeros(side * side)
    for r, c in cells:
        expected[r * side + c] = 1.0 / len(cells)
    assert torch.allclose(pooled, expected, atol=1e-6)


def test_c4_box_features_read_res4_at_the_small_stems_stride_4():
    # RoIAlign on res4 then res5 as the head; with the small stem res4 is at stride 4, so the pixel box [4, 8, 12, 16)
    # is res4 cells columns 1..2, rows 2..3. torchvision's roi_align at spatial scale 1/4 is the reference.
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", width=4, stem="small").eval()
    images = torch.randn(1, 3, 24, 24)
    boxes = torch.tensor([[[4.0, 8.0, 12.0, 16.0]]])
    cells = align_rois(_cell_ids(6), boxes, 2, stride=stage_strides(encoder)["res4"])
    assert torch.allclose(cells.flatten(1).sum(1), torch.tensor([4.0]))  # 2×2 bins, each one whole cell
    assert {int(i) for i in cells.flatten(2).argmax(1).flatten()} == {2 * 6 + 1, 2 * 6 + 2, 3 * 6 + 1, 3 * 6 + 2}
    with torch.no_grad():
        res4 = encoder.features(images, upto="res4")["res4"]
        want = encoder.layer4(roi_align(res4, [boxes[0]], 3, spatial_scale=0.25, sampling_ratio=-1, aligned=True))
        assert torch.allclose(roi_features(encoder, images, boxes, 3), want.mean(dim=(2, 3)), atol=1e-6)


# ------------------------------------------------------------------------------------------------------ checkpoints
def _save(path: Path, state: dict, width: int = 4, **meta) -> Path:
    torch.save({"format": "sslcli-checkpoint", "arch": "resnet18", "width": width, "backbone": state, **meta}, path)
    return path


def test_checkpoints_rebuild_their_stem(tmp_path):
    from sslcli.backbone_checkpoints import load_backbone

    small = build_backbone("resnet18", width=4, stem="small").state_dict()
    backbone, report = load_backbone(_save(tmp_path / "small.pt", small, stem="small"))
    assert report.stem == "small" and backbone.conv1.kernel_size == (3, 3)
    assert report.to_dict()["stem"] == "small" and "small stem" in report.summary()
    # A plain torchvision state dict records no stem: conv1's 3×3 kernel says it.
    torch.save(small, tmp_path / "plain.pth")
    assert load_backbone(tmp_path / "plain.pth")[1].stem == "small"
    # sslcli checkpoints written before the field existed: the ImageNet stem.
    imagenet = build_backbone("resnet18", width=4).state_dict()
    assert load_backbone(_save(tmp_path / "old.pt", imagenet))[1].stem == "imagenet"


def test_a_stem_that_contradicts_the_weights_is_refused(tmp_path):
    from sslcli.backbone_checkpoints import load_backbone
    from sslcli.errors import InputError

    path = _save(tmp_path / "lying.pt", build_backbone("resnet18", width=4).state_dict(), stem="small")
    with pytest.raises(InputError, match=r"conv1.weight has shape \(4, 3, 7, 7\), expected \(4, 3, 3, 3\) .*small stem"):
        load_backbone(path)


def test_resuming_a_checkpoint_from_before_the_stem_field():
    from sslcli.engine.training_checkpoint import spec_differences

    old = {"model": {"arch": "resnet18", "width": 8, "c4": False}}
    assert spec_differences(old, {"model": {**old["model"], "stem": "imagenet"}}) == []
    assert spec_differences(old, {"model": {**old["model"], "stem": "small"}}) == ["model.stem"]


def test_study_run_hashes_ignore_the_default_stem(tmp_path):
    from sslcli.study.spec import load_study

    study = {"name": "stem-hash", "seeds": [0],
             "base": {"spec_version": 1, "name": "s", "data": {"root": str(tmp_path)},
                      "model": {"arch": "resnet18", "width": 8}, "method": {"name": "simclr"}},
             "arms": {"plain": {}, "imagenet": {"model.stem": "imagenet"}, "small": {"model.stem": "small"}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    hashes = {run.arm: run.hash for run in load_study(path, out=tmp_path / "out").runs}
    assert hashes["plain"] == hashes["imagenet"] != hashes["small"]


def test_export_says_a_small_stem_is_not_the_stock_stem(tmp_path, cli):
    ckpt = _save(tmp_path / "small.pt", build_backbone("resnet18", width=64, stem="small").state_dict(), width=64,
                 stem="small")
    for to, words in (("torchvision", "stem='small'"), ("detectron2", "BasicStem")):
        code, stdout, err = cli(["export", ckpt, "--to", to, "--out", tmp_path / f"out-{to}", "--json", "--quiet"])
        assert code == 0, err
        result = json.loads(stdout)
        assert result["stock_model_loads"] is False and words in result["stock_model_note"]
        assert "of width" not in result["stock_model_note"]  # width 64: only the stem differs
    # The detectron2 file reads back as the same small-stem network.
    from sslcli.backbone_checkpoints import load_backbone

    assert load_backbone(tmp_path / "out-detectron2")[1].stem == "small"


# ---------------------------------------------------------------------------- methods and analyses on a small stem
SMALL_METHODS = {
    "detcon": ({"name": "detcon", "variant": "S", "masks": {"kind": "grid", "grid": 3}, "num_samples": 4, "dim": 16,
                "hidden_dim": 32}, False),
    "soco": ({"name": "soco", "boxes": "BOXES", "dim": 16, "hidden_dim": 32}, True),
    "d3ssl": ({"name": "d3ssl", "boxes": "BOXES", "dim": 16, "hidden_dim": 32, "bank_size": 64}, True),
}


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory) -> dict:
    """Synthetic data (`sslcli prepare synthetic`), a box store, and DetCon / SoCo / D3SSL trained 2 steps at 48 px
    on resnet18 width 8 with ``model.stem: small``; returns the data root and each run's pretrain result."""
    from typer.testing import CliRunner

    from sslcli.cli import app

    base = tmp_path_factory.mktemp("stem")
    root, boxes = base / "data", base / "boxes.h5"
    runner = CliRunner()

    def run(args: list) -> dict:
        result = runner.invoke(app, [str(a) for a in [*args, "--json", "--quiet"]])
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    run(["prepare", "synthetic", root, "--images", 12, "--val-images", 8, "--size", 96])
    run(["prepare", "boxes", root, "--out", boxes])
    results = {}
    for name, (method, c4) in SMALL_METHODS.items():
        spec = {"spec_version": 1, "name": f"{name}-small",
                "data": {"root": str(root), "image_size": 48, "workers": 0, "pin_memory": False},
                "model": {"arch": "resnet18", "width": 8, "c4": c4, "stem": "small"},
                "method": {k: (str(boxes) if v == "BOXES" else v) for k, v in method.items()},
                "optimizer": {"name": "sgd", "base_lr": 0.05, "weight_decay": 1e-4},
                "schedule": {"name": "cosine", "warmup_epochs": 0}, "batch_size": 4, "epochs": 1, "max_steps": 2,
                "precision": "fp32", "output_dir": str(base / name)}
        path = base / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        results[name] = run(["pretrain", path]) | {"checkpoint": base / name / "last.pt"}
    return {"root": root, "runs": results, "run": run, "base": base}


@pytest.mark.parametrize("method", sorted(SMALL_METHODS))
def test_region_methods_train_on_the_small_stem(method, small_runs):
    result = small_runs["runs"][method]
    assert result["steps"] == 2 and math.isfinite(result["final_loss"])
    state = torch.load(result["checkpoint"], map_location="cpu", weights_only=False)
    assert state["stem"] == "small" and state["spec"]["model"]["stem"] == "small"
    assert tuple(state["backbone"]["conv1.weight"].shape) == (8, 3, 3, 3)


def test_detcon_pools_masks_on_the_6x6_grid_of_48_px_views(small_runs):
    from sslcli.methods import build_method
    from sslcli.spec import load_spec

    spec = load_spec(small_runs["base"] / "detcon.yaml")
    assert build_method(spec).transform().grid_side == 6  # 48 / 8; the ImageNet stem would give 2


def test_analyses_and_the_object_probe_run_on_small_stem_checkpoints(small_runs):
    run, root, base = small_runs["run"], small_runs["root"], small_runs["base"]
    soco, detcon = small_runs["runs"]["soco"]["checkpoint"], small_runs["runs"]["detcon"]["checkpoint"]
    coupling = run(["analyze", "coupling", soco, detcon, "--data", root, "--pairs", 4, "--cell", 48,
                    "--min-size", 8, "--out", base / "coupling"])
    positional = run(["analyze", "positional", soco, detcon, "--data", root, "--objects", 4, "--tile", 32,
                      "--min-size", 8, "--out", base / "positional"])
    for result in (coupling, positional):
        for checkpoint in result["checkpoints"]:
            assert checkpoint["checkpoint"]["stem"] == "small"
            assert list(checkpoint["layers"]) == ["res2", "res3", "res4", "res5"]
            assert all(layer["n"] == 4 and math.isfinite(layer["mean"]) for layer in checkpoint["layers"].values())
    oknn = run(["analyze", "oknn", soco, "--data", root, "--short-side", 64, "--max-side", 96, "--min-size", 8,
                "--out", base / "oknn"])
    clean = oknn["checkpoints"][0]["clean"]
    assert oknn["checkpoints"][0]["checkpoint"]["stem"] == "small"
    assert clean["query_objects"] > 0 and clean["bank_objects"] > 0 and 0.0 <= clean["top1"] <= 100.0
    probe = run(["probe", "knn", small_runs["runs"]["d3ssl"]["checkpoint"], "--data", root, "--labels", "object",
                 "--image-size", 96, "--min-size", 8, "--k", "5", "--no-cache"])
    assert probe["checkpoint"]["stem"] == "small" and probe["labels"] == "object"
    assert probe["test_rows"] > 0 and 0.0 <= probe["k"]["5"]["top1"] <= 100.0
