"""ABO and recall against ground truth: hand-computed values, and tiny-COCO figures pinned by an independent port."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from sslcli.analysis.quality import (
    box_iou,
    boxes_best_overlaps,
    label_map_best_overlaps,
    masks_best_overlaps,
    summarize_overlaps,
)
from sslcli.data.stores.store import ImageResult, encode, write_store

LIMIT = 8  # images of tiny-COCO the pinned figures cover (the independent port below is slow on purpose)


def test_label_map_best_overlaps_by_hand():
    label_map = np.array([[0, 0, 1, 1],
                          [0, 0, 1, 1],
                          [2, 2, 2, 2],
                          [2, 2, 2, 2]])
    gt = np.zeros((2, 4, 4), bool)
    gt[0, :2, :3] = True  # 6 px: with segment 0 (4 px) ∩ 4 → 4/6; with segment 1 ∩ 2 → 2/8
    gt[1, 1:, :] = True  # 12 px: with segment 2 (8 px) ∩ 8 → 8/12
    assert np.allclose(label_map_best_overlaps(gt, label_map), [4 / 6, 8 / 12])
    # labels need not be contiguous
    assert np.allclose(label_map_best_overlaps(gt, label_map * 1000 + 7), [4 / 6, 8 / 12])


def test_binary_masks_and_boxes_by_hand():
    gt = np.zeros((1, 3, 3), bool)
    gt[0, 0, :] = True  # 3 px
    masks = np.zeros((2, 3, 3), bool)
    masks[0, :2, :2] = True  # ∩ 2, ∪ 5
    masks[1] = True  # ∩ 3, ∪ 9
    assert np.allclose(masks_best_overlaps(gt, masks), [2 / 5])
    assert np.allclose(masks_best_overlaps(gt, masks[:0]), [0])

    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]])
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]])
    expected = np.array([[1 / 7, 1, 0], [0, 1 / 4, 0]])
    assert np.allclose(box_iou(a, b), expected)
    assert np.allclose(boxes_best_overlaps(a, b), [1, 1 / 4])
    assert np.allclose(boxes_best_overlaps(a, np.zeros((0, 4))), [0, 0])
    summary = summarize_overlaps(np.array([0.2, 0.5, 0.9, 0.4]))
    assert summary == {"instances": 4, "abo": pytest.approx(0.5), "recall@0.5": 0.5}


def _coco(tiny_coco) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(tiny_coco / "annotations" / "instances_train2017.json"))


def _iou_loop(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks, the slow obvious way."""
    return float(np.logical_and(a, b).sum()) / float(np.logical_or(a, b).sum())


