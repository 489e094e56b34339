"""The shared readers: COCO (on real tiny-COCO), ImageFolder, plain folders, manifests, corrupt images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sslcli.data.readers.sources import iter_images, open_source, write_manifest
from sslcli.errors import InputError


@pytest.mark.photographs("real COCO annotations: 80 categories, polygon segmentations and crowd RLEs, as pycocotools reads them")
def test_coco_reader_on_real_tiny_coco(tiny_coco):
    src = open_source(tiny_coco, "train2017")
    assert src.kind == "coco" and len(src) == 50 and len(src.classes) == 80
    image = src.load(0)
    rec = src[0]
    assert image.dtype == np.uint8 and image.shape == (rec.height, rec.width, 3)
    masks, instances = src.instance_masks(0)
    assert len(instances) == masks.shape[0] > 0
    for mask, inst in zip(masks, instances):
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        x0, y0, x1, y1 = inst.box
        # Rasterised masks stay within their (float) box, up to the pixel grid.
        assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1) and ys.max() <= np.ceil(y1)
        assert 0 <= inst.label < 80


def test_missing_annotation_file_is_named(tmp_path):
    (tmp_path / "annotations").mkdir()
    with pytest.raises(InputError, match="instances_train2017.json"):
        open_source(tmp_path, "train2017")


def _write_images(folder, n, size=(20, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size[1], size[0], 3), i * 10, np.uint8)).save(folder / f"{i}.jpg")


def test_imagefolder_labels_from_folder_names(tmp_path):
    _write_images(tmp_path / "train" / "n02", 2)
    _write_images(tmp_path / "train" / "n01", 3)
    src = open_source(tmp_path)
    assert src.kind == "imagefolder" and src.classes == ["n01", "n02"]
    assert [r.label for r in src.records] == [0, 0, 0, 1, 1]


def test_plain_folder_and_corrupt_images_are_skipped_and_reported(tmp_path):
    _write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not a jpeg")
    src = open_source(tmp_path / "imgs")
    assert src.kind == "folder" and len(src) == 4
    corrupt: list[str] = []
    loaded = [i for i, _ in iter_images(src, corrupt=corrupt)]
    assert len(loaded) == 3
    assert len(corrupt) == 1 and "broken.jpg" in corrupt[0]


def test_manifest_round_trip(tmp_path):
    _write_images(tmp_path / "data" / "a", 2)
    write_manifest(tmp_path / "lists" / "m.json", "../data", ["a/0.jpg", "a/1.jpg"], [0, 1], ["x", "y"])
    src = open_source(tmp_path / "lists" / "m.json")
    assert src.kind == "manifest" and len(src) == 2 and src.classes == ["x", "y"]
    assert src.load(1).shape == (16, 20, 3)


def test_not_a_manifest(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("{\"images\": []}")
    with pytest.raises(InputError, match="not an sslcli manifest"):
        open_source(path)
