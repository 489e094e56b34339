"""``data.cache: memory | device`` (the image cache of the device pipeline) on CPU tensors: the batches equal the
file path's ``gpu``-pipeline batches for the same seed (the cache holds the pixels of the same decoder, and the
workers draw the same parameters), training with the cache resumes bit-identically, and the bad inputs are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sslcli.data.stores.store import RegionStore
from sslcli.engine.data import build_loader, cache_limit
from sslcli.engine.launch import launch
from sslcli.engine.training_checkpoint import load_checkpoint
from sslcli.errors import InputError
from sslcli.spec import parse_spec

# A method of each kind of device views: crops (moco), masks (detcon), boxes (soco, d3ssl), crops with cell
# coordinates (pixpro).
METHODS = {
    "moco": {"name": "moco", "queue_size": 32},
    "detcon": {"name": "detcon", "masks": {"kind": "grid", "grid": 3}},
    "detcon-fh-store": {"name": "detcon", "masks": {"kind": "store", "path": "FH_STORE"}},
    "soco": {"name": "soco", "recipe": "fpn-code"},
    "d3ssl": {"name": "d3ssl", "bank_size": 64},
    "pixpro": {"name": "pixpro"},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """12 synthetic JPEG scenes with a selective-search box store, made through the CLI."""
    from typer.testing import CliRunner

    from sslcli.cli import app
    from sslcli.data.scenes.synthetic import generate

    root = tmp_path_factory.mktemp("cache") / "data"
    generate(root, n_train=12, n_val=0, seed=0, size=64)
    for args in (["prepare", "boxes", str(root)],
                 ["prepare", "masks", str(root), "--method", "fh", "--scales", "100,500", "--out", str(root / "fh.h5"),
                  "--workers", "1"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.stderr
    return root


def _spec_dict(method: str, root: Path, out: Path, **data) -> dict:
    m = json.loads(json.dumps(METHODS[method]).replace("FH_STORE", str(root / "fh.h5")))
    boxes = {"boxes": str(root / "sslcli" / "ss-soco.h5")} if m["name"] in ("soco", "d3ssl") else {}
    return {"data": {"root": str(root), "image_size": 64, "workers": 0, "pin_memory": False, "pipeline": "gpu",
                     **data},
            "model": {"arch": "resnet18", "width": 8, "c4": m["name"] in ("soco", "d3ssl")},
            "method": {**m, **boxes, "dim": 16, "hidden_dim": 32},
            "optimizer": {"name": "lars", "base_lr": 1.0, "weight_decay": 1e-5},
            "batch_size": 4, "epochs": 2, "precision": "fp32", "output_dir": str(out)}


def _batches(spec, epoch: int = 1, monkeypatch=None) -> list[dict]:
    """An epoch of the spec's loader; with ``monkeypatch``, reading or decoding a file after the loader is built fails
    the test (what the cache is for)."""
    from sslcli.data.views import device_ops
    from sslcli.engine import data
    from sslcli.methods import build_method

    transform = build_method(spec).transform()
    loader, sampler = build_loader(spec, transform, rank=0, world_size=1, start_epoch=epoch, pin_memory=False)
    if monkeypatch is not None:
        def forbidden(*args, **kwargs):
            raise AssertionError("a file was read or decoded with the cache on")

        monkeypatch.setattr(device_ops, "decode_batch", forbidden)
        monkeypatch.setattr(data.EncodedImage, "read", forbidden)
        monkeypatch.setattr(RegionStore, "_h5", forbidden)  # the region stores are held in memory too
    sampler.set_epoch(epoch)
    return list(loader)


def _assert_batches_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key, value in w.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(g[key], value), key
            else:
                assert g[key] == value, key


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cached_batches_equal_the_file_paths(method, dataset, tmp_path, monkeypatch):
    """Same decoder, same per-sample parameter draws: every tensor of every batch of an epoch is equal, and no file
    is read or decoded once the cache is built."""
    from_files = _batches(parse_spec(_spec_dict(method, dataset, tmp_path / "a")))
    for cache in ("memory", "device"):
        with monkeypatch.context() as patch:
            cached = _batches(parse_spec(_spec_dict(method, dataset, tmp_path / "b", cache=cache)), monkeypatch=patch)
        _assert_batches_equal(cached, from_files)


def test_the_cache_holds_the_decoders_pixels_where_asked(dataset, tmp_path):
    """The cache holds (3, H, W) uint8 images equal to OpenCV's decode of each file (the CPU path's decoder: the
    generated JPEGs decode identically with libjpeg through either)."""
    from sslcli.data.readers.images import load_image
    from sslcli.data.readers.sources import open_source
    from sslcli.data.views.image_cache import ImageCache

    paths = [r.path for r in open_source(str(dataset), "train2017").records]
    cache = ImageCache.build(paths, "memory", torch.device("cpu"), limit=10**9, limit_name="test")
    assert len(cache.images) == len(paths) == 12
    for path, entry, image in zip(paths, cache.entries, cache.images, strict=True):
        expected = torch.from_numpy(load_image(path)).permute(2, 0, 1)
        assert image is not None and image.dtype == torch.uint8 and torch.equal(image, expected)
        assert (entry.height, entry.width) == tuple(expected.shape[1:]) and entry.error is None


def test_a_store_held_in_memory_reads_what_the_file_holds(dataset):
    """Every image's masks and boxes read from the held rows equal those read from the HDF5 file, and the held rows
    take the bytes the file's region datasets hold."""
    import h5py

    for name, read in (("fh.h5", RegionStore.masks), ("sslcli/ss-soco.h5", RegionStore.boxes)):
        path = dataset / name
        from_file, held = RegionStore(path), RegionStore(path)
        held.hold_in_memory()
        with h5py.File(path) as f:
            assert held.region_bytes() == sum(f[k].size * f[k].dtype.itemsize for k in ("blobs", "boxes") if k in f)
        for image_id in from_file.image_ids:
            assert np.array_equal(read(held, image_id), read(from_file, image_id))


