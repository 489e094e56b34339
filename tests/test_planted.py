"""The planted preset (docs/synthetic.md): the declared rules hold in train at their declared rates, val has no
prior, colour says nothing about the class, determinism, the rules' inputs, and `analyze coupling --pair-classes`.

Rates are measured from the written annotation files with pycocotools; tolerances are binomial (derivations in the
tests); the chi-square tests use a fixed seed, so they are deterministic, and alpha = 0.001.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from scipy.ndimage import distance_transform_edt
from scipy.stats import chi2_contingency, chisquare

from sslcli.data.scenes.planted import (
    MIN_GAP,
    PLANTED_CLASSES,
    REGIONS,
    load_rules_file,
    make_rules,
    render_planted_scene,
    touching,
)
from sslcli.data.scenes.synthetic import generate, render_scene
from sslcli.errors import InputError

SEED, SIZE, N_TRAIN, N_VAL = 5, 160, 60, 60
ALPHA = 0.001
# Test rules: one certain and one partial rule of each kind. Class 1 and 3 bring partners 2 and 4; 5 and 6 are
# placed by region; 7-10 are under no rule.
PAIRS = [(1, 2, 1.0), (3, 4, 0.6)]
REGION_RULES = [(5, "top-left", 1.0), (6, "bottom", 0.7)]


def _coco(out: Path, split: str) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(out / "annotations" / f"instances_{split}.json"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("planted") / "data"
    generate(out, N_TRAIN, N_VAL, SEED, size=SIZE, preset="planted", rules=make_rules(PAIRS, REGION_RULES))
    return out


def _touching_pairs(coco: COCO) -> list[tuple[int, int, int, int]]:
    """(image id, annotation id of one, its class, class of the other) for every ordered pair of touching objects."""
    found = []
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for i, a in enumerate(anns):
            for j, b in enumerate(anns):
                if i != j and touching(masks[i], masks[j]):
                    found.append((image_id, a["id"], a["category_id"], b["category_id"]))
    return found


def _within_binomial(k: int, n: int, p: float) -> bool:
    """k successes in n trials agree with rate p: |k - np| <= 3 sd + 1 (normal approximation, continuity)."""
    return abs(k - n * p) <= 3 * np.sqrt(n * p * (1 - p)) + 1


def _box_centres(coco: COCO, category_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Box centres as fractions of the image size (N, 2), and the classes (N,)."""
    anns = coco.loadAnns(coco.getAnnIds(catIds=[category_id] if category_id else []))
    centres = [((a["bbox"][0] + a["bbox"][2] / 2) / coco.imgs[a["image_id"]]["width"],
                (a["bbox"][1] + a["bbox"][3] / 2) / coco.imgs[a["image_id"]]["height"]) for a in anns]
    return np.array(centres), np.array([a["category_id"] for a in anns])


def _quadrant(centres: np.ndarray) -> np.ndarray:
    return (centres[:, 0] >= 0.5).astype(int) + 2 * (centres[:, 1] >= 0.5).astype(int)


# --- train: the declared rules hold at the declared rates ----------------------------------------------------------

def test_declared_pairs_touch_at_the_declared_rate_and_no_other_objects_touch(planted):
    coco = _coco(planted, "train2017")
    touch = _touching_pairs(coco)
    # Objects joined by no rule keep MIN_GAP px apart, so every touching pair is a declared (a, b) pair.
    declared = {(a, b) for a, b, _ in PAIRS} | {(b, a) for a, b, _ in PAIRS}
    assert touch and {(ca, cb) for _, _, ca, cb in touch} <= declared
    for a, b, strength in PAIRS:
        n = len(coco.getAnnIds(catIds=[a]))
        k = len({ann for _, ann, ca, cb in touch if ca == a and cb == b})  # a-objects with a b touching them
        assert n >= 15
        # Each a-object brings its b with probability `strength`, independently: k ~ Binomial(n, strength).
        if strength == 1.0:
            assert k == n
        else:
            assert _within_binomial(k, n, strength), (a, b, k, n)


def test_declared_classes_sit_in_their_regions_at_the_declared_rate(planted):
    coco = _coco(planted, "train2017")
    for cid, region, strength in REGION_RULES:
        centres, _ = _box_centres(coco, cid)
        x0, y0, x1, y1 = REGIONS[region]
        inside = int(((centres[:, 0] >= x0) & (centres[:, 0] < x1) & (centres[:, 1] >= y0) & (centres[:, 1] < y1)).sum())
        # With probability s the box centre is put in the region; otherwise the object is placed anywhere, and its
        # box centre lands in the region with probability = the region's area fraction (uniform placement).
        expected = strength + (1 - strength) * (x1 - x0) * (y1 - y0)
        assert len(centres) >= 15
        if strength == 1.0:
            assert inside == len(centres)
        else:
            assert _within_binomial(inside, len(centres), expected), (cid, inside, len(centres), expected)


