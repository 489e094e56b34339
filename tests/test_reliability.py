"""Issue 16: what a kill, a second run, a script or an overlapping split used to break. One test (or more) per item;
kill items SIGKILL real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import engine_toy as toy
import pytest
import torch
import yaml

from sslcli.engine.launch import launch
from sslcli.engine.training_checkpoint import load_checkpoint
from sslcli.spec import parse_spec

TESTS = Path(__file__).parent
REPO = TESTS.parent
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
       "OMP_NUM_THREADS": str(torch.get_num_threads())}  # bit-exact CPU results need the same thread count


def _toy_cli(entry: str, *args: str) -> list[str]:
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import engine_toy; engine_toy.{entry}"
    return [sys.executable, "-c", code, *args]


def _wait_for(condition, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(path: Path) -> list[torch.Tensor]:
    state = load_checkpoint(path)["method"]
    return [state[k] for k in sorted(state)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------- 2: ranks die, folders lock
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_killing_a_two_rank_run_kills_its_ranks_and_frees_the_port(images, tmp_path):
    spec = tmp_path / "spec.yaml"
    body = toy.spec_dict(images, tmp_path / "run", epochs=1000, method={"name": "simclr", "dim": 8, "hidden_dim": 16})
    body["model"]["width"] = 4
    spec.write_text(yaml.safe_dump(body))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sslcli", "pretrain", str(spec), "--gpus", "2", "--master-port",
                             str(port), "-q"], env=ENV, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").is_file()
                  and len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) >= 2)
        ranks = [p for p in _children(proc.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(ranks) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _wait_for(lambda: not any(_alive(p) for p in ranks), seconds=20)
    # The rendezvous port is free again, so a rerun would not fail with EADDRINUSE. The kernel may need a moment after
    # the last rank's exit to release the listening socket (seen once on a loaded machine), hence the short wait.
    _wait_for(lambda: _port_free(port), seconds=20)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_second_run_on_the_same_output_folder_is_refused_until_the_first_dies(images, tmp_path, toy_method, cli):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(toy.spec_dict(images, tmp_path / "run", epochs=3)))
    first = subprocess.Popen(_toy_cli("main_slow()", "pretrain", str(spec), "-q"), env=ENV)
    try:
        _wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").is_file())
        code, stdout, err = cli(["pretrain", spec, "--resume", "auto", "--json"])
        assert code == 2 and f"output_dir {tmp_path / 'run'}" in err and f"pid {first.pid}" in err
        assert json.loads(stdout)["exit_code"] == 2
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    result = launch(parse_spec(toy.spec_dict(images, tmp_path / "run", epochs=3)), resume="auto")  # lock released
    assert result["steps"] == 6
    assert not (tmp_path / "run" / ".sslcli.lock").exists()


def test_a_failed_two_rank_run_reports_one_line_without_torch_termination_noise(images, tmp_path, capfd):
    from sslcli.errors import SslcliError

    spec = parse_spec(toy.spec_dict(images, tmp_path / "run", epochs=2), world_size=2)
    with pytest.raises(SslcliError, match="rank 1 broke on purpose"):
        launch(spec, gpus=2, master_port=free_port(), init_hook=toy.install_failing)
    assert "SIGTERM" not in capfd.readouterr().err


# --------------------------------------------------------------------------- 3: epoch checkpoint + metrics together
@pytest.mark.parametrize("killed_in", ["epoch_0001.pt", "epoch_0003.pt"])
def test_a_kill_while_an_epoch_checkpoint_is_written_loses_nothing(images, tmp_path, toy_method, killed_in):
    # data.threads pins the thread count in this process and the killed one alike (CPU sums depend on it).
    full = launch(parse_spec(toy.spec_dict(images, tmp_path / "full", epochs=3, checkpoint_every=1, data__threads=1)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(toy.spec_dict(images, tmp_path / "run", epochs=3, checkpoint_every=1, data__threads=1)))
    proc = subprocess.run(_toy_cli(f"main_killed_writing({killed_in!r})", "pretrain", str(spec), "-q"), env=ENV)
    assert proc.returncode == -signal.SIGKILL
    run = tmp_path / "run"
    assert list(run.glob(".*.tmp"))  # the kill left the half-written temporary file
    resumed = launch(parse_spec(toy.spec_dict(images, run, epochs=3, checkpoint_every=1, data__threads=1)), resume="auto")
    assert resumed["steps"] == 6 and resumed["final_loss"] == full["final_loss"]
    for epoch in (1, 2, 3):
        assert load_checkpoint(run / f"epoch_{epoch:04d}.pt")["step"] == 2 * epoch
    assert [r["epoch"] for r in _records(run) if r["type"] == "epoch"] == [0, 1, 2]
    assert _records(run)[-1]["step"] == 6
    assert all(torch.equal(a, b) for a, b in zip(_weights(tmp_path / "full" / "last.pt"), _weights(run / "last.pt")))
    assert not list(run.glob(".*.tmp"))


# ------------------------------------------------------------------------------------ 4: epoch statistics on resume
def test_an_epoch_stopped_midway_logs_the_same_mean_and_rows_as_an_uninterrupted_one(images, tmp_path, toy_method):
    # batch 4 of 20 images: 5 steps per epoch; logging every 2 steps; the stop at step 3 is mid-epoch, off the grid.
    settings = {"epochs": 2, "batch_size": 4, "logging": {"every_steps": 2}, "schedule": {"name": "constant"}}
    launch(parse_spec(toy.spec_dict(images, tmp_path / "full", **settings)))
    launch(parse_spec(toy.spec_dict(images, tmp_path / "cut", max_steps=3, **settings)))
    (tmp_path / "cut" / ".last.pt.stale.tmp").write_bytes(b"left by a killed write")
    launch(parse_spec(toy.spec_dict(images, tmp_path / "cut", **settings)), resume="auto")
    full, cut = _records(tmp_path / "full"), _records(tmp_path / "cut")
    assert [(r["type"], r["step"]) for r in cut] == [(r["type"], r["step"]) for r in full]
    steps = [r["step"] for r in full if r["type"] == "step"]
    assert steps == [2, 4, 6, 8, 10]  # no row at the stop (3)
    for a, b in zip(full, cut):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-12, abs=0)
    assert not (tmp_path / "cut" / ".last.pt.stale.tmp").exists()


# --------------------------------------------------------------------------------- 6: a killed `prepare synthetic`
def test_a_killed_prepare_synthetic_completes_on_rerun_without_force(tmp_path, cli):
    out = tmp_path / "data"
    args = ["prepare", "synthetic", str(out), "--images", "200", "--size", "48", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "sslcli", *args], env=ENV)
    _wait_for(lambda: len(list((out / "train2017").glob("*.jpg"))) >= 5 if (out / "train2017").is_dir() else False)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "annotations" / "instances_train2017.json").exists()  # recognisably incomplete
    code, _, err = cli(args)
    assert code == 0, err
    for split, count in (("train2017", 200), ("val2017", 50)):
        names = [i["file_name"] for i in json.loads((out / "annotations" / f"instances_{split}.json").read_text())
                 ["images"]]
        assert len(names) == count and sorted(p.name for p in (out / split).iterdir()) == sorted(names)
    # Scene i depends only on (seed, split, i): the first images equal those of a clean run of 4.
    clean = tmp_path / "clean"
    assert cli(["prepare", "synthetic", clean, "--images", "4", "--val-images", "0", "--size", "48", "-q"])[0] == 0
    for path in (clean / "train2017").iterdir():
        assert path.read_bytes() == (out / "train2017" / path.name).read_bytes()
    code, _, err = cli(args)  # a complete folder is still refused without --force
    assert code == 2 and "--force" in err


# ------------------------------------------------------------------------------- 7: analyze checks --out up front
@pytest.mark.parametrize("name", ["coupling", "positional", "oknn"])
def test_analyze_with_an_unwritable_out_fails_before_reading_anything(cli, tmp_path, name):
    from sslcli.models.backbone import build_backbone

    ckpt = tmp_path / "net.pth"
    torch.save(build_backbone("resnet18", width=4).state_dict(), ckpt)
    # --data does not exist either: the --out error must come first, before any data is read
    code, _, err = cli(["analyze", name, ckpt, "--data", tmp_path / "no-data", "--out", "/sys/sslcli-test-out"])
    assert code == 2 and "--out /sys/sslcli-test-out" in err and "no-data" not in err, err


# ------------------------------------------------------------------------------------------- 8: JSON on failure
def test_runtime_failures_print_a_json_error_object_too(capsys):
    import typer

    from sslcli.cli.common import Output, run_guarded
    from sslcli.errors import SslcliError

    def fails(exc):
        def fn():
            raise exc
        return fn

    for exc, code in ((SslcliError("store.h5: disk full"), 1), (RuntimeError("boom\nsecond line"), 1),
                      (PermissionError(13, "Permission denied", "/data/out"), 1)):
        with pytest.raises(typer.Exit) as info:
            run_guarded(fails(exc), Output(json=True))
        captured = capsys.readouterr()
        report = json.loads(captured.out)
        assert info.value.exit_code == code and report["exit_code"] == code
        assert len(captured.err.strip().splitlines()) == 1 and "\n" not in report["error"]
    assert report["error"] == "/data/out: Permission denied"


# --------------------------------------------------------------------- 11, 12, 15: probes on the real tiny-COCO
def test_quiet_silences_progress_but_prints_the_result(cli, coco_data, tiny_checkpoint, tmp_path):
    common = ["probe", "knn", tiny_checkpoint, "--data", coco_data, "--image-size", "32", "--k", "5",
              "--cache", tmp_path / "cache"]
    code, out, err = cli([*common, "-q"])
    assert code == 0 and err == ""
    assert "probe: knn" in out and "mAP" in out
    # 15: without -q the cache folder is announced, once (train and test features both use it)
    code, out, err = cli(common)
    assert code == 0 and err.count("feature cache: ") == 1 and str(tmp_path / "cache") in err


def test_probes_refuse_evaluation_images_that_are_training_images(cli, coco_data, tiny_checkpoint, tmp_path):
    common = ["--data", coco_data, "--image-size", "32", "--no-cache", "--json"]
    code, out, err = cli(["probe", "knn", tiny_checkpoint, *common, "--test-split", "train2017", "--k", "5"])
    assert code == 2 and "evaluation images are also training images" in err and "--allow-overlap" in err
    assert json.loads(out)["exit_code"] == 2
    code, out, err = cli(["probe", "segment-retrieval", tiny_checkpoint, *common, "--test-split", "train2017"])
    assert code == 2 and "training images" in err


def test_probes_find_copies_by_content_and_warn_with_allow_overlap(cli, coco_data, tiny_checkpoint, tmp_path):
    # A val split whose first 3 images are byte copies of training images under new names.
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copytree(coco_data / "train2017", root / "train2017")
    shutil.copy(coco_data / "annotations" / "instances_train2017.json", root / "annotations")
    val = json.loads((coco_data / "annotations" / "instances_val2017.json").read_text())
    train = json.loads((coco_data / "annotations" / "instances_train2017.json").read_text())
    (root / "val2017").mkdir()
    for image in val["images"]:
        shutil.copy(coco_data / "val2017" / image["file_name"], root / "val2017" / image["file_name"])
    for image, source in zip(val["images"][:3], train["images"][:3]):
        shutil.copy(coco_data / "train2017" / source["file_name"], root / "val2017" / image["file_name"])
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(val))
    common = ["probe", "knn", tiny_checkpoint, "--data", root, "--image-size", "32", "--no-cache", "--k", "5",
              "--json"]
    code, _, err = cli(common)
    assert code == 2 and "3 of the" in err and "same bytes as" in err
    code, out, err = cli([*common, "--allow-overlap"])
    assert code == 0 and "OVERLAP" in err and json.loads(out)["overlapping_images"] == 3


def test_disjoint_splits_pass_the_overlap_check(tmp_path):
    import cv2
    import numpy as np

    from sslcli.eval.overlap import overlapping_images

    a, b, c = (tmp_path / n for n in ("a.bmp", "b.bmp", "c.bmp"))
    cv2.imwrite(str(a), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(b), np.ones((4, 4, 3), np.uint8))  # same size as a (BMP), other bytes: hashed, not matched
    c.write_bytes(a.read_bytes())  # same bytes as a
    assert overlapping_images([a], [b]) == []
    assert overlapping_images([a], [c, b]) == [(c, a)]
    assert a.stat().st_size == b.stat().st_size
    assert overlapping_images([a], [tmp_path / "." / "a.bmp"]) == [(tmp_path / "a.bmp", a)]


# ---------------------------------------------------------------------- 14: resume with the root written otherwise
def test_resume_accepts_the_data_root_written_another_way(images, tmp_path, toy_method, monkeypatch):
    launch(parse_spec(toy.spec_dict(images, tmp_path / "run", epochs=2, max_steps=2)))
    monkeypatch.chdir(images.parent)
    relative = parse_spec(toy.spec_dict(Path("images/"), tmp_path / "run", epochs=2))
    assert launch(relative, resume="auto")["steps"] == 4
    other = tmp_path / "other"
    toy.write_images(other, n=20, seed=1)
    from sslcli.errors import InputError

    with pytest.raises(InputError, match=r"differs in data\.root"):
        launch(parse_spec(toy.spec_dict(other, tmp_path / "run", epochs=3)), resume="auto")


# ------------------------------------------------------------------------------- 15: O-KNN labels do not overlap
def test_oknn_plot_labels_do_not_overlap_with_seven_checkpoints(tmp_path):
    from sslcli.analysis.plots import plot_oknn

    labels = [f"moco-v2-mc-cc-m-aplus/epoch_{e:04d}" for e in (10, 20, 50, 100)] + \
             ["detcon-b_r50_coco", "soco_r50c4_coco", "d3ssl-decoupling-only"]
    results = {label: {"clean": {"top1": 40.0, "top5": 70.0}} for label in labels}
    fig = plot_oknn(results, tmp_path / "oknn.png")
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels()]
    assert len(boxes) == 7
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (labels[i], labels[j])
