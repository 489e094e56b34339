"""analyze coupling | positional | oknn: hand-built cases with known answers, invariants, the CLI end to end."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from sslcli.analysis.coupling import compose_pair, coupling_rates, summarize
from sslcli.analysis.oknn import classify, disturb, plan_objects, resize_short_side
from sslcli.analysis.positional import mean_cosine_similarity, tile_boxes, tile_image
from sslcli.data.views.colour import IMAGENET_MEAN, IMAGENET_STD
from sslcli.eval.knn import knn_scores
from sslcli.eval.roi import box_features, pooled_roi_features, stage_strides, to_input
from sslcli.models.backbone import STAGES, build_backbone


class PointwiseNet(nn.Module):
    """A "backbone" of 1x1 convolutions at stride 1: every feature depends on its own pixel only (no context, no
    padding), so nothing couples objects and nothing encodes position."""

    stage_strides = {s: 1 for s in STAGES}

    def __init__(self, channels: int = 6):
        super().__init__()
        torch.manual_seed(0)
        dims = [3] + [channels] * len(STAGES)
        self.convs = nn.ModuleList(nn.Conv2d(dims[i], dims[i + 1], 1) for i in range(len(STAGES)))

    def features(self, x, upto="res5"):
        out = {}
        for name, conv in zip(STAGES, self.convs):
            x = torch.relu(conv(x)) + 0.1  # + 0.1: no all-zero features (their cosine would be undefined)
            out[name] = x
            if name == upto:
                break
        return out


class GlobalMeanNet(nn.Module):
    """feature(p) = normalised pixel p + the image's mean normalised pixel, on every stage: every object's feature
    depends on everything else in the image, by an amount we can compute by hand."""

    stage_strides = {s: 1 for s in STAGES}

    def features(self, x, upto="res5"):
        f = x + x.mean(dim=(2, 3), keepdim=True)
        return {s: f for s in STAGES[: STAGES.index(upto) + 1]}


class PaddedConvNet(nn.Module):
    """One zero-padded 5x5 convolution, its output on every stage: tiles at the image border see the padding."""

    stage_strides = {s: 1 for s in STAGES}

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 5, padding=2)

    def features(self, x, upto="res5"):
        f = self.conv(x)
        return {s: f for s in STAGES[: STAGES.index(upto) + 1]}


def _random_objects(seed: int, *shapes) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 256, size=(*shape, 3), dtype=np.uint8) for shape in shapes]


def _normalised(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)


def _cos(a, b) -> float:
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


# --- RoI features ------------------------------------------------------------------------------------------------

def test_stage_strides_follow_the_network():
    assert stage_strides(build_backbone("resnet18", width=8)) == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert stage_strides(build_backbone("resnet50", width=8, dilate_res5=True))["res5"] == 16
    assert stage_strides(PointwiseNet()) == {s: 1 for s in STAGES}


def test_roi_feature_is_the_mean_of_the_cells_under_the_box():
    fmap = torch.arange(2 * 8 * 8, dtype=torch.float32).view(1, 2, 8, 8)
    # Box over cells x 2..4, y 1..3 at stride 4; a 3x3 grid with one sample per bin lands on the cell centres.
    box = torch.tensor([[2 * 4, 1 * 4, 5 * 4, 4 * 4]], dtype=torch.float32)
    got = pooled_roi_features(fmap, [box], stride=4, roi_size=3, sampling_ratio=1)
    torch.testing.assert_close(got, fmap[0, :, 1:4, 2:5].mean(dim=(1, 2))[None])


def test_box_features_do_not_depend_on_batching_or_order():
    net = build_backbone("resnet18", width=8).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in
              [(64, 64, 3), (64, 96, 3), (64, 64, 3), (64, 96, 3), (64, 64, 3)]]
    boxes = [np.array([[0, 0, 32, 32], [10, 20, 60, 60]], np.float32)] * 5
    one = box_features(net, list(zip(images, boxes)), batch_size=1)
    many = box_features(net, list(zip(images, boxes)), batch_size=3)
    for s in STAGES:
        assert one[s].shape == (10, net.stage_channels[s])
        torch.testing.assert_close(one[s], many[s], rtol=1e-4, atol=1e-5)
    # The second image's boxes come 3rd and 4th, as computed on that image alone.
    alone = box_features(net, [(images[1], boxes[1])], batch_size=1)
    torch.testing.assert_close(one["res5"][2:4], alone["res5"], rtol=1e-4, atol=1e-5)


def test_to_input_normalises_with_imagenet_statistics():
    image = np.full((2, 2, 3), 255, np.uint8)
    x = to_input([image])
    assert x.shape == (1, 3, 2, 2)
    torch.testing.assert_close(x[0, :, 0, 0].double(), torch.tensor(_normalised(image)[0, 0]), rtol=1e-5, atol=1e-5)


# --- coupling rate -------------------------------------------------------------------------------------------------

def test_compose_pair_places_a_and_b_side_by_side_and_a_alone_at_the_same_place():
    a, b = _random_objects(0, (20, 10), (12, 30))
    scene = compose_pair(a, b, cell=40, gap=3)
    assert scene.i1.shape == (40, 83, 3)
    ax0, ay0, ax1, ay1 = scene.box_a
    bx0, by0, bx1, by1 = scene.box_b
    assert (ax1, bx0) == (40, 43)  # A right-aligned in the left cell, B after the gap
    assert (ay1 - ay0, ax1 - ax0) == (40, 20) and (by1 - by0, bx1 - bx0) == (16, 40)  # longer side = cell
    np.testing.assert_array_equal(scene.i1[ay0:ay1, ax0:ax1], scene.i2[ay0:ay1, ax0:ax1])
    assert scene.i2[by0:by1, bx0:bx1].max() == 0 and scene.i1[by0:by1, bx0:bx1].min() > 0
    outside = np.ones(scene.i1.shape[:2], bool)
    outside[ay0:ay1, ax0:ax1] = outside[by0:by1, bx0:bx1] = False
    assert scene.i1[outside].max() == 0  # black canvas


def test_objects_whose_features_do_not_interact_have_coupling_rate_one():
    scenes = [compose_pair(*_random_objects(seed, (24, 16), (16, 24)), cell=24, gap=4) for seed in range(3)]
    rates = coupling_rates(PointwiseNet(), scenes, roi_size=7)
    for stage in STAGES:
        torch.testing.assert_close(rates[stage], torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-6)


def test_coupling_rate_matches_the_formula_by_hand():
    # GlobalMeanNet: f(X|I) = mean_X(pixels) + mean_I(pixels). With 16x16 objects, roi_size 16 and one sample per bin,
    # RoIAlign reads each pixel of the box once, so the pooled feature is exactly that sum.
    a, b = _random_objects(7, (16, 16), (16, 16))
    scene = compose_pair(a, b, cell=16, gap=0)
    rates = coupling_rates(GlobalMeanNet(), [scene], roi_size=16, sampling_ratio=1)
    n1, n2 = _normalised(scene.i1), _normalised(scene.i2)
    m1, m2 = n1.mean(axis=(0, 1)), n2.mean(axis=(0, 1))
    mean_a, mean_b = _normalised(a).mean(axis=(0, 1)), _normalised(b).mean(axis=(0, 1))
    expected = _cos(mean_a + m1, mean_b + m1) / _cos(mean_a + m2, mean_b + m1)
    assert abs(expected - 1) > 1e-3  # the case really couples
    for stage in STAGES:
        assert rates[stage].item() == pytest.approx(expected, rel=1e-5)


def test_summary_leaves_out_undefined_rates():
    stats = summarize(torch.tensor([1.0, 3.0, float("nan"), 2.0], dtype=torch.float64))
    assert stats["n"] == 3 and stats["undefined"] == 1
    assert stats["mean"] == pytest.approx(2.0) and stats["median"] == pytest.approx(2.0)
    assert stats["std"] == pytest.approx(np.std([1.0, 3.0, 2.0]))


# --- positional bias -----------------------------------------------------------------------------------------------

def test_tiling_repeats_the_crop_and_boxes_cover_the_tiles():
    (crop,) = _random_objects(1, (30, 20))
    tiled = tile_image(crop, tile=8)
    assert tiled.shape == (24, 24, 3)
    boxes = tile_boxes(8)
    assert boxes.shape == (9, 4) and tuple(boxes[4]) == (8, 8, 16, 16)
    for x0, y0, x1, y1 in boxes.astype(int):
        np.testing.assert_array_equal(tiled[y0:y1, x0:x1], tiled[8:16, 8:16])


def test_identical_tiles_without_positional_information_give_mcs_one():
    tilings = [tile_image(crop, tile=8) for crop in _random_objects(2, (8, 8), (13, 9))]
    # roi_size 8 with one sample per bin reads exactly the tile's pixels (no interpolation across tile borders).
    mcs = mean_cosine_similarity(PointwiseNet(), tilings, roi_size=8, sampling_ratio=1)
    for stage in STAGES:
        torch.testing.assert_close(mcs[stage], torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-9)


def test_zero_padding_lowers_mcs():
    tilings = [tile_image(crop, tile=8) for crop in _random_objects(3, (8, 8))]
    mcs = mean_cosine_similarity(PaddedConvNet(), tilings, roi_size=8, sampling_ratio=1)
    assert all(mcs[s].item() < 0.99 for s in STAGES)


def test_random_init_resnet_has_mcs_close_to_one_at_res2():
    # Smooth random content (like a natural image crop), tiles of 64 px, a randomly initialised ResNet-18.
    rng = np.random.default_rng(0)
    crops = [np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8) for _ in range(4)]
    torch.manual_seed(0)
    mcs = mean_cosine_similarity(build_backbone("resnet18", width=8), [tile_image(c, 64) for c in crops])
    assert mcs["res2"].mean().item() > 0.99
    assert all(0 < mcs[s].mean().item() <= 1 + 1e-9 for s in STAGES)


# --- O-KNN ---------------------------------------------------------------------------------------------------------

def _unit(*angles_deg):
    a = np.radians(angles_deg)
    return torch.tensor(np.stack([np.cos(a), np.sin(a)], axis=1), dtype=torch.float32)


def test_knn_votes_are_weighted_by_exp_similarity():
    # One class-0 neighbour at cos 0.9 beats two class-1 neighbours at cos 0.5 each: e^(0.9/0.07) > 2 e^(0.5/0.07).
    bank = torch.tensor([[0.9, np.sqrt(1 - 0.81)], [0.5, np.sqrt(0.75)], [0.5, -np.sqrt(0.75)], [-1.0, 0.0]],
                        dtype=torch.float32)
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[1.0, 0.0]])
    scores = knn_scores(bank, labels, query, [3], num_classes=3, temperature=0.07)[3]
    expected = [np.exp(0.9 / 0.07), 2 * np.exp(0.5 / 0.07), 0.0]
    np.testing.assert_allclose(scores[0].numpy(), expected, rtol=1e-4)
    assert classify(bank, labels, query, torch.tensor([0]), n_classes=3, k=3)["top1"] == 100.0
    # With temperature 10 the votes are nearly equal and the majority (class 1) wins.
    assert classify(bank, labels, query, torch.tensor([1]), n_classes=3, k=3, temperature=10.0)["top1"] == 100.0


def test_knn_top1_top5_on_a_hand_built_bank():
    # 7 classes, one bank object each at angle 10·c degrees; queries near a class's angle.
    bank = _unit(*(10 * c for c in range(7)))
    labels = torch.arange(7)
    queries = _unit(0, 31, 60, -40)
    # Query 0 (0°) is class 0; query 1 (31°) is nearest class 3; query 2 (60°) is class 6; query 3 (−40°):
    # nearest are classes 0, 1, 2, 3, 4 in that order, class 5 is 6th.
    truth = torch.tensor([0, 2, 6, 5])
    acc = classify(bank, labels, queries, truth, n_classes=7, k=7, temperature=0.07)
    # top-1: queries 0 and 2 right (50 %); top-5: class 2 is 2nd/3rd for query 1, class 5 is 6th for query 3.
    assert acc == {"top1": pytest.approx(50.0), "top5": pytest.approx(75.0),
                   # binomial standard errors over the 4 queries: 100 sqrt(p (1 - p) / 4)
                   "top1_se": pytest.approx(100 * math.sqrt(0.5 * 0.5 / 4)),
                   "top5_se": pytest.approx(100 * math.sqrt(0.75 * 0.25 / 4))}


def test_oknn_top5_ignores_classes_nobody_voted_for():
    # 80 classes, a bank of classes 40 and 50 only: a query of any other class is a top-5 miss, however topk orders
    # the 78 classes tied at zero votes.
    bank, labels = _unit(0, 5, 90), torch.tensor([40, 40, 50])
    queries = _unit(*([10] * 80))
    acc = classify(bank, labels, queries, torch.arange(80), n_classes=80, k=3)
    assert acc == {"top1": pytest.approx(100 / 80), "top5": pytest.approx(200 / 80),  # only classes 40 and 50 hit
                   "top1_se": pytest.approx(100 * math.sqrt((1 / 80) * (79 / 80) / 80)),
                   "top5_se": pytest.approx(100 * math.sqrt((2 / 80) * (78 / 80) / 80))}


def test_k_larger_than_the_bank_uses_the_whole_bank():
    scores = knn_scores(_unit(0, 90), torch.tensor([0, 1]), _unit(10), [20], num_classes=2, temperature=1.0)[20]
    np.testing.assert_allclose(scores[0].numpy(), [np.exp(np.cos(np.radians(10))), np.exp(np.cos(np.radians(80)))],
                               rtol=1e-5)


def test_disturb_keeps_boxes_and_replaces_everything_else():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    background = np.full((10, 10, 3), 77, np.uint8)  # resized to 40x60: still all 77
    boxes = np.array([[5, 5, 20, 15], [30.2, 10.7, 50.5, 39]], np.float32)
    out = disturb(image, boxes, background)
    keep = np.zeros((40, 60), bool)
    keep[5:15, 5:20] = keep[10:39, 30:51] = True  # float boxes cover every pixel they touch
    np.testing.assert_array_equal(out[keep], image[keep])
    assert (out[~keep] == 77).all()


def test_resize_short_side_scales_and_caps():
    image = np.zeros((100, 300, 3), np.uint8)
    out, scale = resize_short_side(image, 50, 1000)
    assert out.shape[:2] == (50, 150) and scale == pytest.approx(0.5)
    out, scale = resize_short_side(image, 50, 120)  # the longer side would be 150 > 120
    assert out.shape[:2] == (40, 120) and scale == pytest.approx(0.4)


def test_bank_plan_takes_one_object_per_class_per_image(coco_data):
    from sslcli.data.readers.sources import open_source

    source = open_source(coco_data, "train2017")
    class_ids = source.category_ids
    plan = plan_objects(source, class_ids, per_image=0, min_size=32, seed=0)
    queries = plan_objects(source, class_ids, per_image=None, min_size=32, seed=0)
    assert plan.n_objects < queries.n_objects
    for labels in plan.labels:
        assert len(set(labels.tolist())) == len(labels)  # one per class
    for i, boxes, labels in zip(plan.images, plan.boxes, plan.labels):
        present = {source.instances(i)[j].label for j in range(len(source.instances(i)))
                   if not source.instances(i)[j].iscrowd}
        assert set(labels.tolist()) <= present
        assert (np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= 32).all()
    again = plan_objects(source, class_ids, per_image=0, min_size=32, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(plan.boxes, again.boxes))  # seeded


def test_cut_out_blacks_out_pixels_outside_the_gt_mask(coco_data):
    from sslcli.data.readers.objects import cut_out, eligible_objects, integer_box
    from sslcli.data.readers.sources import open_source

    source = open_source(coco_data, "val2017")
    ref = eligible_objects(source, 32)[0]
    image = source.load(ref.image_index)
    mask = source.instance_masks(ref.image_index)[0][ref.instance_index]
    x0, y0, x1, y1 = integer_box(ref.box, image.shape[1], image.shape[0])
    crop, box_crop = cut_out(source, ref, masked=True), cut_out(source, ref, masked=False)
    np.testing.assert_array_equal(box_crop, image[y0:y1, x0:x1])
    inside = mask[y0:y1, x0:x1]
    assert 0 < inside.mean() < 1
    np.testing.assert_array_equal(crop[inside], box_crop[inside])
    assert crop[~inside].max() == 0


def test_pairs_and_tilings_are_seeded(coco_data):
    from sslcli.analysis.coupling import sample_pairs
    from sslcli.analysis.positional import sample_tilings
    from sslcli.data.readers.sources import open_source

    source = open_source(coco_data, "val2017")
    first, again = sample_pairs(source, 4, seed=5, cell=32), sample_pairs(source, 4, seed=5, cell=32)
    assert [s.meta for s in first] == [s.meta for s in again]
    assert all(s.meta["a"]["class"] != s.meta["b"]["class"] for s in first)
    assert [s.meta for s in sample_pairs(source, 4, seed=6, cell=32)] != [s.meta for s in first]
    assert sample_tilings(source, 3, seed=5, tile=16)[1] == sample_tilings(source, 3, seed=5, tile=16)[1]


# --- CLI end to end on real COCO images ----------------------------------------------------------------------------

@pytest.fixture
def two_checkpoints(tmp_path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"net{seed}.pth"
        torch.save(build_backbone("resnet18", width=8).state_dict(), path)
        paths.append(path)
    return paths


def _check_outputs(out_dir, name, result, n_checkpoints):
    written = json.loads((out_dir / f"{name}.json").read_text())
    assert written["analysis"] == name and len(written["checkpoints"]) == n_checkpoints
    png = (out_dir / f"{name}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["outputs"]["json"] == str(out_dir / f"{name}.json")
    return written


def test_cli_coupling_end_to_end(cli, coco_data, two_checkpoints, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = cli(["analyze", "coupling", *two_checkpoints, "--data", coco_data, "--pairs", "3",
                                "--cell", "64", "--out", out, "--json", "--device", "cpu"])
    assert code == 0, stderr
    result = json.loads(stdout)
    written = _check_outputs(out, "coupling", result, 2)
    assert len(written["pairs"]) == 3
    for entry in written["checkpoints"]:
        assert set(entry["layers"]) == set(STAGES)
        assert entry["layers"]["res2"]["n"] + entry["layers"]["res2"]["undefined"] == 3
        assert entry["checkpoint"]["format"] == "torchvision"
    a, b = written["pairs"][0]["a"], written["pairs"][0]["b"]
    assert a["class"] != b["class"]


def test_cli_positional_end_to_end_and_plot_has_every_checkpoint(cli, coco_data, two_checkpoints, tmp_path):
    from sslcli.analysis.plots import plot_against_depth

    out = tmp_path / "out"
    code, stdout, stderr = cli(["analyze", "positional", *two_checkpoints, "--data", coco_data, "--objects", "3",
                                "--tile", "32", "--out", out, "--json"])
    assert code == 0, stderr
    written = _check_outputs(out, "positional", json.loads(stdout), 2)
    curves = {e["label"]: e["layers"] for e in written["checkpoints"]}
    assert list(curves) == ["net0", "net1"]
    fig = plot_against_depth(curves, tmp_path / "again.png", "MCS", "t")
    assert [line.get_label() for line in fig.axes[0].get_lines()][:2] == ["net0", "net1"]
    for entry in written["checkpoints"]:
        assert all(0 < entry["layers"][s]["mean"] <= 1 + 1e-6 for s in STAGES)


def test_cli_oknn_end_to_end_with_disturbed(cli, coco_data, two_checkpoints, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = cli(["analyze", "oknn", two_checkpoints[0], "--data", coco_data, "--disturbed",
                                "--short-side", "96", "--max-images", "12", "--out", out, "--json"])
    assert code == 0, stderr
    written = _check_outputs(out, "oknn", json.loads(stdout), 1)
    entry = written["checkpoints"][0]
    for variant in ("clean", "disturbed"):
        assert 0 <= entry[variant]["top1"] <= entry[variant]["top5"] <= 100
        assert entry[variant]["bank_objects"] > 0 and entry[variant]["query_objects"] > 0


def test_same_weights_in_every_checkpoint_format_give_identical_results(cli, coco_data, tmp_path):
    from sslcli.backbone_checkpoints import backbone_to_haiku

    torch.manual_seed(3)
    state = build_backbone("resnet50", width=8).state_dict()  # ResNet-50 as issue 7 asks
    for value in state.values():
        if value.ndim == 1 and value.is_floating_point():  # BN vectors off their defaults: a mix-up would show
            value.uniform_(0.5, 1.5)
    paths = {"torchvision": tmp_path / "tv.pth", "moco": tmp_path / "moco.pth.tar", "soco": tmp_path / "soco.pth",
             "haiku": tmp_path / "detcon.npy"}
    torch.save(state, paths["torchvision"])
    torch.save({"epoch": 1, "arch": "resnet50", "state_dict": {f"module.encoder_q.{k}": v for k, v in state.items()},
                "optimizer": {}}, paths["moco"])
    torch.save({"opt": argparse.Namespace(arch="resnet50"), "model": {f"module.encoder.{k}": v for k, v in
                                                                      state.items()}, "epoch": 1}, paths["soco"])
    np.save(paths["haiku"], {f"res_net/~/{m}": p for m, p in backbone_to_haiku(state).items()}, allow_pickle=True)
    layers = {}
    for fmt, path in paths.items():
        out = tmp_path / fmt
        trust = ["--trust-checkpoint"] if fmt == "soco" else []  # only SoCo's pickled Namespace needs it
        code, stdout, stderr = cli(["analyze", "positional", path, "--data", coco_data, "--objects", "2",
                                    "--tile", "32", "--out", out, "--json", *trust])
        assert code == 0, stderr
        entry = json.loads(stdout)["checkpoints"][0]
        assert entry["checkpoint"]["format"] == fmt
        layers[fmt] = entry["per_object"]
    for fmt in paths:
        for stage in STAGES:
            np.testing.assert_allclose(layers[fmt][stage], layers["torchvision"][stage], rtol=0, atol=1e-6)


def test_cli_rejects_bad_input_with_one_line_and_exit_2(cli, tmp_path, two_checkpoints, coco_data):
    folder = tmp_path / "plain"
    folder.mkdir()
    import cv2

    cv2.imwrite(str(folder / "a.png"), np.zeros((8, 8, 3), np.uint8))
    code, _, err = cli(["analyze", "coupling", two_checkpoints[0], "--data", folder, "--out", tmp_path / "o"])
    assert code == 2 and "COCO-layout" in err and err.strip().count("\n") == 0
    code, _, err = cli(["analyze", "positional", tmp_path / "missing.pth", "--data", coco_data])
    assert code == 2 and "missing.pth" in err
    code, _, err = cli(["analyze", "positional", two_checkpoints[0], "--data", coco_data, "--device", "tpu"])
    assert code == 2 and "--device" in err
    code, _, err = cli(["analyze", "oknn", two_checkpoints[0], "--data", coco_data, "--disturbed", "--disturb", "x"])
    assert code == 2 and "--disturb" in err
    assert not (tmp_path / "o").exists()
    (tmp_path / "taken").write_text("not a folder")
    for name in ("coupling", "positional", "oknn"):  # --out names a folder: a file is refused before any work
        code, _, err = cli(["analyze", name, two_checkpoints[0], "--data", coco_data, "--out", tmp_path / "taken"])
        assert code == 2 and "--out" in err and err.strip().count("\n") == 0, (name, err)
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_every_analysis_labels_a_run_checkpoint_by_its_run(cli, coco_data, tmp_path):
    from sslcli.cli.analyze import _labels

    run = tmp_path / "runs" / "moco-tiny"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_backbone("resnet18", width=8).state_dict(), run / "last.pt")
    labels = {}
    for name, extra in (("positional", ["--objects", "2", "--tile", "32"]),
                        ("oknn", ["--max-images", "3", "--short-side", "64"])):
        code, stdout, stderr = cli(["analyze", name, run / "last.pt", "--data", coco_data, "--out", tmp_path / name,
                                    "--json", *extra])
        assert code == 0, stderr
        labels[name] = json.loads(stdout)["checkpoints"][0]["label"]
    assert labels == {"positional": "moco-tiny", "oknn": "moco-tiny"}  # not "last"
    other = tmp_path / "runs" / "detcon" / "last.pt"
    assert _labels([run / "last.pt", other, run / "epoch_0010.pt", tmp_path / "soco_800ep.pth"]) == [
        "moco-tiny", "detcon", "moco-tiny/epoch_0010", "soco_800ep"]
    assert _labels([tmp_path / "a" / "net.pt", tmp_path / "b" / "net.pt"]) == [
        str(tmp_path / "a" / "net.pt"), str(tmp_path / "b" / "net.pt")]  # collisions: full paths
