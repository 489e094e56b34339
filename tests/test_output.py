"""What a researcher reads (issue 26, items 9-12): tables instead of truncated JSON, runs named by their folder,
and the warnings and JSON keys that say when a result is not what it seems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sslcli.data.scenes.synthetic import generate
from sslcli.models.backbone import STAGES, build_backbone


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes") / "data"
    generate(root, n_train=12, n_val=12, seed=0, size=64)
    return root


def _backbone_file(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_backbone("resnet18", width=8).state_dict(), path)
    return path


# ------------------------------------------------------------------------------------------ item 9: readable output
def test_analyze_prints_one_row_per_run_with_the_json_numbers(cli, scenes, tmp_path):
    """Two runs' last.pt and a study run folder (named by a hash; its marker names arm and seed): the human output
    is a table with one row per run, labelled by the run, holding the numbers the JSON file holds."""
    moco = _backbone_file(tmp_path / "runs" / "moco" / "last.pt", 0)
    simclr = _backbone_file(tmp_path / "runs" / "simclr" / "last.pt", 1)
    study_run = _backbone_file(tmp_path / "study" / "runs" / "3f9a0c" / "last.pt", 2)
    (study_run.parent / "study-run.json").write_text(json.dumps({"arm": "detcon", "seed": 1, "hash": "3f9a0c"}))
    out = tmp_path / "out"
    code, stdout, stderr = cli(["analyze", "positional", moco, simclr, study_run, "--data", scenes, "--split",
                                "train2017", "--objects", "3", "--tile", "16", "--min-size", "4", "--out", out,
                                "--quiet"])
    assert code == 0, stderr
    written = json.loads((out / "positional.json").read_text())
    assert [e["label"] for e in written["checkpoints"]] == ["moco", "simclr", "detcon seed 1"]
    assert "..." not in stdout and '{"label"' not in stdout  # no JSON cut mid-way
    assert "res2" in stdout and "res5" in stdout
    rows = {line.split()[0]: line for line in stdout.splitlines() if line.split()[:1] in (["moco"], ["simclr"])}
    for entry in written["checkpoints"][:2]:
        for stage in STAGES:
            stats = entry["layers"][stage]
            assert f"{stats['mean']:.4f} ± {stats['std']:.4f}" in rows[entry["label"]]
    assert any(line.strip().startswith("detcon seed 1 ") for line in stdout.splitlines())
    assert str(out / "positional.json") in stdout


def test_oknn_and_grouped_coupling_tables_from_hand_made_results():
    from sslcli.cli import render

    layers = {s: {"mean": 1.0 + i / 100, "std": 0.5, "n": 7} for i, s in enumerate(STAGES)}
    coupling = {"analysis": "coupling", "checkpoints": [
        {"label": "soco", "layers": layers, "groups": {"planted": {"pairs": 7, "layers": layers}}}]}
    text = render.analysis(coupling)
    assert "1.0300 ± 0.5000" in text and "soco (planted)" in text
    oknn = {"analysis": "oknn", "settings": {"k": 20, "classes": 10, "split": "val2017", "train_split": "train2017"},
            "checkpoints": [{"label": "moco", "clean": {"top1": 12.345, "top5": 55.0},
                             "disturbed": {"top1": 9.0, "top5": 40.5}}]}
    text = render.analysis(oknn)
    header = next(line for line in text.splitlines() if "clean top-1" in line)
    assert header.split() == ["run", "clean", "top-1", "clean", "top-5", "disturbed", "top-1", "disturbed", "top-5"]
    assert next(line for line in text.splitlines() if line.strip().startswith("moco")).split() == [
        "moco", "12.35", "55.00", "9.00", "40.50"]


def test_long_nested_values_are_counted_not_cut():
    from sslcli.cli.render import key_values

    text = key_values({"grid": [[float(c), 0.5] for c in range(40)], "C": 0.1, "small": {"a": 1},
                       "big": {f"k{i}": "x" * 20 for i in range(12)}})
    assert "grid: (40 items; --json shows them)" in text and "C: 0.1" in text and 'small: {"a": 1}' in text
    assert "big:\n  k0: " + "x" * 20 in text and "..." not in text


def _fake_report(folder: Path) -> dict:
    return {"markdown": str(folder / "report.md"), "html": str(folder / "report.html"), "tables": 2,
            "expectations": [
                {"metric": "coupling.res5.mean", "arm": "moco", "direction": "lower", "than": "random-init",
                 "verdict": "holds", "rule": "all-seeds", "p_value": None, "a_key_added_later": [1, 2]},
                {"metric": "positional.res5.mean", "arm": "simclr", "direction": "higher", "than": "moco",
                 "verdict": "inconclusive"}]}


def test_study_run_prints_a_summary_with_one_verdict_per_expectation(cli, tmp_path, monkeypatch):
    """The summary printed after `study run` (the study itself is replaced: its training is tested elsewhere)."""
    import sslcli.study.report
    import sslcli.study.runner

    out = tmp_path / "tiny-study"
    summary = {"out": str(out), "results": str(out / "results.jsonl"), "rows": 96, "prepared": 1, "trained": 6,
               "evaluated": 12, "skipped": 0}
    monkeypatch.setattr(sslcli.study.runner, "run_study", lambda *a, **k: dict(summary))
    monkeypatch.setattr(sslcli.study.report, "write_report", _fake_report)
    study = Path(__file__).resolve().parents[1] / "studies" / "tiny.yaml"
    code, stdout, stderr = cli(["study", "run", study, "--out", out])
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert "done now: 1 prepare step(s), 6 run(s) trained, 12 evaluation(s); 0 step(s) skipped" in stdout
    assert f"results: {out / 'results.jsonl'} (96 rows)" in lines
    assert f"report: {out / 'report.md'}, {out / 'report.html'}" in lines
    assert "  HOLDS         coupling.res5.mean: moco lower than random-init" in lines
    assert "  INCONCLUSIVE  positional.res5.mean: simclr higher than moco" in lines
    code, stdout, _ = cli(["study", "run", study, "--out", out, "--json"])
    assert code == 0 and json.loads(stdout)["report"]["expectations"][0]["a_key_added_later"] == [1, 2]


# ----------------------------------------------------------------------------- item 10: max_steps is the run's length
def test_max_steps_past_the_epochs_trains_every_step_on_a_schedule_that_spans_them(images, tmp_path, cli):
    """20 images, batch 8: 2 steps an epoch, so epochs 1 is 2 steps; max_steps 5 must train 5 steps (3 epochs) with
    the cosine reaching its end at step 5, and say so."""
    import math

    import engine_toy as toy
    import yaml

    spec = toy.spec_dict(images, tmp_path / "run", epochs=1, max_steps=5,
                         schedule={"name": "cosine", "warmup_epochs": 0, "per_step": True})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    code, stdout, stderr = cli(["pretrain", path, "--json"])
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["steps"] == 5 and result["epochs"] == 2.5
    assert "max_steps 5 is more than epochs x steps per epoch (1 x 2 = 2): the run trains 5 steps (3 epochs)" in stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r.get("type") == "step"]
    peak = 0.4 * 8 / 256  # base_lr x batch / 256
    # Step s (0-based) of a 5-step cosine from peak to 0: peak (1 + cos(pi s / 5)) / 2.
    assert lrs == pytest.approx([peak * (1 + math.cos(math.pi * s / 5)) / 2 for s in range(5)])


def test_the_study_runner_and_the_trainer_agree_on_the_stop_step(tmp_path):
    """A last.pt at step 2 of a run whose max_steps is 5 (2 steps an epoch, epochs 1) is not finished: the study
    resumes it, as the trainer would train on; at step 5 it is finished."""
    import engine_toy as toy

    from sslcli.spec import parse_spec
    from sslcli.study.runner import _finished_steps
    from sslcli.study.spec import PlannedRun

    spec = parse_spec(toy.spec_dict(tmp_path / "images", tmp_path / "run", epochs=1, max_steps=5))
    run = PlannedRun("a", 0, spec, "hash")
    (tmp_path / "run").mkdir()
    for step, finished in ((2, None), (5, 5)):
        torch.save({"step": step, "steps_per_epoch": 2}, tmp_path / "run" / "last.pt")
        assert _finished_steps(run) == finished
    assert spec.stop_step(2) == 5 and spec.schedule_steps(2) == 5
    early = parse_spec(toy.spec_dict(tmp_path / "images", tmp_path / "run", epochs=4, max_steps=5))
    assert early.stop_step(2) == 5 and early.schedule_steps(2) == 8  # an early stop keeps the epochs' schedule


# ------------------------------------------------------------------------ item 11: prepare uses the cores it may use
def test_prepare_defaults_to_one_worker_per_available_core_and_reports_images_per_s(cli, tmp_path, monkeypatch):
    import cv2
    import numpy as np

    import sslcli.proposals.runner

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    monkeypatch.setattr(sslcli.proposals.runner, "available_cores", lambda: 2)  # as on a 2-core machine
    code, stdout, stderr = cli(["prepare", "masks", folder, "--method", "grid", "--grid", "2", "--out",
                                tmp_path / "grid.h5", "--json"])
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["workers"] == 2 and result["computed_images"] == 4 and result["images_per_s"] > 0
    assert "to compute with 2 worker(s)" in stderr
    assert "prepare masks (grid): 4/4 (" in stderr and " images/s)" in stderr
    # More cores than images to compute: no idle worker processes are started.
    monkeypatch.setattr(sslcli.proposals.runner, "available_cores", lambda: 64)
    for i in range(1, 4):
        (folder / f"{i}.png").unlink()
    code, stdout, stderr = cli(["prepare", "masks", folder, "--method", "grid", "--grid", "3", "--out",
                                tmp_path / "grid3.h5", "--json"])
    assert code == 0 and json.loads(stdout)["workers"] == 1


def test_the_cores_are_the_process_affinity():
    import os

    from sslcli.engine import threads
    from sslcli.process import available_cores

    assert available_cores() == len(os.sched_getaffinity(0))
    assert threads.available_cores is available_cores  # training threads and prepare workers: one rule


# ------------------------------------------------------------------------------ item 12: say what a result hides
def test_linear_probe_warns_and_records_a_C_at_the_edge_of_its_grid(capsys):
    import numpy as np

    from sslcli.eval.linear import _warn_at_edge, linear_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    y = (x[:, 0] > 0).astype(np.int64)
    # A grid of two values: whichever C is chosen is at an edge.
    result = linear_probe(x[:30], y[:30], x[30:], y[30:], 2, False, n_grid=2, search_max_iter=20, max_iter=50)
    assert result["C"] in (1e-5, 1e5) and result["C_at_grid_edge"] is True
    side = "smallest" if result["C"] == 1e-5 else "largest"
    assert (f"warning: linear probe: the chosen C {result['C']:g} is the {side} of the grid [1e-05, 100000] "
            "(2 values)") in capsys.readouterr().err
    assert _warn_at_edge(1.0, [0.1, 1.0, 10.0]) is False and _warn_at_edge(1.0, [1.0]) is False
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("to", ["torchvision", "detectron2"])
def test_export_of_a_narrow_resnet_says_it_will_not_load_into_the_stock_model(cli, tmp_path, to):
    import torchvision

    checkpoint = _backbone_file(tmp_path / "narrow.pth", 0)  # resnet18, width 8
    out = tmp_path / ("narrow.pth" if to == "torchvision" else "narrow.pkl")
    code, stdout, stderr = cli(["export", checkpoint, "--to", to, "--out", out, "--json"])
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["stock_model_loads"] is False and "width 8" in result["stock_model_note"]
    assert f"warning: {out}: resnet18 of width 8 will not load into" in stderr
    if to == "torchvision":
        assert "torchvision.models.resnet18()" in stderr
        state = torch.load(out, weights_only=True)
        for strict in (True, False):  # shapes differ: refused either way
            with pytest.raises(RuntimeError, match="size mismatch"):
                torchvision.models.resnet18().load_state_dict(state, strict=strict)
        build_backbone("resnet18", width=8).load_state_dict(state)  # what the warning says to do instead
    else:
        assert "STEM_OUT_CHANNELS 8 and RES2_OUT_CHANNELS 8" in stderr


def test_export_of_a_standard_resnet_loads_into_the_stock_model(cli, tmp_path):
    import torchvision

    torch.manual_seed(0)
    checkpoint = tmp_path / "r18.pth"
    torch.save(build_backbone("resnet18", width=64).state_dict(), checkpoint)
    code, stdout, stderr = cli(["export", checkpoint, "--out", tmp_path / "out.pth", "--json"])
    assert code == 0 and "warning" not in stderr
    result = json.loads(stdout)
    assert result["stock_model_loads"] is True and result["stock_model_note"] is None
    missing = torchvision.models.resnet18().load_state_dict(torch.load(tmp_path / "out.pth", weights_only=True),
                                                            strict=False)
    assert sorted(missing.missing_keys) == ["fc.bias", "fc.weight"] and missing.unexpected_keys == []


def test_probe_json_lists_the_skipped_images_with_the_reason(cli, tmp_path):
    root = tmp_path / "data"
    generate(root, n_train=8, n_val=6, seed=0, size=64)
    broken = sorted((root / "val2017").iterdir())[2]
    broken.write_bytes(b"not an image")
    checkpoint = _backbone_file(tmp_path / "net.pth", 0)
    for probe in (["knn", "--k", "3"], ["segment-retrieval", "--clusters", "3"]):
        code, stdout, stderr = cli(["probe", *probe, checkpoint, "--data", root, "--image-size", "32", "--no-cache",
                                    "--json"])
        assert code == 0, stderr
        skipped = json.loads(stdout)["skipped_images"]
        assert [(s["split"], s["path"]) for s in skipped] == [("val2017", str(broken))], probe
        assert skipped[0]["reason"] and "BytesIO" not in skipped[0]["reason"]


def test_dry_run_estimates_cpu_time_from_the_measured_rates(cli, tmp_path):
    """The tiny study's runs (ResNet-18 width 8, 32 px views, 4 steps of batch 16 = 64 images) against the measured
    reference (width 16, 48 px): (32/48)^2 x (8/16)^2 = 1/9 of its cost, so MoCo-v2 runs at 231 x 9 and SimCLR at
    91 x 9 images/s on one core; a BYOL arm has no measured rate."""
    import yaml

    from sslcli.study.estimate import estimate_hours
    from sslcli.study.spec import load_study

    tiny = yaml.safe_load((Path(__file__).resolve().parents[1] / "studies" / "tiny.yaml").read_text())
    tiny["arms"]["byol"] = {"method": {"name": "byol", "dim": 32, "hidden_dim": 64}}
    tiny["expect"] = []
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny))
    est = estimate_hours(load_study(path, tmp_path / "out"))
    moco, simclr = 64 / (231 * 9) / 3600, 64 / (91 * 9) / 3600
    assert est["cpu_per_run"]["moco seed 0"] == pytest.approx(moco, rel=1e-3)
    assert est["cpu_per_run"]["simclr seed 1"] == pytest.approx(simclr, rel=1e-3)
    assert est["cpu_per_run"]["byol seed 0"] is None and est["cpu_unknown"] == ["byol seed 0", "byol seed 1"]
    assert est["cpu_hours"] is None and est["gpu_hours"] > 0  # the GPU estimate has a BYOL rate
    assert "estimate only" in est["cpu_assumption"] and "one CPU core" in est["cpu_assumption"]
    del tiny["arms"]["byol"]
    path.write_text(yaml.safe_dump(tiny))
    est = estimate_hours(load_study(path, tmp_path / "out"))
    assert est["cpu_hours"] == pytest.approx(2 * (moco + simclr), rel=1e-3)
    code, stdout, stderr = cli(["study", "run", path, "--out", tmp_path / "out", "--dry-run"])
    assert code == 0, stderr
    assert "estimated CPU time, all runs: <1 CPU-s (estimate only:" in stdout


def test_the_estimate_counts_the_small_stems_16x_cells(tmp_path):
    """The small stem (stride-1 conv1, no max-pool) feeds every stage 4 x 4 = 16 times the cells: 16x the time."""
    import yaml

    from sslcli.study.estimate import estimate_hours
    from sslcli.study.spec import load_study

    times = {}
    for stem in ("imagenet", "small"):
        tiny = yaml.safe_load((Path(__file__).resolve().parents[1] / "studies" / "tiny.yaml").read_text())
        tiny["base"]["model"]["stem"] = stem
        path = tmp_path / f"{stem}.yaml"
        path.write_text(yaml.safe_dump(tiny))
        times[stem] = estimate_hours(load_study(path, tmp_path / stem))
    for key in ("cpu_per_run", "per_run"):
        assert times["small"][key]["moco seed 0"] == pytest.approx(16 * times["imagenet"][key]["moco seed 0"], rel=1e-3)
