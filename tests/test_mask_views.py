"""Mask-aware views: masks follow the pixels through crop and flip; DetCon's mask sources."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from sslcli.data.views.label_maps import MaskSource, gt_label_map
from sslcli.methods.detcon.views import CROP_RATIO, CROP_SCALE, MaskViewPair, crop_and_flip, to_tv_tensors


def _blocky_labels(rng: np.random.Generator, height: int, width: int, block: int = 8) -> np.ndarray:
    """Random label map of block×block tiles with ids up to 70000 (wider than uint8 and uint16)."""
    coarse = rng.integers(0, 70000, (height // block + 1, width // block + 1))
    return np.kron(coarse, np.ones((block, block), np.int64))[:height, :width].astype(np.int32)


def _encode(labels: np.ndarray) -> np.ndarray:
    """An image whose pixels spell their label: R, G, B = the label's three bytes."""
    return np.stack([labels & 255, (labels >> 8) & 255, (labels >> 16) & 255], -1).astype(np.uint8)


def _decode(image: torch.Tensor) -> torch.Tensor:
    image = image.to(torch.int64)
    return image[0] | (image[1] << 8) | (image[2] << 16)


def test_mask_follows_pixels_exactly_with_nearest_resampling():
    # With nearest resampling for the image too, every output pixel's colour must spell its mask id.
    rng = np.random.default_rng(0)
    geometry = crop_and_flip(48, interpolation=v2.InterpolationMode.NEAREST)
    flipped = 0
    for seed in range(30):
        labels = _blocky_labels(rng, 90, 130)
        image, mask = to_tv_tensors(_encode(labels), labels)
        torch.manual_seed(seed)
        view, view_mask = geometry(image, mask)
        assert view.shape == (3, 48, 48) and view_mask.shape == (48, 48)
        assert torch.equal(_decode(view), view_mask.as_subclass(torch.Tensor))
        # A flip is visible as a left-right mirrored crop: count them to be sure both branches ran.
        torch.manual_seed(seed)
        unflipped = v2.RandomResizedCrop(48, CROP_SCALE, CROP_RATIO, v2.InterpolationMode.NEAREST)(mask)
        flipped += int(torch.equal(view_mask, unflipped.flip(-1)) and not torch.equal(view_mask, unflipped))
    assert 5 <= flipped <= 25


def test_mask_follows_pixels_with_bicubic_image():
    # The training pipeline: bicubic image, nearest mask. Paint each region a flat colour; away from region
    # borders (where bicubic blends neighbours) the view's colour must be the colour of its mask id.
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (6, 3)).astype(np.uint8)
    geometry = crop_and_flip(40)
    checked = 0
    for seed in range(20):
        labels = np.kron(rng.integers(0, 6, (6, 8)), np.ones((16, 16), np.int64)).astype(np.int32)  # 96×128
        image, mask = to_tv_tensors(palette[labels], labels)
        torch.manual_seed(seed)
        view, view_mask = geometry(image, mask)
        view_mask = view_mask.as_subclass(torch.Tensor)
        # Interior pixels: the 7×7 neighbourhood carries a single id (antialiased bicubic reaches ~3 px when shrinking)
        # and lies inside the view (a source sliver at the crop edge can reach the bicubic kernel, not the nearest tap).
        padded = torch.nn.functional.pad(view_mask[None, None].float(), (3, 3, 3, 3), value=-1.0)
        window = padded.unfold(2, 7, 1).unfold(3, 7, 1)[0, 0]
        interior = (window.amax((-1, -2)) == window.amin((-1, -2)))
        expected = torch.from_numpy(palette).to(torch.int64)[view_mask].permute(2, 0, 1)
        error = (view.as_subclass(torch.Tensor).to(torch.int64) - expected).abs().amax(0)
        checked += int(interior.sum())
        assert error[interior].max() <= 2
    assert checked > 3000  # of 20 × 1600 view pixels


def test_mask_view_pair_outputs():
    rng = np.random.default_rng(2)
    labels = _blocky_labels(rng, 70, 50)
    image = rng.integers(0, 256, (70, 50, 3)).astype(np.uint8)
    for variant in ("S", "B"):
        pair = pickle.loads(pickle.dumps(MaskViewPair(32, variant)))
        view1, mask1, view2, mask2 = pair(image, labels)
        for view, mask in ((view1, mask1), (view2, mask2)):
            assert view.dtype == torch.float32 and view.shape == (3, 32, 32)
            assert type(view) is torch.Tensor and type(mask) is torch.Tensor
            assert mask.dtype == torch.int64 and mask.shape == (32, 32)
            assert set(mask.unique().tolist()) <= set(np.unique(labels).tolist())
            assert view.min() < 0  # ImageNet-normalised


