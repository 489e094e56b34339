"""The synthetic demo data set: determinism, pycocotools round trip, masks and boxes, class and object counts,
occlusion, and the CLI's output-folder rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sslcli.data.readers.sources import CocoSource, open_source
from sslcli.data.scenes.synthetic import CLASSES, SPLITS, generate, render_scene
from sslcli.errors import InputError

SEED, SIZE = 3, 64


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    stats = generate(out, n_train=24, n_val=8, seed=SEED, size=SIZE)
    return out, stats


def _annotations(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"instances_{split}.json").read_text())


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path, dataset):
    out, _ = dataset
    again = tmp_path / "again"
    generate(again, n_train=24, n_val=8, seed=SEED, size=SIZE)
    first, second = _files(out), _files(again)
    assert first.keys() == second.keys()
    assert len([k for k in first if k.endswith(".jpg")]) == 32
    assert first == second  # JSON byte for byte, JPEG byte for byte (so pixels too)

    other = tmp_path / "other"
    generate(other, n_train=24, n_val=8, seed=SEED + 1, size=SIZE)
    third = _files(other)
    assert third["annotations/instances_train2017.json"] != first["annotations/instances_train2017.json"]
    differing = [k for k in first if k.endswith(".jpg") and first[k] != third[k]]
    assert len(differing) == 32


def test_an_image_does_not_depend_on_how_many_are_made(tmp_path, dataset):
    out, _ = dataset
    fewer = tmp_path / "fewer"
    generate(fewer, n_train=5, n_val=2, seed=SEED, size=SIZE)
    for split in SPLITS:
        for path in sorted((fewer / split).iterdir()):
            assert path.read_bytes() == (out / split / path.name).read_bytes(), path.name
        small, large = _annotations(fewer, split), _annotations(out, split)
        kept = {image["id"] for image in small["images"]}
        fields = ("image_id", "category_id", "bbox", "area", "segmentation")  # ids are numbered per file
        pick = [{k: a[k] for k in fields} for a in large["annotations"] if a["image_id"] in kept]
        assert pick == [{k: a[k] for k in fields} for a in small["annotations"]]


def test_pycocotools_round_trip_masks_inside_tight_boxes(dataset):
    out, _ = dataset
    for split, count in zip(SPLITS, (24, 8)):
        source = open_source(out, split)
        assert isinstance(source, CocoSource) and len(source) == count
        assert source.classes == [c.name for c in CLASSES]
        for i in range(len(source)):
            image = source.load(i)
            record = source[i]
            assert image.shape == (record.height, record.width, 3)
            assert max(image.shape[:2]) == SIZE and min(image.shape[:2]) >= 0.75 * SIZE - 1
            masks, instances = source.instance_masks(i)
            assert masks.shape == (len(instances), record.height, record.width)
            assert len(instances) >= 1
            assert masks.sum(0).max() <= 1  # visible parts of different objects never share a pixel
            for mask, inst in zip(masks, instances):
                assert not inst.iscrowd and 1 <= inst.category_id <= len(CLASSES)
                assert inst.area == mask.sum() > 0
                ys, xs = np.nonzero(mask)
                x0, y0, x1, y1 = inst.box
                # xywh box in pixels: [x0, x1) x [y0, y1) holds every mask pixel, and touches the mask on all sides
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)


def test_json_layout_and_ids(dataset):
    out, _ = dataset
    train, val = _annotations(out, "train2017"), _annotations(out, "val2017")
    image_ids = [im["id"] for im in train["images"] + val["images"]]
    assert len(set(image_ids)) == len(image_ids)  # unique across splits, as in COCO
    for data in (train, val):
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
        assert {a["image_id"] for a in data["annotations"]} <= {im["id"] for im in data["images"]}
        assert len(data["categories"]) >= 8
        for ann in data["annotations"]:
            assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
        for im in data["images"]:
            assert (out / ("train2017" if data is train else "val2017") / im["file_name"]).is_file()


def test_classes_and_objects_per_image(dataset):
    out, stats = dataset
    anns = [a for split in SPLITS for a in _annotations(out, split)["annotations"]]
    images = sum(len(_annotations(out, split)["images"]) for split in SPLITS)
    assert len({a["category_id"] for a in anns}) >= 8
    assert len(anns) / images >= 4
    assert stats["objects"] == len(anns) and stats["images"] == {"train2017": 24, "val2017": 8}
    assert stats["classes"] == len(CLASSES) >= 8


def test_annotations_are_the_visible_parts_of_occluded_objects(dataset):
    out, _ = dataset
    source = open_source(out, "train2017")
    occluded = 0
    for i in range(len(source)):
        scene = render_scene(np.random.default_rng([SEED, 0, i]), SIZE)
        masks, instances = source.instance_masks(i)
        kept = [k for k, obj in enumerate(scene.objects) if obj.annotated]
        assert [scene.objects[k].category_id for k in kept] == [inst.category_id for inst in instances]
        for mask, k in zip(masks, kept):
            obj = scene.objects[k]
            assert np.array_equal(mask, obj.visible)
            assert not (obj.visible & ~obj.full_mask).any()
            hidden = obj.full_mask & ~obj.visible
            if hidden.any():
                occluded += 1
                # what is hidden is covered by objects painted later, and only by them
                later = np.any([o.full_mask for o in scene.objects[k + 1:]], axis=0)
                assert not (hidden & ~later).any()
    assert occluded >= 5


def test_annotated_pixels_show_the_object(dataset):
    """Masks line up with the pixels: the solid red discs are red under their masks (JPEG and lighting aside)."""
    out, _ = dataset
    red = np.array(CLASSES[0].colour_a, float)
    source = open_source(out, "train2017")
    checked = 0
    for i in range(len(source)):
        image = source.load(i).astype(float)
        masks, instances = source.instance_masks(i)
        for mask, inst in zip(masks, instances):
            if inst.category_id == CLASSES[0].category_id and inst.area >= 40:
                assert np.all(np.abs(np.median(image[mask], axis=0) - red) < 50)
                checked += 1
    assert checked >= 2


def test_size_alone_does_not_reveal_the_class():
    """Every class draws its area from one distribution: a best-case area-bin classifier stays near chance (10 %)."""
    areas, labels = [], []
    for i in range(150):
        for obj in render_scene(np.random.default_rng([7, 0, i]), 48).objects:
            if obj.annotated:
                areas.append(np.log(obj.visible.sum()))
                labels.append(obj.category_id)
    areas, labels = np.array(areas), np.array(labels)
    bins = np.digitize(areas, np.quantile(areas, np.linspace(0, 1, 11)[1:-1]))
    accuracy = sum(np.bincount(labels[bins == b]).max() for b in np.unique(bins)) / len(labels)
    assert accuracy < 0.3


def test_killed_run_never_looks_complete(tmp_path):
    out = tmp_path / "data"
    generate(out, n_train=3, n_val=1, seed=0, size=SIZE)

    def die_after_two(jobs):
        for n, job in enumerate(jobs):
            if n == 2:
                raise KeyboardInterrupt
            yield job

    with pytest.raises(KeyboardInterrupt):
        generate(out, n_train=3, n_val=1, seed=1, size=SIZE, force=True, on_image=die_after_two)
    assert not list((out / "annotations").glob("*.json"))
    with pytest.raises(InputError, match="annotation file not found"):
        open_source(out, "train2017")


def test_force_replaces_the_previous_images(tmp_path):
    out = tmp_path / "data"
    generate(out, n_train=6, n_val=2, seed=0, size=SIZE)
    (out / "README.txt").write_text("mine")
    generate(out, n_train=2, n_val=1, seed=0, size=SIZE, force=True)
    assert len(list((out / "train2017").iterdir())) == 2 and len(list((out / "val2017").iterdir())) == 1
    assert (out / "README.txt").read_text() == "mine"  # files that are not ours are left alone


def test_cli_json_result_and_default_val_count(cli, tmp_path):
    code, stdout, _ = cli(["prepare", "synthetic", tmp_path / "d", "--images", "4", "--size", "32", "--json",
                           "--quiet"])
    assert code == 0
    result = json.loads(stdout)
    assert result["images"] == {"train2017": 4, "val2017": 16}  # max(16, 4 // 4)
    assert result["out"] == str(tmp_path / "d") and result["classes"] == len(CLASSES)
    assert result["objects_per_image"] == pytest.approx(result["objects"] / 20, abs=1e-3)
    assert len(open_source(tmp_path / "d", "val2017")) == 16


def test_cli_refuses_a_non_empty_out_without_force(cli, tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, stderr = cli(["prepare", "synthetic", out, "--images", "2", "--val-images", "1", "--size", "32"])
    assert code == 2 and str(out) in stderr and "--force" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    code, _, _ = cli(["prepare", "synthetic", out, "--images", "2", "--val-images", "1", "--size", "32", "--force",
                      "--quiet"])
    assert code == 0 and len(open_source(out, "train2017")) == 2


@pytest.mark.parametrize("args, named", [(["--images", "0"], "--images 0"), (["--val-images", "-1"], "--val-images"),
                                         (["--size", "8"], "--size 8")])
def test_cli_bad_values_exit_2_naming_the_option(cli, tmp_path, args, named):
    code, _, stderr = cli(["prepare", "synthetic", tmp_path / "d", *args])
    assert code == 2 and named in stderr
    assert not (tmp_path / "d").exists()


def test_cli_out_that_is_a_file_exits_2(cli, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    code, _, stderr = cli(["prepare", "synthetic", path, "--images", "1"])
    assert code == 2 and "not a folder" in stderr