def test_region_stores_above_the_memory_limit_are_refused(dataset):
    import h5py

    from sslcli.data.views.image_cache import hold_region_stores

    path = dataset / "sslcli" / "ss-soco.h5"
    with h5py.File(path) as f:
        needed = f["boxes"].size * f["boxes"].dtype.itemsize
    with pytest.raises(InputError, match=rf"data.cache: 'memory' holds the method's region stores in host memory: "
                                         rf"0.00 GB \({needed} bytes\) needed, above the 0.00 GB \({needed - 1} bytes\) "
                                         "of host memory available; use data.cache: none"):
        hold_region_stores([RegionStore(path)], "memory", needed - 1)


@pytest.mark.parametrize("method", ["soco", "detcon-fh-store"])
def test_workers_draw_the_same_views_from_the_cache(method, dataset, tmp_path, monkeypatch):
    """The workers get the cache's entries (no pixels) and the held stores, and draw the same parameters as the main
    process; they read no file and no HDF5 store either."""
    spec = _spec_dict(method, dataset, tmp_path / "run", cache="memory")
    in_process = _batches(parse_spec(spec))
    with_workers = _batches(parse_spec({**spec, "data": {**spec["data"], "workers": 2}}), monkeypatch=monkeypatch)
    _assert_batches_equal(with_workers, in_process)