def test_mask_abo_on_coco_data_matches_an_independent_port(coco_data, tmp_path, cli):
    store = tmp_path / "grid.h5"
    assert cli(["prepare", "masks", coco_data, "--method", "grid", "--grid", "4", "--out", store, "-q"])[0] == 0
    code, stdout, err = cli(["prepare", "inspect", store, "--gt", coco_data, "--limit", LIMIT, "--json", "-q"])
    assert code == 0, err
    quality = json.loads(stdout)

    coco = _coco(coco_data)
    best = []
    for image_id in sorted(coco.imgs)[:LIMIT]:
        info = coco.imgs[image_id]
        h, w = info["height"], info["width"]
        ys, xs = np.mgrid[0:h, 0:w]
        cells = [(ys * 4 // h == r) & (xs * 4 // w == c) for r in range(4) for c in range(4)]
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            mask = coco.annToMask(ann).astype(bool)
            if ann["iscrowd"] or not mask.any():
                continue
            best.append(max(_iou_loop(mask, cell) for cell in cells))
    assert quality["instances"] == len(best) > 20
    assert quality["abo"] == pytest.approx(float(np.mean(best)), abs=1e-12)
    assert quality["recall@0.5"] == pytest.approx(float(np.mean(np.array(best) >= 0.5)), abs=1e-12)

    # `analyze abo` is the same implementation behind another name
    code, stdout, _ = cli(["analyze", "abo", store, "--gt", coco_data, "--limit", LIMIT, "--json", "-q"])
    assert code == 0 and json.loads(stdout) == quality


def test_box_recall_on_coco_data_matches_an_independent_port(coco_data, tmp_path, cli):
    coco = _coco(coco_data)
    rng = np.random.default_rng(0)
    results, proposals = [], {}
    for image_id in sorted(coco.imgs):
        gt = np.array([a["bbox"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))], np.float32).reshape(-1, 4)
        # proposals: GT boxes moved by up to 40 % of their size, plus random boxes
        jitter = gt[:, 2:].repeat(2, axis=1) * rng.uniform(-0.4, 0.4, gt.shape).astype(np.float32)
        xyxy = np.concatenate([gt[:, :2], gt[:, :2] + gt[:, 2:]], axis=1) + jitter
        x0y0 = rng.uniform(0, 300, (5, 2)).astype(np.float32)
        boxes = np.concatenate([xyxy, np.concatenate([x0y0, x0y0 + rng.uniform(5, 300, (5, 2))], 1)]).astype(np.float32)
        proposals[image_id] = boxes
        results.append(encode(ImageResult(str(image_id), boxes=boxes, image_size=(1, 1)), "boxes"))
    store = tmp_path / "boxes.h5"
    write_store(store, "boxes", {"method": "selective-search", "parameters": "{}", "input_hash": "-"}, results,
                {"images": len(results), "payload": sum(len(b) for b in proposals.values()), "values": 0})
    code, stdout, err = cli(["prepare", "inspect", store, "--gt", coco_data, "--json", "-q"])
    assert code == 0, err
    quality = json.loads(stdout)

    def iou(a, b):  # x, y, w, h GT box against x0, y0, x1, y1 proposal
        ix = max(0.0, min(a[0] + a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[1] + a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        return inter / (a[2] * a[3] + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    best = [max(iou(ann["bbox"], p) for p in proposals[image_id])
            for image_id in sorted(coco.imgs) for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            if not ann["iscrowd"] and ann["bbox"][2] > 0 and ann["bbox"][3] > 0]
    assert quality["instances"] == len(best) > 200  # 50 scenes of about 5 objects
    assert quality["recall@0.5"] == pytest.approx(float(np.mean(np.array(best) >= 0.5)), abs=1e-12)
    assert quality["abo"] == pytest.approx(float(np.mean(best)), abs=1e-6)  # float32 proposals
    assert 0.2 < quality["recall@0.5"] < 0.95


@pytest.mark.photographs("it needs images without any annotation beside annotated ones, as real COCO has (every generated scene has objects)")
def test_inspect_summary_render_and_bad_input(tiny_coco, tmp_path, cli):
    store = tmp_path / "grid.h5"
    assert cli(["prepare", "masks", tiny_coco, "--method", "grid", "--grid", "3", "--out", store, "-q"])[0] == 0
    code, stdout, err = cli(["prepare", "inspect", store, "--json", "-q", "--gt", tiny_coco,
                             "--render", tmp_path / "png", "--render-count", 2])
    assert code == 0, err
    report = json.loads(stdout)  # all 50 images, some without any instance: counted apart
    coco = _coco(tiny_coco)
    with_instances = sum(any(not a["iscrowd"] and coco.annToMask(a).any()
                             for a in coco.loadAnns(coco.getAnnIds(imgIds=[i]))) for i in coco.imgs)
    assert 0 < with_instances < 50
    assert report["images"] == 50 and report["images_with_gt"] == with_instances
    assert report["images_without_gt"] == 50 - with_instances and report["stale_images"] == 0
    assert report["regions_per_image"] == {"mean": 9.0, "min": 9, "max": 9}
    assert report["parameters"] == {"grid": 3} and len(report["rendered"]) == 2
    assert all((tmp_path / "png" / p.split("/")[-1]).stat().st_size > 1000 for p in report["rendered"])
    code, _, err = cli(["prepare", "inspect", store, "--gt", tmp_path])
    assert code == 2 and "annotation" in err
    code, _, err = cli(["prepare", "inspect", tmp_path / "none.h5"])
    assert code == 2 and "not found" in err
    code, _, err = cli(["prepare", "inspect", store, "--gt", tiny_coco, "--render", tmp_path / "png2",
                        "--render-count", -1])
    assert code == 2 and "--render-count" in err and not (tmp_path / "png2").exists()
