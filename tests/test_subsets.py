"""`prepare subset`: count rules against hand-worked formulas, OI-MINI's rules, fake ImageNet/OpenImages trees end to
end, determinism, stats, errors, and the COCO side of OI-MINI from the real tiny-COCO annotations."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from sslcli.data.readers import subsets
from sslcli.data.readers.coco_openimages import BY_COCO_NAME, COCO_TO_OPENIMAGES
from sslcli.data.readers.sources import open_source
from sslcli.errors import InputError

TINY_JPEG = cv2.imencode(".jpg", np.full((8, 8, 3), 127, np.uint8))[1].tobytes()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------- counts, no files


def test_round_to_total_is_largest_remainder():
    assert subsets.round_to_total([1, 1, 1], 5).tolist() == [2, 2, 1]  # equal remainders: lower index first
    assert subsets.round_to_total([0.5, 2.5, 7.0], 10).tolist() == [1, 2, 7]  # 0.5,2.5,7 → remainders .5,.5,0
    counts = subsets.round_to_total(np.linspace(1, 50, 37), 1234)
    assert counts.sum() == 1234


def test_pareto_profile_by_hand_for_three_classes():
    # p = 1/4, 2/4, 3/4; x = p^(-1/6); mapped linearly onto [5, 1280].
    x = [4 ** (1 / 6), 2 ** (1 / 6), (4 / 3) ** (1 / 6)]
    middle = 5 + 1275 * (x[1] - x[2]) / (x[0] - x[2])
    assert middle == pytest.approx(448.62, abs=0.01)  # 5 + 1275 × 0.073347 / 0.210806
    assert subsets.pareto_profile(3) == pytest.approx([1280, middle, 5])


def test_pareto_profile_follows_alpha_6_between_the_caps():
    profile = subsets.pareto_profile(1000)
    assert profile[0] == 1280 and profile[-1] == 5 and np.all(np.diff(profile) < 0)
    # Undo the linear map with the two caps only: x_r / x_0 must equal (p_r / p_0)^(-1/alpha) with alpha = 6.
    p = np.arange(1, 1001) / 1001
    x0, x_last = p[0] ** (-1 / 6), p[-1] ** (-1 / 6)
    x = x_last + (profile - 5) / 1275 * (x0 - x_last)
    slope = np.polyfit(np.log(p), np.log(x), 1)[0]
    assert slope == pytest.approx(-1 / 6, abs=1e-9)
    x = _pareto_quantiles(1000)
    assert profile.sum() == pytest.approx(sum(_profile_from_definition(1000)), rel=1e-12)
    # A class holds more than L images where its x_r exceeds L's preimage x_L under the linear map, i.e. where
    # r < 1001 · x_L^(-6) (x_r = (r / 1001)^(-1/6) decreases in r): the counts follow by inverting the definition.
    def preimage(level):
        return x[-1] + (level - 5) / 1275 * (x[0] - x[-1])

    above_100 = math.ceil(1001 * preimage(100) ** -6) - 1
    below_20 = 1000 - math.floor(1001 * preimage(20) ** -6)
    assert (profile > 100).sum() == above_100 and (profile < 20).sum() == below_20
    # ImageNet-LT's shape (Liu et al.): ~385 classes above 100 images and ~136 below 20.
    assert abs(above_100 - 385) <= 25 and abs(below_20 - 136) <= 5


def _pareto_quantiles(num_classes: int) -> list[float]:
    """Pareto(α = 6, x_m = 1) upper-tail quantiles at the plotting positions p_r = r / (C + 1), r = 1..C."""
    return [(r / (num_classes + 1)) ** (-1 / 6) for r in range(1, num_classes + 1)]


def _profile_from_definition(num_classes: int) -> list[float]:
    """The long-tail profile from its definition (docs/subsets.md): the quantiles mapped linearly onto [5, 1280]."""
    x = _pareto_quantiles(num_classes)
    return [5 + 1275 * (xr - x[-1]) / (x[0] - x[-1]) for xr in x]


def test_long_tail_counts_scale_the_profile_to_size():
    plan = subsets.long_tail_counts([1300] * 1000, subsets.COCO_TRAIN_IMAGES, seed=0)
    by_rank = np.sort(plan.counts)[::-1]
    assert plan.counts.sum() == 118_287
    # Largest remainder on the quotas profile × size / profile sum: each count is its quota rounded down or up, and
    # the ranks rounded up are those with the largest fractional parts.
    quota = np.array(_profile_from_definition(1000))
    quota *= 118_287 / quota.sum()
    floor = np.floor(quota)
    assert np.all((by_rank == floor) | (by_rank == floor + 1))
    up, remainder = by_rank > floor, quota - floor
    assert up.sum() == 118_287 - floor.sum() and remainder[up].min() >= remainder[~up].max()
    assert sorted(plan.rank.tolist()) == list(range(1000))
    assert np.array_equal(plan.counts[np.argsort(plan.rank)], by_rank)


def test_long_tail_ranks_are_seeded_and_skip_small_classes():
    available = [2000] * 49 + [10]
    a = subsets.long_tail_counts(available, 3000, seed=1)
    b = subsets.long_tail_counts(available, 3000, seed=1)
    c = subsets.long_tail_counts(available, 3000, seed=2)
    assert np.array_equal(a.counts, b.counts) and not np.array_equal(a.counts, c.counts)
    for plan in (a, c):
        assert plan.counts[49] <= 10 and np.all(plan.counts <= available)
        assert np.array_equal(np.sort(plan.counts), np.sort(a.counts))  # same profile, other classes on ranks


def test_long_tail_infeasible_size_names_the_rank_and_the_limit():
    with pytest.raises(InputError, match=r"rank 1/50.*up to about \d+"):
        subsets.long_tail_counts([100] * 50, 4000, seed=0)


def test_uniform_counts_equal_within_one_and_water_filled():
    counts = subsets.uniform_counts([40] * 50, 1234, seed=0)
    assert counts.sum() == 1234 and counts.max() - counts.min() == 1
    assert (counts == 25).sum() == 34  # 1234 = 50 × 24 + 34
    short = subsets.uniform_counts([3, 7] + [40] * 8, 200, seed=0)
    assert short[:2].tolist() == [3, 7] and short.sum() == 200 and short[2:].max() - short[2:].min() <= 1
    with pytest.raises(InputError, match="only 10 images"):
        subsets.uniform_counts([5, 5], 11, seed=0)


def _fake_oi_labels(rng, n_images=400, n_classes=12):
    return [rng.integers(0, n_classes, size=rng.integers(1, 8)) for _ in range(n_images)]


def test_select_oi_mini_rules_caps_and_greedy_maximality():
    labels = _fake_oi_labels(np.random.default_rng(0))
    caps = {0: 30, 1: 5, 2: 0, 3: 200}  # classes 4..11 are not shared
    chosen = subsets.select_oi_mini(labels, caps, seed=0)
    totals = Counter(int(c) for i in chosen for c in labels[i] if int(c) in caps)
    assert all(totals[c] <= cap for c, cap in caps.items())
    assert all(any(int(c) in caps for c in labels[i]) for i in chosen)
    assert totals[2] == 0
    # Greedy: every rejected image with a shared object would overflow a cap even now.
    for i in set(range(len(labels))) - set(chosen.tolist()):
        shared = Counter(int(c) for c in labels[i] if int(c) in caps)
        assert not shared or any(totals[c] + n > caps[c] for c, n in shared.items())
    assert np.array_equal(chosen, subsets.select_oi_mini(labels, caps, seed=0))
    assert not np.array_equal(chosen, subsets.select_oi_mini(labels, caps, seed=1))
    assert len(subsets.select_oi_mini(labels, caps, seed=0, limit=7)) == 7


def test_object_stats_table2_columns():
    stats = subsets.object_stats([np.array([0, 0, 1]), np.array([2]), np.array([0, 2, 2, 2])], ["a", "b", "c"])
    assert stats["images"] == 3 and stats["objects"] == 8
    assert stats["objects_per_image"] == pytest.approx(8 / 3)
    assert stats["categories_per_image"] == pytest.approx((2 + 1 + 2) / 3)
    assert stats["categories"] == 3 and stats["objects_per_class"] == {"c": 4, "a": 3, "b": 1}


# ----------------------------------------------------------------------------------------- the class table


def test_table_maps_80_coco_classes_to_distinct_openimages_classes():
    assert len(COCO_TO_OPENIMAGES) == 80 and len(BY_COCO_NAME) == 80
    assert len({m.mid for m in COCO_TO_OPENIMAGES}) == 80
    assert len({m.openimages for m in COCO_TO_OPENIMAGES}) == 80
    assert all(m.mid.startswith("/m/0") or m.mid.startswith("/m/1") for m in COCO_TO_OPENIMAGES)
    assert BY_COCO_NAME["person"][1:3] == ("Person", "/m/01g317")
    assert BY_COCO_NAME["car"][1:3] == ("Car", "/m/0k4j")
    assert BY_COCO_NAME["mouse"].openimages == "Computer mouse"  # not the animal
    assert BY_COCO_NAME["dining table"][1:] == ("Table", "/m/04bcr3", False)


# ---------------------------------------------------------------------------------------- fake ImageNet tree


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """50 classes of 20..40 tiny JPEGs in train/<wnid>/ (class k holds 20 + k % 21 images)."""
    root = tmp_path_factory.mktemp("imagenet")
    for k in range(50):
        folder = root / "train" / f"n{k:08d}"
        folder.mkdir(parents=True)
        for j in range(20 + k % 21):
            (folder / f"n{k:08d}_{j}.JPEG").write_bytes(TINY_JPEG)
    return root


def _run(cli, args):
    code, out, err = cli(["prepare", "subset", *args, "--json", "--quiet"])
    assert code == 0, err
    return json.loads(out)


def test_in118k_end_to_end_uniform_and_deterministic(cli, imagenet, tmp_path):
    result = _run(cli, [imagenet, "--kind", "in118k", "--size", 500, "--seed", 3, "--out", tmp_path / "a"])
    assert result["images"] == 500 and result["classes"] == 50
    source = open_source(result["manifest"])
    assert len(source) == 500 and source.classes == [f"n{k:08d}" for k in range(50)]
    per_class = Counter(r.label for r in source.records)
    assert set(per_class.values()) == {10}
    assert all(r.path.is_file() and r.path.parent.name == source.classes[r.label] for r in source.records)
    stats = json.loads(Path(result["stats"]).read_text())
    assert stats["images"] == 500 and set(stats["images_per_class"].values()) == {10}
    assert Path(result["histogram"]).read_bytes()[:8] == PNG_MAGIC
    again = _run(cli, [imagenet, "--kind", "in118k", "--size", 500, "--seed", 3, "--out", tmp_path / "b"])
    other = _run(cli, [imagenet, "--kind", "in118k", "--size", 500, "--seed", 4, "--out", tmp_path / "c"])
    assert Path(result["manifest"]).read_bytes() == Path(again["manifest"]).read_bytes()
    assert Path(result["manifest"]).read_bytes() != Path(other["manifest"]).read_bytes()
    assert Path(result["manifest"]).name == "in118k-500-seed3.json"


def test_in118k_lt_end_to_end_follows_the_profile(cli, imagenet, tmp_path):
    result = _run(cli, [imagenet, "--kind", "in118k-lt", "--size", 300, "--out", tmp_path])
    stats = json.loads(Path(result["stats"]).read_text())
    counts = np.array(list(stats["images_per_class"].values()))  # written in descending order
    assert counts.sum() == 300 and np.all(np.diff(counts) <= 0)
    profile = np.array(_profile_from_definition(50))
    assert np.abs(counts - profile * 300 / profile.sum()).max() <= 1
    assert stats["pareto_alpha"] == 6 and stats["profile_max"] == 1280 and stats["profile_min"] == 5
    source = open_source(result["manifest"])
    per_class = Counter(source.classes[r.label] for r in source.records)
    assert all(per_class[name] == n for name, n in stats["images_per_class"].items() if n)
    assert Path(result["histogram"]).read_bytes()[:8] == PNG_MAGIC


def test_imagenet_errors_exit_2_with_the_reason(cli, imagenet, tmp_path):
    code, _, err = cli(["prepare", "subset", imagenet, "--kind", "in118k", "--size", 99999, "--out", tmp_path])
    assert code == 2 and "--size 99999: larger than the 1448 images" in err
    code, _, err = cli(["prepare", "subset", tmp_path, "--kind", "in118k", "--out", tmp_path / "o"])
    assert code == 2 and "not an ImageNet layout" in err and "train/<wnid>/" in err
    broken = tmp_path / "broken"
    (broken / "train" / "n1").mkdir(parents=True)
    (broken / "train" / "n1" / "a.JPEG").write_bytes(TINY_JPEG)
    (broken / "train" / "n2").mkdir()
    code, _, err = cli(["prepare", "subset", broken, "--kind", "in118k-lt", "--size", 1, "--out", tmp_path / "o"])
    assert code == 2 and "n2: class folder has no images" in err
    code, _, err = cli(["prepare", "subset", imagenet, "--kind", "in118k", "--coco", tmp_path, "--out", tmp_path])
    assert code == 2 and "oi-mini only" in err
    assert not (tmp_path / "o").exists()  # nothing written on errors
    (tmp_path / "file").write_text("x")
    code, _, err = cli(["prepare", "subset", imagenet, "--kind", "in118k", "--size", 5, "--out", tmp_path / "file"])
    assert code == 2 and "is not a directory" in err


# -------------------------------------------------------------------------------------- fake OpenImages tree

OI_CLASSES = [("/m/01g317", "Person"), ("/m/0k4j", "Car"), ("/m/0bt9lr", "Dog"), ("/m/07j7r", "Tree"),
              ("/m/0dzct", "Human face"), ("/m/04yx4", "Man")]
BOX_HEADER = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", "IsOccluded",
              "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]


@pytest.fixture(scope="module")
def openimages(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """80 listed images (76 on disk) with 0..6 random boxes of six classes; returns (root, ImageID → box MIDs)."""
    root = tmp_path_factory.mktemp("openimages")
    rng = np.random.default_rng(0)
    (root / "train").mkdir()
    boxes = {}
    for n in range(80):
        image_id = f"{n:016x}"
        boxes[image_id] = [OI_CLASSES[c][0] for c in rng.integers(0, len(OI_CLASSES), size=rng.integers(0, 7))]
        if n % 20 != 7:  # four listed images were never downloaded
            (root / "train" / f"{image_id}.jpg").write_bytes(TINY_JPEG)
    with open(root / "class-descriptions-boxable.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(OI_CLASSES)
    with open(root / "train-annotations-bbox.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(BOX_HEADER)
        for image_id, mids in boxes.items():
            for mid in mids:
                writer.writerow([image_id, "xclick", mid, 1, 0.1, 0.5, 0.2, 0.6, 0, 0, 0, 0, 0])
    with open(root / "train-images-boxable-with-rotation.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ImageID", "Subset", "OriginalURL", "Rotation"])
        writer.writerows([image_id, "train", "", 0] for image_id in boxes)
    on_disk = {i: m for i, m in boxes.items() if (root / "train" / f"{i}.jpg").is_file()}
    return root, on_disk


def _coco_json(path: Path, objects: dict[str, int]) -> Path:
    """A COCO instances file with all 80 categories and ``objects[name]`` annotations spread over 10 images."""
    cats = [{"id": i + 1, "name": m.coco} for i, m in enumerate(COCO_TO_OPENIMAGES)]
    cat_id = {c["name"]: c["id"] for c in cats}
    pairs = [(name, j) for name, n in objects.items() for j in range(n)]
    anns = [{"id": k, "image_id": j % 10, "category_id": cat_id[name], "bbox": [0, 0, 1, 1]}
            for k, (name, j) in enumerate(pairs)]
    path.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(10)],
                                "annotations": anns, "categories": cats}))
    return path


def _check_oi_mini(result, root, boxes, caps_by_mid):
    source = open_source(result["manifest"])
    ids = [Path(r.image_id).stem for r in source.records]
    assert len(ids) == result["images"] and all(r.path.is_file() for r in source.records)
    totals = Counter(mid for i in ids for mid in boxes[i])
    assert all(any(mid in caps_by_mid for mid in boxes[i]) for i in ids)  # every image has a COCO class
    assert all(totals[mid] <= cap for mid, cap in caps_by_mid.items())  # no shared class above COCO's count
    stats = json.loads(Path(result["stats"]).read_text())
    names = dict(OI_CLASSES)
    assert stats["images"] == len(ids) and stats["objects"] == sum(totals.values())
    assert stats["objects_per_image"] == pytest.approx(sum(totals.values()) / len(ids))
    assert stats["categories_per_image"] == pytest.approx(np.mean([len(set(boxes[i])) for i in ids]))
    assert stats["categories"] == len(totals)
    assert stats["objects_per_class"] == {names[m]: n for m, n in sorted(totals.items(), key=lambda t: -t[1])}
    assert Path(result["histogram"]).read_bytes()[:8] == PNG_MAGIC
    return ids, stats


def test_oi_mini_end_to_end_rules_stats_determinism(cli, openimages, tmp_path):
    root, boxes = openimages
    coco = _coco_json(tmp_path / "instances_train2017.json", {"person": 25, "car": 6, "dog": 0, "bus": 3})
    args = [root, "--kind", "oi-mini", "--coco", coco, "--seed", 5]
    result = _run(cli, [*args, "--out", tmp_path / "a"])
    ids, stats = _check_oi_mini(result, root, boxes, {"/m/01g317": 25, "/m/0k4j": 6, "/m/0bt9lr": 0})
    assert stats["shared_classes"]["person"] == {"openimages": "Person", "mid": "/m/01g317", "cap": 25,
                                                 "objects": stats["objects_per_class"].get("Person", 0)}
    assert stats["coco"]["images"] == 10 and stats["coco"]["objects"] == 34
    again = _run(cli, [*args, "--out", tmp_path / "b"])
    assert Path(result["manifest"]).read_bytes() == Path(again["manifest"]).read_bytes()
    # Greedy: no remaining candidate with a COCO object could still be added.
    totals = Counter(mid for i in ids for mid in boxes[i])
    caps = {"/m/01g317": 25, "/m/0k4j": 6, "/m/0bt9lr": 0}
    for i in set(boxes) - set(ids):
        shared = Counter(m for m in boxes[i] if m in caps)
        assert not shared or any(totals[m] + n > caps[m] for m, n in shared.items())
    doubled = _run(cli, [*args, "--cap-scale", 2, "--out", tmp_path / "c"])
    assert doubled["images"] > result["images"]
    code, _, err = cli(["prepare", "subset", *args, "--size", 70, "--out", tmp_path / "d"])
    assert code == 2 and "satisfy the OpenImage-MINI rules" in err


def test_oi118k_end_to_end_uniform_over_listed_images(cli, openimages, tmp_path):
    root, boxes = openimages
    result = _run(cli, [root, "--kind", "oi118k", "--size", 30, "--seed", 1, "--out", tmp_path])
    source = open_source(result["manifest"])
    ids = {Path(r.image_id).stem for r in source.records}
    assert len(ids) == 30 and ids <= set(boxes)
    stats = json.loads(Path(result["stats"]).read_text())
    assert stats["images"] == 30 and stats["objects"] == sum(len(boxes[i]) for i in ids)
    code, _, err = cli(["prepare", "subset", root, "--kind", "oi118k", "--size", 77, "--out", tmp_path])
    assert code == 2 and "larger than the 76 train images" in err
    assert "80 ids listed, 4 without an image file" in err  # missing downloads are reported, not hidden


def test_openimages_layout_errors_name_the_expected_files(cli, tmp_path):
    (tmp_path / "oi" / "train").mkdir(parents=True)
    coco = _coco_json(tmp_path / "instances_train2017.json", {"person": 1})
    code, _, err = cli(["prepare", "subset", tmp_path / "oi", "--kind", "oi-mini", "--coco", coco,
                        "--out", tmp_path / "o"])
    assert code == 2
    assert "train-annotations-bbox.csv" in err and "class-descriptions-boxable.csv" in err
    code, _, err = cli(["prepare", "subset", tmp_path / "oi", "--kind", "oi-mini", "--out", tmp_path / "o"])
    assert code == 2 and "needs --coco" in err


# ------------------------------------------------------------------------------------------- real tiny-COCO


@pytest.mark.photographs("the caps come from COCO's 80 category names and their counts in a real annotation file")
def test_oi_mini_caps_from_real_tiny_coco(cli, tiny_coco, openimages, tmp_path):
    data = json.loads((tiny_coco / "annotations" / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    expected = Counter(names[a["category_id"]] for a in data["annotations"])
    assert set(names.values()) == set(BY_COCO_NAME)  # the table covers COCO's 80 categories exactly

    counts = subsets.read_coco_counts(tiny_coco)  # a COCO root resolves to annotations/instances_train2017.json
    assert counts.objects == {name: expected.get(name, 0) for name in names.values()}
    per_image = Counter(a["image_id"] for a in data["annotations"])
    cats_per_image = {i: len({a["category_id"] for a in data["annotations"] if a["image_id"] == i}) for i in per_image}
    assert counts.stats["images"] == len(data["images"])
    assert counts.stats["objects_per_image"] == pytest.approx(len(data["annotations"]) / len(data["images"]))
    assert counts.stats["categories_per_image"] == pytest.approx(sum(cats_per_image.values()) / len(data["images"]))
    assert counts.stats["categories"] == len(expected)

    root, boxes = openimages
    result = _run(cli, [root, "--kind", "oi-mini", "--coco", tiny_coco, "--out", tmp_path])
    caps = {BY_COCO_NAME[n].mid: expected.get(n, 0) for n in ("person", "car", "dog")}
    _, stats = _check_oi_mini(result, root, boxes, caps)
    assert stats["coco"]["objects"] == len(data["annotations"])
    assert {k: v["cap"] for k, v in stats["shared_classes"].items()} == {n: expected.get(n, 0)
                                                                        for n in ("person", "car", "dog")}


def test_docs_table_matches_the_code_table():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "subsets.md").read_text()
    rows = [[cell.strip(" `") for cell in line.strip("|").split("|")] for line in doc.splitlines()
            if line.startswith("| ") and "/m/" in line]
    assert [(r[0], r[1], r[2], r[3] == "yes") for r in rows] == [tuple(m) for m in COCO_TO_OPENIMAGES]


def test_truncated_box_row_is_an_input_error_naming_the_line(cli, tmp_path):
    root = tmp_path / "oi"
    (root / "train").mkdir(parents=True)
    (root / "train" / "00000000000000aa.jpg").write_bytes(TINY_JPEG)
    (root / "class-descriptions-boxable.csv").write_text("/m/01g317,Person\n")
    (root / "train-annotations-bbox.csv").write_text(",".join(BOX_HEADER) + "\n00000000000000aa,xclick\n")
    coco = _coco_json(tmp_path / "instances_train2017.json", {"person": 1})
    code, _, err = cli(["prepare", "subset", root, "--kind", "oi-mini", "--coco", coco, "--out", tmp_path / "o"])
    assert code == 2 and "train-annotations-bbox.csv:2: 2 columns, expected at least 3" in err
