"""`prepare masks|boxes --shard I/N` and `prepare merge`: parts joined give the unsharded store; a killed shard
resumes; parts of different commands are refused. And the store's input hash covers the image bytes."""

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
from test_store import make_images

from sslcli.proposals.shards import Shard

REPO = Path(__file__).resolve().parents[1]


def contents(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Every dataset's values and every root attribute of an HDF5 file."""
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}, dict(f.attrs)


def assert_same_store(a: Path, b: Path) -> None:
    (data_a, attrs_a), (data_b, attrs_b) = contents(a), contents(b)
    assert sorted(data_a) == sorted(data_b)
    for name in data_a:
        assert data_a[name].dtype == data_b[name].dtype and np.array_equal(data_a[name], data_b[name]), name
    assert sorted(attrs_a) == sorted(attrs_b)
    for key in attrs_a:
        assert np.array_equal(attrs_a[key], attrs_b[key]), (key, attrs_a[key], attrs_b[key])


def test_shard_ranges_tile_the_images():
    for n in (0, 1, 7, 100):
        for count in (1, 2, 3, 8):
            ranges = [Shard(i, count).range(n) for i in range(count)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, no overlap
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1  # balanced
    assert Shard.parse("3/16").part_path(Path("d/fh.h5")) == Path("d/fh.shard-0003-of-0016.h5")


def test_two_shards_one_killed_and_resumed_merge_into_the_unsharded_store(tmp_path, cli):
    images = make_images(tmp_path / "imgs", 12, size=160)
    (images / "broken.png").write_bytes(b"\x89PNG not really")  # skipped images must merge too (in shard 0)
    args = ["prepare", "masks", str(images), "--method", "fh", "--scales", "40,80", "--flush-every", "1", "-q"]
    store = tmp_path / "fh.h5"
    reference = tmp_path / "reference.h5"
    assert cli([*args, "--out", reference])[0] == 0

    assert cli([*args, "--out", store, "--shard", "0/2"])[0] == 0
    part0, part1 = Shard(0, 2).part_path(store), Shard(1, 2).part_path(store)
    assert part0.is_file() and not store.exists()

    # Shard 1 killed (SIGKILL) once it has written two blocks, then resumed by the same command.
    partial = part1.with_name(part1.name + ".partial")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "sslcli", *args, "--out", str(store), "--shard", "1/2"], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if len(list(partial.glob("block-*.npz"))) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "shard 1 ended before it could be killed"
    assert not part1.exists()
    code, stdout, err = cli([*args, "--out", store, "--shard", "1/2", "--json"])
    assert code == 0 and '"status": "resumed"' in stdout and '"shard": "1/2"' in stdout, err

    code, stdout, err = cli(["prepare", "merge", part1, part0, "--out", store, "--json"])  # any order
    assert code == 0, err
    assert '"images": 12' in stdout and '"skipped": 1' in stdout
    assert_same_store(store, reference)
    assert store.read_bytes() == reference.read_bytes()  # same results, same deterministic writer


def test_three_box_shards_merge_into_the_unsharded_store(tmp_path, cli):
    images = make_images(tmp_path / "imgs", 5, size=96, seed=4)
    args = ["prepare", "boxes", str(images), "--flush-every", "1", "-q"]
    assert cli([*args, "--out", tmp_path / "reference.h5"])[0] == 0
    for i in range(3):
        assert cli([*args, "--out", tmp_path / "ss.h5", "--shard", f"{i}/3", "--workers", str(1 + i % 2)])[0] == 0
    parts = sorted(tmp_path.glob("ss.shard-*-of-0003.h5"))
    assert len(parts) == 3
    code, _, err = cli(["prepare", "merge", *parts, "--out", tmp_path / "ss.h5"])
    assert code == 0, err
    assert_same_store(tmp_path / "ss.h5", tmp_path / "reference.h5")


def test_merge_refuses_parts_of_other_commands_in_one_line(tmp_path, cli):
    images = make_images(tmp_path / "imgs", 4)
    grid = ["prepare", "masks", images, "--method", "grid", "-q"]
    assert cli([*grid, "--grid", "2", "--out", tmp_path / "a.h5", "--shard", "0/2"])[0] == 0
    assert cli([*grid, "--grid", "3", "--out", tmp_path / "a.h5", "--shard", "1/2"])[0] == 0
    assert cli([*grid, "--grid", "2", "--out", tmp_path / "b.h5", "--shard", "1/2"])[0] == 0
    assert cli([*grid, "--grid", "2", "--out", tmp_path / "whole.h5"])[0] == 0
    a0, a1 = tmp_path / "a.shard-0000-of-0002.h5", tmp_path / "a.shard-0001-of-0002.h5"
    b1 = tmp_path / "b.shard-0001-of-0002.h5"

    def refused(parts, needle):
        code, stdout, err = cli(["prepare", "merge", *parts, "--out", tmp_path / "m.h5"])
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "m.h5").exists()

    refused([a0, a1], "made with other parameters")
    refused([a0, a1], '{"grid": 3}')
    refused([a0], "shard(s) 1/2 missing")
    refused([a0, a0], "given twice")
    refused([a0, tmp_path / "whole.h5"], "not a part of a sharded run")
    other = make_images(tmp_path / "other", 5, seed=9)  # another image list: refused too
    assert cli(["prepare", "masks", other, "--method", "grid", "--grid", "2", "--out", tmp_path / "o.h5",
                "--shard", "1/2", "-q"])[0] == 0
    refused([a0, tmp_path / "o.shard-0001-of-0002.h5"], "list_hash")
    code, _, _ = cli(["prepare", "merge", a0, b1, "--out", tmp_path / "m.h5"])  # same command, other --out: fine
    assert code == 0
    for bad in ("2/2", "1", "a/b", "-1/2"):
        code, _, err = cli([*grid, "--out", tmp_path / "x.h5", "--shard", bad])
        assert code == 2 and "--shard" in err, bad