def test_mask_view_pair_rejects_misaligned_label_map():
    with pytest.raises(ValueError, match="does not match"):
        MaskViewPair(32)(np.zeros((40, 40, 3), np.uint8), np.zeros((40, 41), np.int32))
    with pytest.raises(ValueError, match="variant"):
        MaskViewPair(32, "X")


def _write_fh_store(path, label_maps: dict[str, np.ndarray], scales: list[int] | None, method: str = "fh"):
    import json

    from sslcli.data.stores.store import ImageResult, encode, write_store

    results = [encode(ImageResult(k, masks=v), "masks") for k, v in label_maps.items()]
    totals = {"images": len(results), "payload": sum(len(r.payload) for r in results), "values": 0}
    parameters = {"scales": scales} if scales else {"top_k": 16}
    write_store(path, "masks", {"method": method, "parameters": json.dumps(parameters)}, results, totals)


def test_mask_source_store_samples_one_scale_per_image(tmp_path):
    maps = np.stack([np.full((8, 10), 0), np.full((8, 10), 1), np.full((8, 10), 2)]).astype(np.int32)
    _write_fh_store(tmp_path / "fh.h5", {"7": maps}, [500, 1000, 1500])
    sample = {"image": np.zeros((8, 10, 3), np.uint8), "image_id": 7, "index": 0}

    class Spec:
        kind, path, scales, grid = "store", str(tmp_path / "fh.h5"), [500, 1500], 5

    class Data:
        root, split = str(tmp_path), "train2017"

    source = pickle.loads(pickle.dumps(MaskSource.from_spec(Spec, Data)))
    torch.manual_seed(0)
    seen = {int(source.label_map(sample)[0, 0]) for _ in range(40)}
    assert seen == {0, 2}  # scales 500 and 1500 only, both drawn
    with pytest.raises(Exception, match="not in mask store"):
        source.label_map({**sample, "image_id": 8})
    with pytest.raises(Exception, match=r"masks are 10×8"):
        source.label_map({**sample, "image": np.zeros((9, 10, 3), np.uint8)})
    Spec.scales = [750]
    with pytest.raises(Exception, match="750"):
        MaskSource.from_spec(Spec, Data)


def test_mask_source_gt_reads_coco_instances(coco_data):
    from sslcli.data.readers.sources import open_source

    source = open_source(coco_data, "train2017")
    index = next(i for i in range(len(source)) if len(source.instances(i)) >= 2)
    record = source[index]
    image = source.load(index)
    masks = MaskSource("gt", data_root=str(coco_data), split="train2017")
    label_map = masks.label_map({"image": image, "image_id": record.image_id, "index": index})
    instance_masks, _ = source.instance_masks(index)
    assert label_map.shape == image.shape[:2]
    assert label_map.max() == len(instance_masks)
    assert np.array_equal(label_map, gt_label_map(instance_masks))
    assert len(np.unique(label_map)) >= 2


def test_tv_tensor_types_roundtrip():
    image, mask = to_tv_tensors(np.zeros((5, 6, 3), np.uint8), np.zeros((5, 6), np.int32))
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 5, 6)
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64


def test_mask_source_grid_covers_the_original_image():
    source = MaskSource("grid", grid=3)
    label_map = source.label_map({"image": np.zeros((10, 7, 3), np.uint8), "image_id": 1, "index": 0})
    assert label_map.shape == (10, 7) and np.unique(label_map).tolist() == list(range(9))
    assert label_map[0, 0] == 0 and label_map[-1, -1] == 8
    assert (MaskSource("grid", grid=1).label_map({"image": np.zeros((4, 4, 3), np.uint8)}) == 0).all()


def test_mask_source_gt_needs_coco_annotations(tmp_path):
    class Spec:
        kind, path, scales, grid = "gt", None, None, 5

    class Data:
        root, split = str(tmp_path), "train2017"

    with pytest.raises(Exception, match=r"annotations/instances_train2017.json does not exist"):
        MaskSource.from_spec(Spec, Data)


def test_mask_source_reads_mcg_stores_flattened_by_score(tmp_path):
    # MCG proposals may overlap: each pixel goes to the best-scoring proposal covering it (1 + rank), 0 = none.
    proposals = np.zeros((2, 6, 6), np.uint8)
    proposals[0, :3] = 1          # best proposal: top half
    proposals[1, 2:5] = 1         # second: rows 2-4, overlapping row 2
    _write_fh_store(tmp_path / "mcg.h5", {"3": proposals}, None, method="mcg")

    class Spec:
        kind, path, scales, grid = "store", str(tmp_path / "mcg.h5"), None, 5

    class Data:
        root, split = str(tmp_path), "train2017"

    label_map = MaskSource.from_spec(Spec, Data).label_map({"image": np.zeros((6, 6, 3), np.uint8), "image_id": 3})
    assert label_map[:, 0].tolist() == [1, 1, 1, 2, 2, 0]
