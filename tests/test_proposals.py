"""Proposal methods through the store: FH equals skimage, grid, GT, MCG import, selective search, SoCo filter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io
from skimage.segmentation import felzenszwalb

from sslcli.data.readers.images import load_image
from sslcli.data.readers.sources import open_source
from sslcli.data.stores.store import RegionStore
from sslcli.data.views.label_maps import grid_label_map, gt_label_map
from sslcli.proposals.filters import soco_filter
from sslcli.proposals.mcg import read_mcg
from sslcli.proposals.selective_search import selective_search

SCENES = ("000000000001.jpg", "000000000002.jpg", "000000000003.jpg")  # of the generated coco_data


def link_images(coco_data: Path, folder: Path, names=SCENES) -> Path:
    folder.mkdir()
    for name in names:
        os.symlink(coco_data / "train2017" / name, folder / name)
    return folder


def test_fh_label_maps_equal_skimage_called_directly(coco_data, tmp_path, cli):
    images = link_images(coco_data, tmp_path / "imgs", SCENES[1:])
    out = tmp_path / "fh.h5"
    code, _, err = cli(["prepare", "masks", images, "--method", "fh", "--out", out, "--workers", "2", "-q"])
    assert code == 0, err
    store = RegionStore(out)
    assert store.scales == [500, 1000, 1500] and store.attrs["parameters"]["sigma"] == 0.8
    assert store.image_ids == list(SCENES[1:])
    for name in SCENES[1:]:
        image = load_image(images / name)
        for k, scale in enumerate((500, 1000, 1500)):
            expected = felzenszwalb(image, scale=scale, sigma=0.8, min_size=scale)
            assert np.array_equal(store.label_map(name, k), expected), (name, scale)
            assert store.region_counts()[store.index_of(name), k] == expected.max() + 1


def test_fh_keeps_thousands_of_segments(tmp_path, cli):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    image = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "imgs" / "noise.png"), image[:, :, ::-1])
    assert cli(["prepare", "masks", tmp_path / "imgs", "--scales", "1", "--sigma", "0", "--out", tmp_path / "s.h5"])[0] == 0
    stored = RegionStore(tmp_path / "s.h5").label_map("noise.png")
    expected = felzenszwalb(image, scale=1, sigma=0, min_size=1)
    assert expected.max() > 1000 and np.array_equal(stored, expected)


def test_grid_label_map_by_hand():
    expected = np.array([[0, 0, 0, 1, 1, 1],  # rows 0-2: floor(y·2/5) = 0
                         [0, 0, 0, 1, 1, 1],
                         [0, 0, 0, 1, 1, 1],
                         [2, 2, 2, 3, 3, 3],
                         [2, 2, 2, 3, 3, 3]])
    assert np.array_equal(grid_label_map(5, 6, 2), expected)
    assert np.unique(grid_label_map(480, 640, 5)).tolist() == list(range(25))


def test_gt_label_map_keeps_small_instances_on_top():
    masks = np.zeros((3, 6, 6), bool)
    masks[0, :4, :4] = True  # 16 px
    masks[1, 1:3, 1:3] = True  # 4 px, inside instance 0
    masks[2, 4:, 4:] = True  # 4 px
    out = gt_label_map(masks)
    assert out[1, 1] == 2 and out[0, 0] == 1 and out[5, 5] == 3 and out[5, 0] == 0
    assert (out == 2).sum() == 4 and (out == 1).sum() == 12
    assert np.array_equal(gt_label_map(np.zeros((0, 3, 4), bool)), np.zeros((3, 4)))  # an image without instances


@pytest.mark.photographs("crowd annotations (iscrowd RLE) exist only in the real COCO files")
def test_gt_store_from_coco_annotations(tiny_coco, tmp_path, cli):
    out = tmp_path / "gt.h5"
    assert cli(["prepare", "masks", tiny_coco, "--method", "gt", "--out", out, "-q"])[0] == 0
    store = RegionStore(out)
    source = open_source(tiny_coco, "train2017")
    assert len(store) == len(source)
    crowd_seen = False
    for index in range(0, len(source), 7):
        image_id = source.records[index].image_id
        masks, instances = source.instance_masks(index)
        label_map = store.label_map(image_id)
        assert label_map.shape == masks.shape[1:]
        assert np.array_equal(label_map > 0, masks.any(0))  # union of the instances
        assert store.region_counts()[store.index_of(image_id), 0] == len(np.unique(label_map[label_map > 0]))
        for j in range(len(masks)):
            assert masks[j][label_map == j + 1].all()  # a pixel labelled j+1 belongs to instance j
        assert np.array_equal(store.crowd(image_id), [inst.iscrowd for inst in instances])
    for index, rec in enumerate(source.records):
        if any(inst.iscrowd for inst in source.instances(index)):
            crowd_seen = store.crowd(rec.image_id).any()
            break
    assert crowd_seen


def _write_mat_v73(path: Path, superpixels: np.ndarray, labels: list[np.ndarray], scores: np.ndarray) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 with a 512-byte header, arrays transposed, cells as references."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f["superpixels"] = superpixels.T.astype(np.float64)
        refs = f.create_group("#refs#")
        ref_list = []
        for k, lab in enumerate(labels):
            refs[f"r{k}"] = lab.astype(np.float64)[None, :]
            ref_list.append(refs[f"r{k}"].ref)
        f.create_dataset("labels", data=np.array([ref_list], dtype=h5py.ref_dtype))
        f["scores"] = scores[None, :]
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .".ljust(116) + b"\0" * 8
    with open(path, "r+b") as fh:
        fh.write(header + b"\x00\x02" + b"IM")


def _mcg_case(rng, h: int, w: int, k: int):
    superpixels = rng.integers(1, 13, (h, w))
    labels = [rng.choice(np.arange(1, 13), rng.integers(1, 5), replace=False) for _ in range(k)]
    scores = rng.random(k)
    return superpixels, labels, scores


def test_mcg_import_keeps_the_16_best_masks(tmp_path, cli):
    rng = np.random.default_rng(3)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "mcg").mkdir()
    cases = {}
    for name, (h, w, k, v73) in {"a": (20, 30, 24, False), "b": (16, 16, 5, False), "c": (12, 18, 20, True)}.items():
        cv2.imwrite(str(tmp_path / "imgs" / f"{name}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        sp, labels, scores = cases[name] = _mcg_case(rng, h, w, k)
        if v73:
            _write_mat_v73(tmp_path / "mcg" / f"COCO_train2014_{name}.mat", sp, labels, scores)
        else:
            cells = np.empty((k, 1), dtype=object)
            for j, lab in enumerate(labels):
                cells[j, 0] = lab.astype(np.float64)[:, None]
            scipy.io.savemat(tmp_path / "mcg" / f"{name}.mat",
                             {"superpixels": sp.astype(np.uint16), "labels": cells, "scores": scores[:, None]})
    out = tmp_path / "mcg.h5"
    code, _, err = cli(["prepare", "masks", tmp_path / "imgs", "--method", "mcg", "--mcg-dir", tmp_path / "mcg",
                        "--out", out])
    assert code == 0, err
    store = RegionStore(out)
    for name, (sp, labels, scores) in cases.items():
        order = sorted(range(len(scores)), key=lambda j: -scores[j])[:16]
        masks = store.masks(f"{name}.png")
        assert masks.dtype == np.uint8 and len(masks) == min(16, len(scores))
        assert store.region_counts()[store.index_of(f"{name}.png"), 0] == len(masks)
        for rank, j in enumerate(order):
            assert np.array_equal(masks[rank], np.isin(sp, labels[j]).astype(np.uint8))
        assert np.allclose(store.region_values(f"{name}.png"), scores[order])
        flat = store.label_map(f"{name}.png")  # owner = best-scoring mask covering the pixel
        for y, x in [(0, 0), (3, 5), (h - 1, w - 1) if (h := sp.shape[0]) and (w := sp.shape[1]) else (0, 0)]:
            covering = [rank for rank, j in enumerate(order) if sp[y, x] in labels[j]]
            assert flat[y, x] == (covering[0] + 1 if covering else 0)
    # v7.3 reader on its own
    sp, labels, scores = read_mcg(tmp_path / "mcg" / "COCO_train2014_c.mat")
    assert np.array_equal(sp, cases["c"][0]) and np.allclose(scores, cases["c"][2])
    assert all(np.array_equal(a, b) for a, b in zip(labels, cases["c"][1]))


def test_mcg_bad_inputs_are_one_line_errors(tmp_path, cli):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "mcg").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    scipy.io.savemat(tmp_path / "mcg" / "other.mat", {"superpixels": np.ones((8, 8))})
    args = ["prepare", "masks", tmp_path / "imgs", "--method", "mcg", "--mcg-dir", tmp_path / "mcg",
            "--out", tmp_path / "m.h5", "-q"]
    code, _, err = cli(args)
    assert code == 2 and "no MCG file for image a.png" in err
    scipy.io.savemat(tmp_path / "mcg" / "a.mat", {"superpixels": np.ones((8, 8))})
    code, _, err = cli([*args, "--overwrite"])
    assert code == 2 and "lacks the field" in err and len(err.strip().splitlines()) == 1


def test_soco_filter_rules_and_fallbacks():
    h, w = 100, 200  # sqrt(WH) = 141.4: kept scales 42.4 .. 113.1
    boxes = np.array([
        [0, 0, 60, 60],  # kept: 60 px, aspect 1, scale 0.42
        [0, 0, 20, 100],  # too narrow (w < 32)
        [0, 0, 150, 40],  # aspect 3.75
        [0, 0, 200, 100],  # scale 1.0
        [10, 10, 106, 42],  # aspect 3.0 (kept at the limit), scale 0.39
    ], np.float32)
    assert np.array_equal(soco_filter(boxes, h, w), boxes[[0, 4]])
    # nothing passes all three: the aspect-ratio rule alone
    assert np.array_equal(soco_filter(boxes[[1, 3]], h, w), boxes[[3]])
    # nothing passes the aspect rule either: the size rule alone
    assert np.array_equal(soco_filter(boxes[[1, 2]], h, w), boxes[[2]])
    # nothing at all: the whole image
    assert np.array_equal(soco_filter(np.array([[0, 0, 5, 30]]), h, w), [[0, 0, 200, 100]])
    assert np.array_equal(soco_filter(np.zeros((0, 4)), h, w), [[0, 0, 200, 100]])


def test_soco_filter_fallbacks_keep_the_size_rule():
    # SoCo's fallbacks (selective_search/filter_ss_proposals_json_post_no_prop.py) are its filter_ratio (w, h >= 32
    # AND aspect in [1/3, 3]), then filter_none (w, h >= 32): the 32 px minimum holds in every fallback.
    h, w = 100, 200
    tiny_square = [0, 0, 10, 10]  # aspect 1 but 10 px: refused by both fallbacks
    long_box = [0, 0, 150, 40]  # 150x40 (aspect 3.75): passes the size-only fallback
    assert np.array_equal(soco_filter(np.array([tiny_square, long_box]), h, w), [long_box])
    # The ratio fallback itself keeps only big-enough boxes: a small square never outranks a big 2:1 box.
    assert np.array_equal(soco_filter(np.array([tiny_square, [0, 0, 200, 100]]), h, w), [[0, 0, 200, 100]])


@pytest.mark.parametrize("backend", ["vectorized", "opencv", "reference"])
def test_selective_search_backends_give_valid_deterministic_boxes(coco_data, backend):
    image = np.ascontiguousarray(load_image(coco_data / "train2017" / SCENES[0])[100:260, 200:400])
    boxes = selective_search(image, backend)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 5
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 200).all() and (boxes[:, 3] <= 160).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    assert np.array_equal(boxes, selective_search(image, backend))


def test_prepare_boxes_store(coco_data, tmp_path, cli):
    images = link_images(coco_data, tmp_path / "imgs", SCENES[:2])
    code, stdout, _ = cli(["prepare", "boxes", images, "--json", "-q"])
    assert code == 0
    result = json.loads(stdout)
    assert result["store"] == str(images / "sslcli" / "ss-soco.h5") and result["images"] == 2
    assert result["parameters"]["strategies"] == "diverse"
    store = RegionStore(result["store"])
    for name in SCENES[:2]:
        image = load_image(images / name)
        h, w = image.shape[:2]
        expected = soco_filter(selective_search(image, "vectorized", "diverse"), h, w)  # the default grouping
        assert np.array_equal(store.boxes(name), expected)
        side = np.sqrt((expected[:, 2] - expected[:, 0]) * (expected[:, 3] - expected[:, 1]) / (h * w))
        assert ((side >= 0.3) & (side <= 0.8)).all()


def test_vectorized_grouping_on_stripes():
    from sslcli.proposals.ss_vectorized import _neighbour_pairs, selective_search_vectorized

    labels = np.array([[0, 0, 1],
                       [2, 2, 1],
                       [2, 3, 3]])
    assert _neighbour_pairs(labels).tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]]  # not (0, 3): diagonal only
    image = np.zeros((60, 120, 3), np.uint8)
    image[:, 40:80] = (255, 0, 0)
    image[:, 80:] = (0, 0, 255)
    boxes = selective_search_vectorized(image, scale=300, sigma=0.9, min_size=100)
    stripes = [[0, 0, 40, 60], [40, 0, 80, 60], [80, 0, 120, 60]]
    # 3 regions + 2 merges: each stripe, one merged pair of neighbours, the whole image
    assert len(boxes) == 5 and all(s in boxes.tolist() for s in stripes) and [0, 0, 120, 60] in boxes.tolist()
    pair = [b for b in boxes.tolist() if b not in stripes and b != [0, 0, 120, 60]][0]
    assert pair in ([0, 0, 80, 60], [40, 0, 120, 60])


def test_diverse_strategies_add_to_the_soco_hierarchy(coco_data):
    image = np.ascontiguousarray(load_image(coco_data / "train2017" / SCENES[0])[:200, :300])
    soco = {tuple(b) for b in selective_search(image, "vectorized", "soco").tolist()}
    diverse = {tuple(b) for b in selective_search(image, "vectorized", "diverse").tolist()}
    assert soco < diverse  # a union of hierarchies on the same segmentation, the SoCo one included
    with pytest.raises(ValueError, match="vectorized"):
        selective_search(image, "opencv", "diverse")


def test_prepare_boxes_soco_strategies_reproduce_socos_grouping(coco_data, tmp_path, cli):
    images = link_images(coco_data, tmp_path / "imgs", SCENES[:1])
    code, stdout, err = cli(["prepare", "boxes", images, "--strategies", "soco", "--json", "-q"])
    assert code == 0, err
    result = json.loads(stdout)
    assert result["store"] == str(images / "sslcli" / "ss-soco-soco-strategies.h5")
    assert result["parameters"]["strategies"] == "soco"
    image = load_image(images / SCENES[0])
    expected = soco_filter(selective_search(image, "vectorized", "soco"), *image.shape[:2])
    assert np.array_equal(RegionStore(result["store"]).boxes(SCENES[0]), expected)
    code, _, err = cli(["prepare", "boxes", images, "--backend", "opencv", "--strategies", "diverse"])
    assert code == 2 and "only the vectorized backend" in err