def _flip_in_place(path: Path) -> None:
    """Other image content under the same name and size."""
    image = cv2.imread(str(path))
    cv2.imwrite(str(path), np.ascontiguousarray(image[:, ::-1]))


def test_a_store_of_other_images_with_the_same_names_is_stale(tmp_path, cli, monkeypatch):
    from sslcli.proposals import runner

    images = make_images(tmp_path / "imgs", 3)
    args = ["prepare", "masks", images, "--method", "grid", "--out", tmp_path / "g.h5", "--json"]
    assert cli(args)[0] == 0
    code, stdout, _ = cli(args)
    assert code == 0 and '"already complete"' in stdout
    _flip_in_place(images / "img001.png")
    code, stdout, err = cli(args)
    assert code == 2 and "already complete" not in stdout and "other parameters or inputs" in err

    # An interrupted run over the old images is not resumed over the new ones either.
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    partial_args = ["prepare", "masks", images, "--method", "grid", "--out", tmp_path / "p.h5", "--flush-every", "1"]
    with monkeypatch.context() as patch:
        patch.setattr(runner, "_write_from_blocks", interrupted)
        assert cli(partial_args)[0] != 0
    assert len(list((tmp_path / "p.h5.partial").glob("block-*.npz"))) == 3
    _flip_in_place(images / "img002.png")
    code, _, err = cli(partial_args)
    assert code == 2 and "interrupted run with other parameters or inputs" in err


def test_inspect_warns_when_the_images_differ_from_the_stores(coco_data, tmp_path, cli):
    out = tmp_path / "grid.h5"
    assert cli(["prepare", "masks", coco_data, "--method", "grid", "--grid", "2", "--out", out, "-q"])[0] == 0
    code, stdout, err = cli(["prepare", "inspect", out, "--gt", coco_data, "--json"])
    assert code == 0 and '"stale_images": 0' in stdout and "warning" not in err
    # The same data set with two images replaced by other content under the same names.
    copy = tmp_path / "coco"
    (copy / "train2017").mkdir(parents=True)
    os.symlink(coco_data / "annotations", copy / "annotations")
    names = sorted(p.name for p in (coco_data / "train2017").iterdir())
    for name in names:
        os.symlink(coco_data / "train2017" / name, copy / "train2017" / name)
    for name in names[:2]:
        (copy / "train2017" / name).unlink()
        (copy / "train2017" / name).write_bytes((coco_data / "train2017" / name).read_bytes())
        _flip_in_place(copy / "train2017" / name)
    code, stdout, err = cli(["prepare", "inspect", out, "--gt", copy, "--json"])
    assert code == 0 and '"stale_images": 2' in stdout
    assert "warning:" in err and "2 of the 50 evaluated images" in err
    code, stdout, err = cli(["prepare", "masks", copy, "--method", "grid", "--grid", "2", "--out", out, "--json"])
    assert code == 2 and "already complete" not in stdout and "other parameters or inputs" in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_killed_run_takes_its_workers_with_it_and_a_rerun_starts_at_once(tmp_path, cli):
    images = make_images(tmp_path / "imgs", 24, size=192)
    out = tmp_path / "fh.h5"
    partial = out.with_name(out.name + ".partial")
    args = ["prepare", "masks", str(images), "--method", "fh", "--scales", "50,100,200", "--flush-every", "2",
            "--workers", "2", "--out", str(out), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "sslcli", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not list(partial.glob("block-*.npz")):
            time.sleep(0.002)
        workers = [pid for pid in _group_members(proc.pid) if pid != proc.pid]
        assert workers, "no worker process found"
        os.kill(proc.pid, signal.SIGKILL)  # the run's process only, as a scheduler or OOM killer would
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        deadline = time.monotonic() + 15
        while _group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _group_members(proc.pid), "worker processes outlived the killed run"
        code, stdout, err = cli([*args[:-1], "--json"])  # no "another run is writing this store"
        assert code == 0 and '"status": "resumed"' in stdout, err
    finally:
        for pid in _group_members(proc.pid):
            os.kill(pid, signal.SIGKILL)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


@pytest.mark.parametrize("kind, options", [("masks", ["--method", "grid", "--grid", "3"]), ("boxes", ["--filter", "none"])])
def test_slurm_shards_rerun_the_command_they_came_from(tmp_path, cli, monkeypatch, kind, options):
    # `prepare masks --executor slurm` once sent its shards `prepare boxes` argument lists.
    images = make_images(tmp_path / "imgs", 2)
    store = tmp_path / "store.h5"
    shard_commands = []

    def submit(shard_args, store, count, options, overwrite, log):  # stands in for the Slurm job array
        shard_commands.extend(shard_args(shard) for shard in (Shard(0, count), Shard(1, count)))
        return {"status": "merged"}

    monkeypatch.setattr("sslcli.proposals.slurm_shards.prepare_on_slurm", submit)
    code, _, err = cli(["prepare", kind, images, *options, "--out", store, "--executor", "slurm", "--shards", "2"])
    assert code == 0, err
    for i, args in enumerate(shard_commands):
        assert args[:3] == ["prepare", kind, str(images)]
        assert args[-4:] == ["--out", str(store), "--shard", f"{i}/2"]
        assert all(option in args for option in options)
