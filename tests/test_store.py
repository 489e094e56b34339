"""The HDF5 region store and its runner: round trips, atomicity, determinism, resume after kill -9, DataLoader use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from sslcli.data.stores.store import ImageResult, RegionStore, encode, write_store
from sslcli.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def make_images(folder: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """``n`` PNGs of random coloured rectangles on noise (FH finds real segments in them)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.integers(0, 40, (size, size + 8, 3), dtype=np.uint8)
        for _ in range(6):
            x0, y0 = rng.integers(0, size - 8, 2)
            w, h = rng.integers(8, size // 2, 2)
            image[y0:y0 + h, x0:x0 + w] = rng.integers(0, 255, 3, dtype=np.uint8)
        cv2.imwrite(str(folder / f"img{i:03d}.png"), image)
    return folder


def write_masks_store(path: Path, arrays: dict[str, np.ndarray], values: dict[str, np.ndarray] | None = None):
    results = [encode(ImageResult(k, masks=v, values=(values or {}).get(k)), "masks") for k, v in arrays.items()]
    totals = {"images": len(results), "payload": sum(len(r.payload) for r in results),
              "values": sum(len(r.values) for r in results)}
    attrs = {"method": "fh", "parameters": '{"scales": [10, 20]}', "input_hash": "x", "n_inputs": len(results),
             "sslcli_version": "test"}
    return write_store(path, "masks", attrs, results, totals)


def test_masks_round_trip_keeps_more_than_255_labels(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "1": rng.integers(0, 300, (2, 20, 30)).astype(np.int32),  # uint16 on disk
        "2": rng.integers(0, 70000, (2, 25, 10)).astype(np.int32),  # int32 on disk
        "abc/def.jpg": rng.integers(0, 5, (2, 8, 8)).astype(np.int32),  # uint8 on disk
    }
    write_masks_store(tmp_path / "s.h5", arrays)
    store = RegionStore(tmp_path / "s.h5")
    assert store.kind == "masks" and len(store) == 3 and store.scales == [10, 20]
    assert store.image_ids == ["1", "2", "abc/def.jpg"]
    assert store.index_of(2) == store.index_of("2") == 1
    for key, expected in arrays.items():
        got = store.masks(key)
        assert got.dtype == np.int32 and np.array_equal(got, expected)
        assert np.array_equal(store.label_map(key, 1), expected[1])
    assert store.masks(1).max() >= 256 and store.masks(2).max() >= 65536
    assert store.region_counts().tolist() == [[len(np.unique(m)) for m in a] for a in arrays.values()]
    with pytest.raises(KeyError):
        store.index_of("missing")
    with pytest.raises(InputError, match="no boxes"):
        store.boxes(1)


def test_boxes_round_trip_and_region_values(tmp_path):
    boxes = {"7": np.array([[0, 0, 10, 20], [1.5, 2.5, 3.5, 4.5]], np.float32), "8": np.zeros((0, 4), np.float32),
             "9": np.arange(40, dtype=np.float32).reshape(10, 4)}
    results = [encode(ImageResult(k, boxes=v, image_size=(50, 60), values=np.arange(len(v))), "boxes")
               for k, v in boxes.items()]
    totals = {"images": 3, "payload": sum(len(v) for v in boxes.values()), "values": 12}
    write_store(tmp_path / "b.h5", "boxes", {"method": "selective-search", "parameters": "{}", "input_hash": "h",
                                              "region_values_name": "rank"}, results, totals)
    store = RegionStore(tmp_path / "b.h5")
    assert store.kind == "boxes" and store.scales is None
    for key, expected in boxes.items():
        assert store.boxes(int(key)).dtype == np.float32
        assert np.array_equal(store.boxes(int(key)), expected)
        assert np.array_equal(store.region_values(key), np.arange(len(expected)))
        assert store.image_size(key) == (50, 60)
    assert store.region_counts().tolist() == [[2], [0], [10]]


def test_writes_are_deterministic_and_atomic(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {str(i): rng.integers(0, 1000, (1, 40, 40)).astype(np.int32) for i in range(5)}
    write_masks_store(tmp_path / "a.h5", arrays)
    time.sleep(1.1)  # a timestamp anywhere in the file would now differ
    write_masks_store(tmp_path / "b.h5", arrays)
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()

    def failing():  # a crash halfway through the write leaves nothing behind under the final name
        yield encode(ImageResult("0", masks=arrays["0"]), "masks")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_store(tmp_path / "c.h5", "masks", {"method": "fh", "parameters": "{}", "input_hash": "x"}, failing(),
                    {"images": 2, "payload": 10, "values": 0})
    assert list(tmp_path.glob("*c.h5*")) == []


def test_reader_refuses_incomplete_or_foreign_files(tmp_path):
    write_masks_store(tmp_path / "s.h5", {"1": np.zeros((1, 4, 4), np.int32)})
    with h5py.File(tmp_path / "s.h5", "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(InputError, match="incomplete region store"):
        len(RegionStore(tmp_path / "s.h5"))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(InputError, match="not an sslcli region store"):
        len(RegionStore(tmp_path / "other.h5"))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="not a readable HDF5"):
        len(RegionStore(tmp_path / "junk.h5"))
    with pytest.raises(InputError, match="not found"):
        RegionStore(tmp_path / "absent.h5")


def test_worker_count_does_not_change_the_store(tmp_path, cli):
    images = make_images(tmp_path / "imgs", 6)
    args = ["prepare", "masks", images, "--method", "fh", "--scales", "20,50", "-q"]
    assert cli([*args, "--out", tmp_path / "w1.h5", "--workers", "1", "--flush-every", "4"])[0] == 0
    assert cli([*args, "--out", tmp_path / "w2.h5", "--workers", "2", "--flush-every", "1"])[0] == 0
    a, b = RegionStore(tmp_path / "w1.h5"), RegionStore(tmp_path / "w2.h5")
    assert a.image_ids == b.image_ids and len(a) == 6
    for image_id in a.image_ids:
        assert np.array_equal(a.masks(image_id), b.masks(image_id))
    assert (tmp_path / "w1.h5").read_bytes() == (tmp_path / "w2.h5").read_bytes()


def test_kill_minus_9_then_resume_gives_a_byte_identical_store(tmp_path, cli):
    images = make_images(tmp_path / "imgs", 24, size=192)
    args = ["prepare", "masks", str(images), "--method", "fh", "--scales", "50,100,200", "--flush-every", "2", "-q"]
    reference = tmp_path / "reference.h5"
    assert cli([*args, "--out", reference])[0] == 0

    out = tmp_path / "killed.h5"
    partial = out.with_name(out.name + ".partial")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "sslcli", *args, "--out", str(out)], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if len(list(partial.glob("block-*.npz"))) >= 3:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group we started, workers included
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not out.exists(), "a killed run must not leave a store under the final name"
    done_before = len(list(partial.glob("block-*.npz")))
    assert 3 <= done_before < 12

    code, stdout, _ = cli([*args, "--out", out, "--json"])
    assert code == 0 and '"status": "resumed"' in stdout
    assert out.read_bytes() == reference.read_bytes()
    assert not partial.exists()


def test_rerun_after_a_kill_around_the_final_rename(tmp_path, cli):
    images = make_images(tmp_path / "imgs", 3)
    out = tmp_path / "g.h5"
    args = ["prepare", "masks", images, "--method", "grid", "--grid", "3", "--out", out, "--json"]
    assert cli(args)[0] == 0
    reference = out.read_bytes()
    # Killed after the rename, before the cleanup: the rerun only cleans up.
    (tmp_path / "g.h5.partial").mkdir()
    code, stdout, _ = cli(args)
    assert code == 0 and '"already complete"' in stdout and not (tmp_path / "g.h5.partial").exists()
    # Killed during the final write: a stale temporary and all shards are left; the rerun finishes and tidies up.
    out.unlink()
    stale = tmp_path / ".g.h5.abc123.tmp"
    stale.write_bytes(b"half a file")
    assert cli(args)[0] == 0
    assert out.read_bytes() == reference and not stale.exists()


def test_existing_store_or_partial_with_other_parameters_is_refused(tmp_path, cli):
    images = make_images(tmp_path / "imgs", 2)
    out = tmp_path / "s.h5"
    assert cli(["prepare", "masks", images, "--method", "grid", "--grid", "2", "--out", out])[0] == 0
    code, _, err = cli(["prepare", "masks", images, "--method", "grid", "--grid", "3", "--out", out])
    assert code == 2 and "other parameters" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert RegionStore(out).parameters == {"grid": 2}  # untouched
    assert cli(["prepare", "masks", images, "--method", "grid", "--grid", "3", "--out", out, "--overwrite"])[0] == 0
    assert RegionStore(out).parameters == {"grid": 3}

    partial = tmp_path / "p.h5.partial"
    partial.mkdir()
    (partial / "job.json").write_text('{"kind": "masks", "attrs": {"method": "fh"}, "flush_every": 2}')
    code, _, err = cli(["prepare", "masks", images, "--method", "grid", "--out", tmp_path / "p.h5"])
    assert code == 2 and "interrupted run with other parameters" in err


def test_unwritable_output_and_bad_options_fail_with_exit_2(tmp_path, cli):
    images = make_images(tmp_path / "imgs", 1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli(["prepare", "masks", images, "--method", "grid", "--out", blocker / "s.h5"])
    assert code == 2 and "not writable" in err
    for bad, needle in ((["--method", "nope"], "--method"), (["--scales", "5,x"], "--scales"),
                        (["--workers", "0"], "--workers"), (["--method", "mcg"], "--mcg-dir"),
                        (["--method", "gt"], "COCO")):
        code, _, err = cli(["prepare", "masks", images, "--out", tmp_path / "x.h5", *bad])
        assert code == 2 and needle in err, (bad, err)
    code, _, err = cli(["prepare", "boxes", images, "--backend", "fast"])
    assert code == 2 and "--backend" in err
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    code, _, err = cli(["prepare", "masks", tmp_path / "coco", "--split", "val2017"])
    assert code == 2 and "instances_val2017.json: annotation file not found" in err


def test_corrupt_images_are_skipped_and_listed(tmp_path, cli):
    images = make_images(tmp_path / "imgs", 3)
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    code, stdout, _ = cli(["prepare", "masks", images, "--method", "grid", "--out", tmp_path / "s.h5", "--json"])
    assert code == 0 and '"skipped": 1' in stdout and "broken.png" in stdout
    store = RegionStore(tmp_path / "s.h5")
    assert len(store) == 3 and "broken.png" not in store
    assert store.skipped[0]["image_id"] == "broken.png" and "cannot decode" in store.skipped[0]["error"]

    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    (only_broken / "x.jpg").write_bytes(b"")
    assert cli(["prepare", "boxes", only_broken, "--out", tmp_path / "empty.h5"])[0] == 0
    code, stdout, _ = cli(["prepare", "inspect", tmp_path / "empty.h5", "--json"])
    assert code == 0 and '"images": 0' in stdout and '"skipped": 1' in stdout


class _StoreDataset(torch.utils.data.Dataset):
    def __init__(self, store: RegionStore):
        self.store, self.ids = store, store.image_ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return torch.from_numpy(self.store.masks(self.ids[i]).astype(np.int64)), os.getpid()


def test_reader_works_in_two_dataloader_workers(tmp_path, cli):
    images = make_images(tmp_path / "imgs", 8)
    assert cli(["prepare", "masks", images, "--method", "fh", "--scales", "30", "--out", tmp_path / "s.h5"])[0] == 0
    store = RegionStore(tmp_path / "s.h5")
    expected = [store.masks(i) for i in store.image_ids]  # the parent holds an open handle before forking
    loader = torch.utils.data.DataLoader(_StoreDataset(store), batch_size=None, num_workers=2)
    got, pids = [], set()
    for masks, pid in loader:
        got.append(masks.numpy())
        pids.add(int(pid))
    assert len(got) == 8 and all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert len(pids) == 2 and os.getpid() not in pids