def test_info_planted_records_the_rules_in_train_and_none_in_val(planted):
    train = json.loads((planted / "annotations" / "instances_train2017.json").read_text())
    val = json.loads((planted / "annotations" / "instances_val2017.json").read_text())
    names = {c.category_id: c.name for c in PLANTED_CLASSES}
    assert train["info"]["preset"] == "planted" and val["info"]["planted"] == "none"
    assert train["info"]["planted"] == {
        "pairs": [{"a": a, "a_name": names[a], "b": b, "b_name": names[b], "strength": s, "placement": "touching"}
                  for a, b, s in PAIRS],
        "regions": [{"category_id": c, "name": names[c], "region": r, "box": list(REGIONS[r]), "strength": s}
                    for c, r, s in REGION_RULES],
    }
    assert [c["name"] for c in train["categories"]] == [c.name for c in PLANTED_CLASSES] == [
        c["name"] for c in val["categories"]]


# --- val: no prior ---------------------------------------------------------------------------------------------------

def _position_and_cooccurrence_p_values(coco: COCO) -> dict[str, float]:
    centres, classes = _box_centres(coco)
    quadrants = _quadrant(centres)
    # class x quadrant contingency: is where an object sits independent of its class?
    table = np.zeros((len(PLANTED_CLASSES), 4))
    np.add.at(table, (classes - 1, quadrants), 1)
    # co-occurrence: the classes of every two objects of one image (first, second in annotation order)
    pairs = np.zeros((len(PLANTED_CLASSES), len(PLANTED_CLASSES)))
    for image_id in coco.getImgIds():
        cats = [a["category_id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]
        for i in range(len(cats)):
            for j in range(i + 1, len(cats)):
                pairs[cats[i] - 1, cats[j] - 1] += 1
    return {"quadrants uniform": chisquare(np.bincount(quadrants, minlength=4)).pvalue,
            "classes uniform": chisquare(np.bincount(classes - 1, minlength=len(PLANTED_CLASSES))).pvalue,
            "position independent of class": chi2_contingency(table).pvalue,
            "co-occurrence independent": chi2_contingency(pairs).pvalue}


def test_val_class_presence_and_position_are_independent_and_uniform(planted):
    """Val objects: classes uniform, box centres uniform over the quadrants (exact by the generator's flip symmetry),
    independent of the class, and the classes of two objects of one image independent: chi-square p > 0.001."""
    p = _position_and_cooccurrence_p_values(_coco(planted, "val2017"))
    assert all(v > ALPHA for v in p.values()), p
    assert not _touching_pairs(_coco(planted, "val2017"))  # no pair rule: no two objects within MIN_GAP px


def test_the_same_statistics_detect_the_rules_in_train(planted):
    """The val test has power: on train (region and pair rules) the position and co-occurrence tests reject."""
    p = _position_and_cooccurrence_p_values(_coco(planted, "train2017"))
    assert p["position independent of class"] < ALPHA and p["co-occurrence independent"] < ALPHA, p


# --- colour carries no class information ---------------------------------------------------------------------------

def _mean_colours(render, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    colours, labels = [], []
    for i in range(n_images):
        scene = render(np.random.default_rng([9, 1, i]))
        for obj in scene.objects:
            if obj.annotated:
                colours.append(scene.image[obj.visible].mean(0))
                labels.append(obj.category_id)
    return np.array(colours), np.array(labels)


def _nearest_centroid_accuracy(colours: np.ndarray, labels: np.ndarray) -> tuple[float, int, float]:
    """Fit class centroids of mean RGB on the even-indexed objects, classify the odd ones: (accuracy, n, largest
    class share among the test objects)."""
    train, test = np.arange(0, len(labels), 2), np.arange(1, len(labels), 2)
    classes = np.unique(labels[train])
    centroids = np.stack([colours[train][labels[train] == c].mean(0) for c in classes])
    predicted = classes[np.argmin(((colours[test][:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    return float((predicted == labels[test]).mean()), len(test), float(np.bincount(labels[test]).max() / len(test))


def test_colour_does_not_predict_the_class_in_the_planted_preset():
    """If colour is independent of the class, a prediction from colour is independent of the true label, so the
    number correct is Binomial(n, p0) with p0 = sum_c P(true c) P(predict c) <= the largest class share; allow
    3 sd above that. The default preset (colour-coded classes) passes the same classifier far above it."""
    colours, labels = _mean_colours(lambda rng: render_planted_scene(rng, 96, None), 160)
    accuracy, n, top_share = _nearest_centroid_accuracy(colours, labels)
    assert n >= 250
    assert accuracy <= top_share + 3 * np.sqrt(top_share * (1 - top_share) / n), (accuracy, top_share, n)

    colours, labels = _mean_colours(lambda rng: render_scene(rng, 96), 60)
    accuracy, n, top_share = _nearest_centroid_accuracy(colours, labels)
    assert accuracy > 0.5 > top_share + 3 * np.sqrt(top_share * (1 - top_share) / n)


# --- scenes -----------------------------------------------------------------------------------------------------------

def test_scene_geometry(planted):
    """Long side SIZE, objects never overlap and free ones keep MIN_GAP px apart, 3-7 objects per image."""
    coco = _coco(planted, "val2017")
    counts = []
    for image_id in coco.getImgIds():
        image = coco.imgs[image_id]
        assert max(image["width"], image["height"]) == SIZE
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        counts.append(len(anns))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        assert sum(m.astype(int) for m in masks).max() <= 1 if masks else True
        for i in range(len(masks)):
            distance = distance_transform_edt(~masks[i])  # Euclidean distance of every pixel to object i
            for j in range(i + 1, len(masks)):
                assert distance[masks[j]].min() > MIN_GAP
    assert 1 <= min(counts) and max(counts) <= 7 and np.mean(counts) >= 3


def test_same_seed_gives_identical_files(tmp_path):
    def files(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for name in ("a", "b"):
        generate(tmp_path / name, 6, 3, 1, size=96, preset="planted")
    generate(tmp_path / "c", 6, 3, 2, size=96, preset="planted")
    first, second, other = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert first == second and len(first) == 12  # 6 + 3 images, 2 annotation files, the .sslcli-synthetic marker
    assert all(first[k] != other[k] for k in first if k.endswith(".jpg"))


def test_default_preset_is_byte_identical_to_before_the_planted_preset(tmp_path):
    """SHA-256 of the default preset's annotation files as written by the generator before the planted preset
    existed (commit b388eb8): adding the preset must not change a byte of them."""
    generate(tmp_path / "d", n_train=6, n_val=3, seed=11, size=64)
    digests = {s: hashlib.sha256((tmp_path / "d" / "annotations" / f"instances_{s}.json").read_bytes()).hexdigest()
               for s in ("train2017", "val2017")}
    assert digests == {"train2017": "a9261942b20300532edcdf26cb311b7729f3d039fa415a53de481ce524c19dd7",
                       "val2017": "3283c50a39a620d28f6b7882a0e18251bf3475200402fe6e7690855ab109f534"}


# --- rules: inputs -----------------------------------------------------------------------------------------------

def test_rules_file_yaml_and_json_and_names(tmp_path):
    (tmp_path / "r.yaml").write_text("pairs:\n  - {a: striped-disc, b: 2, strength: 0.5}\n"
                                     "regions:\n  - {class: 5, region: '0,0,0.3,1', strength: 1}\n")
    (tmp_path / "r.json").write_text(json.dumps({"pairs": [{"a": 1, "b": "checkered-square", "strength": 0.5}],
                                                 "regions": [{"class": "spoked-ring", "region": [0, 0, 0.3, 1],
                                                              "strength": 1}]}))
    assert load_rules_file(tmp_path / "r.yaml") == load_rules_file(tmp_path / "r.json") == make_rules(
        [(1, 2, 0.5)], [(5, "0,0,0.3,1", 1.0)])
    info = load_rules_file(tmp_path / "r.yaml").to_info()
    assert info["regions"][0]["box"] == [0.0, 0.0, 0.3, 1.0] and info["pairs"][0]["b_name"] == "checkered-square"


@pytest.mark.parametrize("pairs, regions, named", [
    ([(1, 1, 0.5)], [], "same class"), ([(1, 99, 0.5)], [], "99"), ([(1, 2, 1.5)], [], "1.5"),
    ([(1, 2, 0.5), (1, 3, 0.5)], [], "already has a pair rule"), ([], [(5, "middle", 1)], "middle"),
    ([], [(5, "0.5,0,0.2,1", 1)], "0.5,0,0.2,1"), ([(1, "circle", 1)], [], "circle")])
def test_bad_rules_name_the_value(pairs, regions, named):
    with pytest.raises(InputError, match=named):
        make_rules(pairs, regions)


def test_cli_planted_with_pair_and_region_options(cli, tmp_path):
    code, stdout, stderr = cli(["prepare", "synthetic", tmp_path / "d", "--preset", "planted", "--images", "3",
                                "--val-images", "2", "--size", "64", "--pair", "7,8,0.5", "--region",
                                "9,0,0,1,0.5,1", "--json", "--quiet"])
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["size"] == 64 and result["preset"] == "planted"
    assert result["planted"]["pairs"] == [{"a": 7, "a_name": "ringed-ellipse", "b": 8, "b_name": "brick-hexagon",
                                           "strength": 0.5, "placement": "touching"}]
    assert result["planted"]["regions"][0]["box"] == [0.0, 0.0, 1.0, 0.5]
    written = json.loads((tmp_path / "d" / "annotations" / "instances_train2017.json").read_text())
    assert written["info"]["planted"] == result["planted"]


def test_cli_planted_preset_defaults(cli, tmp_path):
    code, stdout, _ = cli(["prepare", "synthetic", tmp_path / "d", "--preset", "planted", "--images", "2",
                           "--val-images", "1", "--json", "--quiet"])
    result = json.loads(stdout)
    assert code == 0 and result["size"] == 224
    assert len(result["planted"]["pairs"]) == 2 and len(result["planted"]["regions"]) == 2


@pytest.mark.parametrize("args, named", [
    (["--pair", "1,2,0.5"], "--preset planted"),
    (["--preset", "planted", "--pair", "1,2"], "--pair '1,2'"),
    (["--preset", "planted", "--region", "5,nowhere,1"], "nowhere"),
    (["--preset", "fancy"], "--preset 'fancy'"),
    (["--preset", "planted", "--rules", "missing.yaml"], "missing.yaml"),
])
def test_cli_bad_rule_options_exit_2(cli, tmp_path, args, named):
    code, _, stderr = cli(["prepare", "synthetic", tmp_path / "d", "--images", "2", *args])
    assert code == 2 and named in stderr, stderr
    assert not (tmp_path / "d").exists()


# --- analyze coupling: planted / unplanted pairs -----------------------------------------------------------------

def test_coupling_pairs_are_restricted_to_the_declared_or_undeclared_class_pairs(planted):
    from sslcli.analysis.coupling import allowed_label_pairs, planted_class_pairs, sample_pairs
    from sslcli.data.readers.sources import open_source

    declared = planted_class_pairs(planted)
    assert declared == {frozenset((a, b)) for a, b, _ in PAIRS}  # read back from train's info.planted
    source = open_source(planted, "val2017")
    name = {c.name: c.category_id for c in PLANTED_CLASSES}
    kinds = {}
    for group in ("planted", "unplanted"):
        scenes = sample_pairs(source, 30, seed=1, cell=24, allowed=allowed_label_pairs(source, group, declared))
        kinds[group] = {frozenset((name[s.meta["a"]["class"]], name[s.meta["b"]["class"]])) for s in scenes}
    assert kinds["planted"] == {frozenset((1, 2)), frozenset((3, 4))}  # both declared pairs, nothing else
    assert not kinds["unplanted"] & kinds["planted"] and all(len(k) == 2 for k in kinds["unplanted"])
    assert len(kinds["unplanted"]) >= 10


def test_cli_coupling_groups_and_errors(cli, planted, tmp_path):
    import torch

    from sslcli.models.backbone import STAGES, build_backbone

    torch.manual_seed(0)
    checkpoint = tmp_path / "net.pth"
    torch.save(build_backbone("resnet18", width=8).state_dict(), checkpoint)
    base = ["analyze", "coupling", checkpoint, "--data", planted, "--pairs", "3", "--cell", "32", "--device", "cpu"]
    code, stdout, stderr = cli([*base, "--groups", "--out", tmp_path / "g", "--json", "--quiet"])
    assert code == 0, stderr
    result = json.loads(stdout)
    assert [p["group"] for p in result["pairs"]] == ["planted"] * 3 + ["unplanted"] * 3
    entry = result["checkpoints"][0]
    assert set(entry["groups"]) == {"planted", "unplanted"} and set(entry["layers"]) == set(STAGES)
    for values in entry["groups"].values():
        assert values["pairs"] == 3 and set(values["layers"]) == set(STAGES)
        assert values["layers"]["res5"]["n"] + values["layers"]["res5"]["undefined"] == 3
    # the group means are the means of that group's per-pair values
    res2 = np.array(entry["per_pair"]["res2"], float)
    assert entry["groups"]["planted"]["layers"]["res2"]["mean"] == pytest.approx(np.nanmean(res2[:3]))

    code, stdout, _ = cli([*base, "--pair-classes", "unplanted", "--out", tmp_path / "u", "--json", "--quiet"])
    pairs = json.loads(stdout)["pairs"]
    assert code == 0 and {p["group"] for p in pairs} == {"unplanted"}

    default = tmp_path / "default"
    generate(default, 4, 4, 0, size=96)
    code, _, stderr = cli(["analyze", "coupling", checkpoint, "--data", default, "--pair-classes", "planted",
                           "--out", tmp_path / "x"])
    assert code == 2 and "info.planted" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = cli([*base, "--pair-classes", "planted", "--groups", "--out", tmp_path / "y"])
    assert code == 2 and "--groups" in stderr
    code, _, stderr = cli([*base, "--pair-classes", "some", "--out", tmp_path / "z"])
    assert code == 2 and "--pair-classes 'some'" in stderr
