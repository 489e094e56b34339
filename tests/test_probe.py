"""Probes: linear vs scikit-learn, kNN and AP on hand-built cases, labels, preprocessing, cache, segment retrieval."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sslcli.eval.features import Preprocess, extract_features
from sslcli.eval.knn import knn_probe, knn_scores, parse_ks
from sslcli.eval.linear import fit_logistic, linear_probe, mean_average_precision, standardise
from sslcli.eval.segment_retrieval import IGNORE, confusion_to_iou, dilate_res5, kmeans, semantic_mask
from sslcli.models.backbone import build_backbone


def _blobs(n: int, classes: int, dim: int, seed: int, spread: float = 0.5):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(size=(classes, dim)) * spread
    y = rng.integers(0, classes, n)
    return centres[y] + rng.normal(size=(n, dim)), y


# --- linear probe ----------------------------------------------------------------------------------------------------

def test_linear_probe_agrees_with_scikit_learn_at_the_chosen_c():
    from sklearn.linear_model import LogisticRegression

    train_x, train_y = _blobs(500, 6, 24, seed=0)
    test_x, test_y = _blobs(400, 6, 24, seed=1)
    result = linear_probe(train_x, train_y, test_x, test_y, 6, multilabel=False, n_grid=45)
    assert 1e-5 <= result["C"] <= 1e5 and len(result["grid"]) == 45
    assert 30 < result["top1"] < 100  # a real, imperfect problem
    xs, xt = standardise(train_x, test_x)
    reference = LogisticRegression(C=result["C"], max_iter=10000, tol=1e-8).fit(xs, train_y)
    sk_top1 = float((reference.predict(xt) == test_y).mean() * 100)
    assert abs(result["top1"] - sk_top1) <= 0.5


@pytest.mark.parametrize("C", [1e-3, 0.3, 30.0])
def test_fit_logistic_matches_scikit_learn_weights(C):
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(300, 4, 10, seed=2)
    x = standardise(x)[0]
    ours = fit_logistic(torch.tensor(x), torch.tensor(y), C, 4, multilabel=False, max_iter=2000)
    ref = LogisticRegression(C=C, max_iter=10000, tol=1e-10).fit(x, y)
    # multinomial logits are defined up to a constant per row; sklearn's solution has zero-mean columns too
    np.testing.assert_allclose(ours.weight.numpy(), ref.coef_, atol=2e-3 * max(1.0, np.abs(ref.coef_).max()))
    np.testing.assert_allclose(ours.bias.numpy() - ours.bias.numpy().mean(), ref.intercept_ - ref.intercept_.mean(),
                               atol=2e-3 * max(1.0, np.abs(ref.intercept_).max()))


def test_multilabel_probe_is_per_class_binary_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 8))
    w = rng.normal(size=(8, 3))
    y = (x @ w + rng.normal(size=(300, 3)) > 0.5).astype(np.int64)
    ours = fit_logistic(torch.tensor(x), torch.tensor(y), 0.5, 3, multilabel=True, max_iter=2000)
    for c in range(3):
        ref = LogisticRegression(C=0.5, max_iter=10000, tol=1e-10).fit(x, y[:, c])
        np.testing.assert_allclose(ours.weight[c].numpy(), ref.coef_[0], atol=1e-3)
        assert ours.bias[c].item() == pytest.approx(ref.intercept_[0], abs=1e-3)
    result = linear_probe(x[:200], y[:200], x[200:], y[200:], 3, multilabel=True, n_grid=5)
    assert 50 < result["mAP"] <= 100


def test_average_precision_by_hand():
    scores = np.array([[0.9], [0.8], [0.7], [0.1]])
    targets = np.array([[1], [0], [1], [0]])
    # ranked: hit (P=1/1), miss, hit (P=2/3): AP = (1 + 2/3) / 2
    assert mean_average_precision(scores, targets) == pytest.approx((1 + 2 / 3) / 2 * 100)


# --- kNN -------------------------------------------------------------------------------------------------------------

def test_knn_votes_by_hand():
    # one class-0 neighbour at cosine 1, three class-1 neighbours at cosine 0.98, one class-2 point far away
    angle = math.acos(0.98)
    train = torch.tensor([[1.0, 0.0], [math.cos(angle), math.sin(angle)], [math.cos(angle), -math.sin(angle)],
                          [2 * math.cos(angle), 2 * math.sin(angle)], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1, 2])
    test = torch.tensor([[3.0, 0.0]])
    scores = knn_scores(train, labels, test, [1, 4, 5], num_classes=3)
    e1, e98, em1 = math.exp(1 / 0.07), math.exp(0.98 / 0.07), math.exp(-1 / 0.07)
    torch.testing.assert_close(scores[1][0], torch.tensor([e1, 0.0, 0.0]), rtol=1e-5, atol=0)
    torch.testing.assert_close(scores[4][0], torch.tensor([e1, 3 * e98, 0.0]), rtol=1e-5, atol=0)
    torch.testing.assert_close(scores[5][0], torch.tensor([e1, 3 * e98, em1]), rtol=1e-5, atol=1e-12)
    # 3·exp(0.98/0.07) = 2.25·exp(1/0.07): the vote flips from class 0 (k=1) to class 1 (k=4)
    result = knn_probe(train.numpy(), labels.numpy(), test.numpy(), np.array([1]), [1, 4], 3, multilabel=False)
    assert result["k"]["1"]["top1"] == 0.0 and result["k"]["4"]["top1"] == 100.0
    # k=1: only class 0 got a vote; the true class 1 tied at 0 with class 2 is not "in the top 5" (no vote)
    assert result["k"]["1"]["top5"] == 0.0 and result["k"]["4"]["top5"] == 100.0


def test_knn_top5_never_counts_a_class_without_votes():
    # 80 classes; every neighbour is of class 40 or 50. A query of class 51 (no votes) is a top-5 miss whatever order
    # torch.topk gives the 78 classes tied at 0 (it used to count as a hit when the tie-break picked class 51).
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([40, 40, 50])
    test = np.array([[1.0, 0.2]] * 3)
    for truth, top1, top5 in ((40, 100.0, 100.0), (50, 0.0, 100.0), (51, 0.0, 0.0), (52, 0.0, 0.0), (0, 0.0, 0.0)):
        result = knn_probe(train, labels, test, np.full(3, truth), [3], 80, multilabel=False)["k"]["3"]
        assert (result["top1"], result["top5"]) == (top1, top5), truth


def test_knn_multilabel_votes_sum_multi_hot_rows():
    train = np.array([[1.0, 0.0], [0.0, 1.0]])
    labels = np.array([[1, 1, 0], [0, 0, 1]])
    scores = knn_scores(torch.tensor(train), torch.tensor(labels), torch.tensor([[1.0, 1.0]]), [2], 3)[2][0]
    w = math.exp(math.sqrt(0.5) / 0.07)
    torch.testing.assert_close(scores, torch.tensor([w, w, w]), rtol=1e-5, atol=0)


def test_k_list_is_validated():
    assert parse_ks("200,10,20") == [10, 20, 200]
    from sslcli.errors import InputError

    for bad in ("", "ten", "0,5"):
        with pytest.raises(InputError):
            parse_ks(bad)


# --- labels, preprocessing, features and their cache -----------------------------------------------------------------

def test_labels_match_the_annotation_file(coco_data):
    from sslcli.eval.labels import image_labels, object_labels, open_split

    source = open_split(coco_data, "val2017")
    raw = json.loads((coco_data / "annotations" / "instances_val2017.json").read_text())
    cats = sorted(c["id"] for c in raw["categories"])
    images = sorted(i["id"] for i in raw["images"])
    expected = np.zeros((len(images), len(cats)), dtype=np.int64)
    for ann in raw["annotations"]:
        expected[images.index(ann["image_id"]), cats.index(ann["category_id"])] = 1
    np.testing.assert_array_equal(image_labels(source).targets, expected)
    objects = object_labels(source, min_size=32)
    kept = [a for a in raw["annotations"] if not a.get("iscrowd") and min(a["bbox"][2:]) >= 32]
    assert len(objects) == len(kept) and not objects.multilabel
    assert np.all(np.minimum(objects.boxes[:, 2] - objects.boxes[:, 0], objects.boxes[:, 3] - objects.boxes[:, 1]) >= 32)
    one = object_labels(source, per_image="one-per-class", seed=0)
    pairs = list(zip(one.image_index.tolist(), one.targets.tolist()))
    assert len(pairs) == len(set(pairs))


def test_preprocessing_moves_boxes_with_the_pixels():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[20:60, 40:120] = 255  # box (40, 20, 120, 60)
    out, (sx, sy) = Preprocess(64, "square").apply(image)
    assert out.shape == (64, 64, 3)
    x0, y0, x1, y1 = np.array([40, 20, 120, 60]) * [sx, sy, sx, sy]
    ys, xs = np.nonzero(out[..., 0] > 127)
    assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1
    assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1
    crop, _ = Preprocess(64, "center-crop").apply(image)
    assert crop.shape == (64, 64, 3)


def test_center_crop_is_resize_to_the_size_then_centre_crop():
    # METHODS.md §7: Resize(size) + CenterCrop(size). A 100x200 image whose pixels record their own coordinates:
    # the shorter side becomes 64 (whole height kept), the centre 64 columns of the 128-wide resize are original
    # columns 50..150.
    ys, xs = np.mgrid[0:100, 0:200]
    image = np.stack([xs, ys * 2, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    crop, _ = Preprocess(64, "center-crop").apply(image)
    assert abs(int(crop[32, 0, 0]) - 50) <= 2 and abs(int(crop[32, -1, 0]) - 149) <= 2
    assert int(crop[0, 32, 1]) <= 3 and int(crop[-1, 32, 1]) >= 195  # top and bottom rows of the original


def test_feature_cache_is_reused_without_running_the_model(coco_data, tmp_path):
    from sslcli.eval.labels import object_labels, open_split

    torch.manual_seed(0)
    net = build_backbone("resnet18", width=8).eval()
    rows = object_labels(open_split(coco_data, "val2017")).subset(np.arange(12))
    calls = []
    original = net.forward_map
    net.forward_map = lambda x: calls.append(len(x)) or original(x)
    pre = Preprocess(64, "square")
    first, ok = extract_features(net, rows, pre, checkpoint_sha256="abc", cache_dir=tmp_path, batch_size=4)
    assert calls and ok.all() and first.shape == (12, net.out_channels)
    calls.clear()
    again, _ = extract_features(net, rows, pre, checkpoint_sha256="abc", cache_dir=tmp_path, batch_size=7)
    assert calls == [] and np.array_equal(first, again)
    extract_features(net, rows, Preprocess(96, "square"), checkpoint_sha256="abc", cache_dir=tmp_path)
    assert calls  # other preprocessing: another cache entry
    assert len(list(tmp_path.glob("*.h5"))) == 2 and not list(tmp_path.glob(".*tmp"))
    # the features are RoIAlign of the box on res5: recompute one by hand
    from torchvision.ops import roi_align

    from sslcli.eval.roi import to_input

    image, (sx, sy) = pre.apply(rows.source.load(int(rows.image_index[0])))
    with torch.no_grad():
        fmap = original(to_input([image]))
    box = torch.tensor([[0.0, *(rows.boxes[0] * [sx, sy, sx, sy])]], dtype=torch.float32)
    expected = roi_align(fmap, box, 7, spatial_scale=1 / 32, sampling_ratio=-1, aligned=True).mean((2, 3))[0]
    np.testing.assert_allclose(first[0], expected.numpy(), rtol=1e-4, atol=1e-5)


# --- segment retrieval parts -----------------------------------------------------------------------------------------

def test_dilate_res5_matches_torchvision_dilation_and_keeps_resolution():
    torch.manual_seed(0)
    ref = build_backbone("resnet50", width=8, dilate_res5=True).eval()
    ours = build_backbone("resnet50", width=8).eval()
    ours.load_state_dict(ref.state_dict())
    dilate_res5(ours)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_map(x), ref.forward_map(x))
        r18 = dilate_res5(build_backbone("resnet18", width=8).eval())
        assert r18.forward_map(x).shape[-2:] == (4, 4)  # output stride 16


def test_kmeans_separates_two_blobs():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20, 3, generator=gen) * 0.1, torch.randn(30, 3, generator=gen) * 0.1 + 5])
    assign = kmeans(x, 2, generator=torch.Generator().manual_seed(1))
    assert len(set(assign[:20].tolist())) == 1 and len(set(assign[20:].tolist())) == 1
    assert assign[0] != assign[20]
    assert kmeans(x[:3], 15).unique().numel() <= 3  # K is capped by the number of points


def test_semantic_mask_paints_small_objects_on_top_and_ignores_crowds():
    from sslcli.data.readers.sources import Instance

    masks = np.zeros((3, 6, 6), dtype=bool)
    masks[0, :4, :4] = True  # big object, label 2
    masks[1, 1:3, 1:3] = True  # small object inside it, label 5
    masks[2, 4:, 4:] = True  # crowd
    insts = [Instance((0, 0, 4, 4), 3, 2, False, 16.0, 1), Instance((1, 1, 3, 3), 6, 5, False, 4.0, 2),
             Instance((4, 4, 6, 6), 3, 2, True, 4.0, 3)]

    class FakeSource:
        def instance_masks(self, index):
            return masks, insts

    out = semantic_mask(FakeSource(), 0, 6, 6)
    assert out[0, 0] == 3 and out[1, 1] == 6 and out[5, 5] == IGNORE and out[0, 5] == 0


def test_iou_from_confusion_by_hand():
    confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # rows: truth, columns: prediction
    iou, present = confusion_to_iou(confusion)
    assert present.tolist() == [True, True, False]
    assert iou[0] == pytest.approx(5 / (5 + 1 + 2)) and iou[1] == pytest.approx(3 / (3 + 2 + 1))


# --- end to end through the CLI on real COCO images ------------------------------------------------------------------

@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = build_backbone("resnet18", width=8)
    path = tmp_path / "tiny.pt"
    torch.save({"format": "sslcli-checkpoint", "arch": "resnet18", "width": 8, "backbone": net.state_dict()}, path)
    return path


def test_probes_end_to_end_on_coco_data(cli, coco_data, tiny_checkpoint, tmp_path):
    common = ["--data", coco_data, "--image-size", "64", "--cache", tmp_path / "cache", "--json"]
    code, out, err = cli(["probe", "linear", tiny_checkpoint, *common, "--c-grid", "3"])
    assert code == 0, err
    result = json.loads(out)
    assert result["multilabel"] and result["train_rows"] == 50 and 0 <= result["mAP"] <= 100
    assert result["checkpoint"]["format"] == "sslcli"

    code, out, err = cli(["probe", "linear", tiny_checkpoint, *common, "--c-grid", "3", "--labels", "object"])
    assert code == 0, err
    result = json.loads(out)
    assert not result["multilabel"] and result["train_rows"] > 50 and 0 <= result["top1"] <= result["top5"] <= 100

    code, out, err = cli(["probe", "linear", tiny_checkpoint, *common, "--c-grid", "3", "--labels", "object",
                          "--train-split", "val2017", "--val-split", "train2017", "--test-split", "val2017",
                          "--allow-overlap"])  # evaluating on the training split: only to count rows here
    assert code == 0, err
    assert "OVERLAP" in err
    predefined = json.loads(out)
    assert predefined["overlapping_images"] > 0
    assert predefined["train_rows"] == result["train_rows"] + result["test_rows"]  # train2017 + val2017 objects

    code, out, err = cli(["probe", "knn", tiny_checkpoint, *common, "--labels", "object", "--k", "5,20",
                          "--out", tmp_path / "knn.json"])
    assert code == 0, err
    result = json.loads(out)
    assert set(result["k"]) == {"5", "20"} and all(0 <= v["top1"] <= v["top5"] <= 100 for v in result["k"].values())
    assert "reusing" in err  # same rows and preprocessing as the object linear probe: features come from the cache
    assert json.loads((tmp_path / "knn.json").read_text())["k"] == result["k"]

    code, out, err = cli(["probe", "segment-retrieval", tiny_checkpoint, *common])
    assert code == 0, err
    result = json.loads(out)
    assert 0 <= result["mIoU"] <= 100 and result["classes_scored"] > 1 and result["test_regions"] > 50
    assert result["train_images"] == result["test_images"] == 50
    code, out, err = cli(["probe", "segment-retrieval", tiny_checkpoint, *common, "--train-images", "20"])
    assert code == 0, err
    assert json.loads(out)["train_images"] == 20


def test_probe_input_errors_exit_2(cli, coco_data, tiny_checkpoint, tmp_path):
    code, _, err = cli(["probe", "knn", tiny_checkpoint, "--data", coco_data, "--k", "zero", "--no-cache"])
    assert code == 2 and "--k" in err
    code, _, err = cli(["probe", "linear", tiny_checkpoint, "--data", coco_data, "--labels", "pixels", "--no-cache"])
    assert code == 2 and "--labels" in err
    code, _, err = cli(["probe", "linear", tmp_path / "none.pt", "--data", coco_data])
    assert code == 2 and "none.pt" in err
    # out-of-range numbers are usage errors naming the option (were exit 1 with a library's ValueError)
    for option, value in (("--batch-size", "0"), ("--workers", "-1"), ("--temperature", "0")):
        code, _, err = cli(["probe", "knn", tiny_checkpoint, "--data", coco_data, option, value, "--no-cache"])
        assert code == 2 and option in err, (option, err)
    for probe in ("linear", "knn", "segment-retrieval"):  # --out names a file: a folder is refused before any work
        code, _, err = cli(["probe", probe, tiny_checkpoint, "--data", coco_data, "--out", tmp_path, "--no-cache"])
        assert code == 2 and "--out" in err and "features" not in err, (probe, err)


def test_probes_on_an_image_folder(cli, coco_data, tiny_checkpoint, tmp_path):
    import shutil

    images = sorted((coco_data / "val2017").glob("*.jpg"))[:12]
    for split, part in (("train", images[:8]), ("val", images[8:])):
        for j, path in enumerate(part):
            folder = tmp_path / "folder" / split / ("even" if j % 2 == 0 else "odd")
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / path.name)
    (tmp_path / "folder" / "train" / "odd" / "broken.jpg").write_bytes(b"not a jpeg")
    common = ["--data", tmp_path / "folder", "--image-size", "64", "--no-cache", "--json"]
    code, out, err = cli(["probe", "linear", tiny_checkpoint, *common, "--c-grid", "3"])
    assert code == 0, err
    assert "broken.jpg" in err  # reported and left out
    result = json.loads(out)
    assert not result["multilabel"] and result["num_classes"] == 2 and result["train_rows"] == 8
    assert result["train_split"] == "train" and result["test_rows"] == 4 and 0 <= result["top1"] <= 100
    code, out, err = cli(["probe", "knn", tiny_checkpoint, *common, "--k", "8"])
    assert code == 0, err
    # k = all 8 training rows: both classes get votes, so with two classes the true one is always in the top 5 (a
    # class without votes never counts; with fewer neighbours all of one class it would not)
    assert json.loads(out)["k"]["8"]["top5"] == 100.0
    code, _, err = cli(["probe", "knn", tiny_checkpoint, *common, "--labels", "object"])
    assert code == 2 and "COCO" in err


def test_region_labels_and_scoring_by_hand():
    from types import SimpleNamespace

    from sslcli.data.readers.sources import Instance
    from sslcli.eval.segment_retrieval import label_train_regions, score_regions

    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, :3, :3] = True  # one object of class index 0 (ground-truth value 1) on a 4x4 image

    class FakeSource:
        records = [SimpleNamespace(height=4, width=4)]

        def __len__(self):
            return 1

        def instance_masks(self, index):
            return mask, [Instance((0, 0, 3, 3), 1, 0, False, 9.0, 1)]

    # a 2x2 region map: left half region 0, right half region 1 (each 2 columns once upsampled to 4x4)
    regions = {"desc": np.zeros((2, 3), dtype=np.float32), "image": np.array([0, 0]),
               "maps": np.array([[[0, 1], [0, 1]]], dtype=np.uint8)}
    # region 0: 6 object pixels, 2 background -> 1; region 1: 3 object pixels, 5 background -> 0
    np.testing.assert_array_equal(label_train_regions(FakeSource(), regions, 2), [1, 0])
    confusion = score_regions(FakeSource(), regions, np.array([1, 0]), 2)
    # truth bg: 7 px (2 predicted object in region 0, 5 bg in region 1); truth object: 9 px (6 right, 3 predicted bg)
    np.testing.assert_array_equal(confusion, [[5, 2], [3, 6]])