def test_a_corrupt_image_is_replaced_and_reported_as_on_the_file_path(dataset, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    spec_dict = _spec_dict("moco", root, tmp_path / "run", cache="memory")
    spec = parse_spec(spec_dict)
    from sslcli.data.readers.sources import open_source

    bad = open_source(str(root), "train2017").records[0].path
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    batches = _batches(spec, epoch=0)
    skipped = [path for batch in batches for path, _ in batch["_skipped"]]
    assert skipped == [str(bad)]
    assert sum(len(b["index"]) for b in batches) == 12  # 3 full batches: the image was replaced, not dropped


@pytest.mark.parametrize("method", ["moco", "detcon"])
def test_training_with_the_cache_equals_the_file_path_and_resumes_bit_identically(method, dataset, tmp_path):
    # batch 4 of 12 images: 3 steps per epoch; cut at step 2 (mid-epoch), resume to step 5 (into epoch 2).
    def spec(out, steps, **data):
        return parse_spec({**_spec_dict(method, dataset, tmp_path / out, **data), "max_steps": steps})

    files = launch(spec("files", 5))
    full = launch(spec("full", 5, cache="memory"))
    launch(spec("cut", 2, cache="memory"))
    resumed = launch(spec("cut", 5, cache="memory"), resume="auto")
    assert resumed["steps"] == full["steps"] == 5
    assert resumed["final_loss"] == full["final_loss"] == files["final_loss"]
    states = [load_checkpoint(tmp_path / run / "last.pt")["method"] for run in ("files", "full", "cut")]
    for other in states[1:]:
        assert other.keys() == states[0].keys()
        assert [k for k in states[0] if not torch.equal(states[0][k], other[k])] == []


def test_a_run_decoding_files_resumes_with_the_cache_bit_identically(dataset, tmp_path):
    """data.cache changes no number, so a checkpoint of the file path (or of a spec from before the field) resumes
    with it; no other data field may change."""
    from sslcli.engine.training_checkpoint import spec_differences

    def spec(out, steps, **data):
        return parse_spec({**_spec_dict("moco", dataset, tmp_path / out, **data), "max_steps": steps})

    full = launch(spec("full", 4))
    launch(spec("cut", 2))
    resumed = launch(spec("cut", 4, cache="device"), resume="auto")
    assert resumed["final_loss"] == full["final_loss"]
    a, b = (load_checkpoint(tmp_path / run / "last.pt")["method"] for run in ("full", "cut"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    before_the_field = {"data": {"root": "d", "pipeline": "gpu"}}
    assert spec_differences(before_the_field, {"data": {"root": "d", "pipeline": "gpu", "cache": "memory"}}) == []
    assert spec_differences(before_the_field, {"data": {"root": "d", "pipeline": "cpu", "cache": "none"}}) == [
        "data.pipeline"]


def test_device_views_that_bypass_encoded_fields_are_refused_with_the_cache():
    from sslcli.data.views.device_ops import DeviceViews
    from sslcli.data.views.image_cache import ImageCache
    from sslcli.engine.data import DeviceLoader

    class OwnBytes(DeviceViews):  # a plugin's views that send something of their own instead of `encoded_fields`
        def apply(self, batch, device):
            return batch

    loader = DeviceLoader([{"bytes": [b"x"], "_skipped": []}], OwnBytes(), torch.device("cpu"), ImageCache([], []))
    with pytest.raises(InputError, match="data.cache: the device views OwnBytes send no cache positions"):
        next(iter(loader))


def test_the_cache_needs_the_gpu_pipeline(dataset, tmp_path):
    with pytest.raises(InputError, match="data.cache: 'memory' holds decoded images for the device views; it needs "
                                         "data.pipeline: gpu"):
        parse_spec(_spec_dict("moco", dataset, tmp_path, cache="memory", pipeline="cpu"))
    with pytest.raises(InputError, match="data.cache"):
        parse_spec(_spec_dict("moco", dataset, tmp_path, cache="disk"))


def test_a_cache_above_the_memory_limit_is_refused_before_training(dataset, tmp_path, monkeypatch, cli):
    """The cache takes H×W×3 bytes per image (docs/pretrain.md), summed here from the sizes the COCO annotation file
    records; a limit one byte below is refused with both numbers, exit code 2 and no output folder written."""
    import yaml

    from sslcli.engine import data

    images = json.loads((dataset / "annotations" / "instances_train2017.json").read_text())["images"]
    needed = sum(3 * image["height"] * image["width"] for image in images)
    monkeypatch.setattr(data, "available_memory", lambda: needed - 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)  # one rank: the whole host memory is its share
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(_spec_dict("moco", dataset, tmp_path / "run", cache="memory")
                                        | {"max_steps": 1}))
    code, out, _ = cli(["pretrain", str(spec_path), "--json"])
    assert code == 2
    error = json.loads(out)
    assert error["exit_code"] == 2
    assert error["error"] == (f"data.cache: 'memory' needs 0.00 GB ({needed} bytes) for 12 decoded images (H×W×3 "
                              f"bytes each), above the 0.00 GB ({needed - 1} bytes) of host memory available; use "
                              "data.cache: none")
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(data, "available_memory", lambda: needed)  # exactly enough: accepted
    code, out, err = cli(["pretrain", str(spec_path), "--json"])
    assert code == 0, err


def test_the_device_cache_is_limited_by_the_devices_free_memory(monkeypatch):
    from sslcli.engine import data

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (123, 456))
    monkeypatch.setattr(data, "available_memory", lambda: 1000)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cache_limit("device", torch.device("cuda", 0)) == (123, "free on cuda:0")
    assert cache_limit("device", torch.device("cpu")) == (1000, "of host memory available")
    assert cache_limit("memory", torch.device("cuda", 0)) == (1000, "of host memory available")
    # Each of a node's ranks holds its own cache: 4 ranks share the host's memory.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cache_limit("memory", torch.device("cuda", 0)) == (250, "of host memory available to each of this "
                                                                   "node's 4 ranks")
    assert cache_limit("device", torch.device("cuda", 0)) == (123, "free on cuda:0")


def test_the_byte_count_is_height_times_width_times_three():
    from sslcli.data.views.device_ops import CachedImage
    from sslcli.data.views.image_cache import decoded_bytes

    images = [CachedImage(0, Path("a"), 480, 640), CachedImage(1, Path("b"), 10, 20),
              CachedImage(2, Path("c"), 0, 0, error="cannot decode")]
    assert decoded_bytes(images) == 480 * 640 * 3 + 10 * 20 * 3
    assert np.isclose(decoded_bytes(images[:1]) / 1e9, 0.0009216)


def test_the_pinned_cache_runs_equal_the_pinned_gpu_pipeline_runs():
    """tests/golden/numbers.json: a 3-step run with ``data.cache: memory`` trains exactly as the same run decoding its
    files (same losses, same weights), for a crop method and a box method."""
    runs = json.loads((Path(__file__).parent / "golden" / "numbers.json").read_text())["runs"]
    assert runs["moco-cache-memory"] == runs["moco-gpu-pipeline"]
    assert runs["soco-paper-cache-memory"] == runs["soco-paper-gpu-pipeline"]
