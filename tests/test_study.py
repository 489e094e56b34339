"""`sslcli study`: validation before training, the expectation rules, export --random-init, and the tiny study end
to end (determinism across two independent runs, kill -9 during the second arm then a rerun that skips the first)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sslcli.study.spec import load_study

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "studies" / "tiny.yaml"

BASE = {"spec_version": 1, "name": "t",
        "data": {"root": "{out}/data", "format": "coco", "image_size": 32, "workers": 0},
        "model": {"arch": "resnet18", "width": 8},
        "method": {"name": "moco", "queue_size": 64, "dim": 32, "hidden_dim": 64},
        "batch_size": 16, "epochs": 1, "max_steps": 2}


def _study(**changes) -> dict:
    study = {"name": "v", "base": BASE, "arms": {"a": {}, "b": {"method.temperature": 0.1}}, "seeds": [0, 1],
             "evaluate": [{"kind": "coupling", "options": {"data": "{out}/data", "pairs": 4}}],
             "expect": [{"metric": "coupling.res5.mean", "lower": "a", "than": "b"}]}
    study.update(changes)
    return study


# ------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("changes, needles", [
    ({"armz": {}}, ["armz", "unknown key"]),
    ({"arms": {"a": {}, "mc": {"method.multi_crop.enabledd": True}}}, ["arms.mc", "method.multi_crop.enabledd"]),
    ({"arms": {"a": {}, "b": {"epochs": 0}}}, ["arms.b", "epochs"]),
    ({"expect": [{"metric": "coupling.res5.mean", "lower": "nosuch", "than": "b"}]}, ["expect.0.lower", "nosuch"]),
    ({"expect": [{"metric": "coupling.res5.mean", "lower": "a", "than": "random-init"}]},
     ["expect.0.than", "random-init"]),
    ({"expect": [{"metric": "oknn.clean.top1", "higher": "a", "than": "b"}]}, ["expect.0.metric", "oknn.clean.top1"]),
    ({"expect": [{"metric": "coupling.res5.nonsense", "higher": "a", "than": "b"}]},
     ["expect.0.metric", "coupling.res5.nonsense"]),
    ({"expect": [{"metric": "coupling.res5.mean", "than": "b"}]}, ["expect.0", "exactly one of"]),
    ({"evaluate": [{"kind": "coupling", "options": {"data": "x", "pairz": 3}}]}, ["evaluate.0.options", "pairz"]),
    ({"evaluate": [{"kind": "coupling", "options": {"data": "x", "out": "y"}}]}, ["evaluate.0.options", "out"]),
    ({"evaluate": [{"kind": "knn2"}]}, ["evaluate.0.kind"]),
    ({"seeds": []}, ["seeds"]),
])
def test_bad_study_is_refused_before_training(cli, tmp_path, changes, needles):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(**changes)))
    code, _, err = cli(["study", "run", path, "--out", tmp_path / "out"])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize(("args", "needle"), [(["--jobs", "2", "--gpus", "2"], "--jobs 2 with --gpus 2"),
                                              (["--jobs", "0"], "--jobs")])
def test_bad_jobs_is_one_line_and_writes_nothing(cli, tmp_path, args, needle):
    code, _, err = cli(["study", "run", TINY, "--out", tmp_path / "out", *args])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "out").exists()


def test_base_path_is_relative_to_the_study_file(cli, tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(base="specs/base.yaml")))
    code, out, err = cli(["study", "run", path, "--out", tmp_path / "out", "--dry-run", "--json"])
    assert code == 0, err
    plan = json.loads(out)
    assert [(r["arm"], r["seed"]) for r in plan["runs"]] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    hashes = {r["hash"] for r in plan["runs"]}
    assert len(hashes) == 4
    b0 = next(r for r in plan["runs"] if r["arm"] == "b" and r["seed"] == 0)
    assert b0["spec"]["method"]["temperature"] == 0.1 and b0["spec"]["seed"] == 0
    assert b0["spec"]["data"]["root"] == str((tmp_path / "out").resolve() / "data")
    assert b0["spec"]["output_dir"].endswith(f"runs/{b0['hash']}")
    # The hash does not depend on where the study folder is.
    code, out2, _ = cli(["study", "run", path, "--out", tmp_path / "elsewhere", "--dry-run", "--json"])
    assert {r["hash"] for r in json.loads(out2)["runs"]} == hashes


def test_paper_studies_validate(cli):
    for name in ("revisiting-table4", "detcon", "d3ssl"):
        code, out, err = cli(["study", "run", REPO / "studies" / f"{name}.yaml", "--dry-run", "--json",
                              "--out", "/nonexistent/study-out"])
        assert code == 0, (name, err)
        plan = json.loads(out)
        assert plan["estimate"]["gpu_hours"] > 0 and plan["expect"], name
        assert all(e.get("paper") for e in plan["expect"]), name


# ------------------------------------------------------------------------------------------- expectation rules
def test_removed_all_seeds_rule_is_refused_in_one_line(cli, tmp_path):
    path = tmp_path / "study.yaml"
    study = _study(expect=[{"metric": "coupling.res5.mean", "lower": "a", "than": "b", "rule": "all-seeds"}])
    path.write_text(yaml.safe_dump(study))
    code, out, err = cli(["study", "run", str(path), "--dry-run", "--out", str(tmp_path / "o")])
    assert code == 2 and "expect.0" in err and "all-seeds" in err and "paired-t" in err
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------- export --random-init
def test_export_random_init_equals_the_engines_initial_backbone(cli, tmp_path):
    from sslcli.backbone_checkpoints import load_backbone
    from sslcli.engine.trainer import Trainer
    from sslcli.spec import parse_spec

    spec_data = {**BASE, "data": {"root": str(tmp_path), "format": "coco", "image_size": 32}, "seed": 3}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data))
    code, _, err = cli(["export", "--random-init", spec_path, "--out", tmp_path / "r.pt"])
    assert code == 0, err
    loaded, report = load_backbone(tmp_path / "r.pt")
    assert (report.arch, report.width) == ("resnet18", 8)
    engine = Trainer(parse_spec(spec_data), torch.device("cpu")).method.backbone().state_dict()
    got = loaded.state_dict()
    assert set(got) == set(engine)
    assert all(torch.equal(got[k], engine[k]) for k in engine)
    code, _, err = cli(["export", "--random-init", spec_path, "--seed", "4", "--out", tmp_path / "r4.pt"])
    assert code == 0, err
    other = load_backbone(tmp_path / "r4.pt")[0].state_dict()
    assert not torch.equal(other["conv1.weight"], got["conv1.weight"])


# ------------------------------------------------------------------------------------------------- end to end
def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _study_run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sslcli", "study", "run", str(TINY), "--out", str(out), *extra],
                          capture_output=True, text=True, env=_env(), timeout=600)


def _values(out: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [(r["arm"], r["seed"], r["metric"], r["value"], r["spec_hash"]) for r in rows]


def _plan(out: Path) -> dict:
    return json.loads((out / "study.json").read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_study_deterministic_resumable_and_reported(tmp_path):
    first = tmp_path / "first"
    proc = _study_run(first)
    assert proc.returncode == 0, proc.stderr[-2000:]
    values = _values(first)
    arms = {v[0] for v in values}
    assert arms == {"moco", "simclr", "random-init"}
    metrics = {v[2] for v in values}
    assert {"coupling.res5.mean", "positional.res2.mean"} <= metrics
    assert all(v[3] is not None for v in values if v[2].endswith(".mean"))
    # One row per arm x seed x metric.
    assert len(values) == len({v[:3] for v in values}) == 3 * 2 * len(metrics)
    md = (first / "report.md").read_text()
    page = (first / "report.html").read_text()
    for text in (md, page):
        assert "coupling.{layer}.mean" in text and "positional.{layer}.mean" in text
        assert any(word in text for word in ("HOLDS", "DOES NOT HOLD", "INCONCLUSIVE"))
        assert "random-init" in text and "sslcli pretrain" in text and "torch" in text
    assert "<table>" in page and "| arm |" in md
    pngs = sorted(p.name for p in (first / "plots").glob("*.png"))
    assert "training-loss.png" in pngs and "coupling.layers.mean.png" in pngs
    assert all((first / "plots" / p).stat().st_size > 1000 for p in pngs)

    # A rerun in the same folder trains and evaluates nothing.
    again = _study_run(first)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "training (" not in again.stderr and again.stderr.count("skipped (done)") >= 6 + 12
    assert _values(first) == values

    # An independent run, killed (kill -9, whole process group) once the first arm is trained.
    second = tmp_path / "second"
    runs = {(r.arm, r.seed): Path(r.spec.output_dir) for r in load_study(TINY, second).runs}
    first_arm = [runs[("moco", 0)], runs[("moco", 1)]]
    proc2 = subprocess.Popen([sys.executable, "-m", "sslcli", "study", "run", str(TINY), "--out", str(second)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not all((d / "study-run.json").is_file() for d in first_arm):
            assert proc2.poll() is None, "study run ended before the first arm was trained"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.killpg(proc2.pid, signal.SIGKILL)
        proc2.wait()
    finally:
        if proc2.poll() is None:
            os.killpg(proc2.pid, signal.SIGKILL)
    assert not (runs[("simclr", 1)] / "study-run.json").exists()  # killed during the second arm
    before = {d: ((d / "last.pt").stat().st_mtime_ns, _sha(d / "last.pt")) for d in first_arm}
    rerun = _study_run(second, "--jobs", "2")  # the rest in parallel: same values as one at a time
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for seed, d in enumerate(first_arm):
        assert ((d / "last.pt").stat().st_mtime_ns, _sha(d / "last.pt")) == before[d]
        assert f"moco seed {seed} ({d.name}): skipped (done)" in rerun.stderr
    assert "simclr seed 1" in rerun.stderr and "training (simclr" in rerun.stderr
    # Same study, same CPU: identical metric values and spec hashes, killed and resumed or not.
    assert _values(second) == values


def test_paper_study_arms_are_the_example_specs(tmp_path):
    """The paper studies reuse the example specs: each arm resolves to its examples/*.yaml (up to name, seed and
    output folder), so a study row and a single `sslcli pretrain examples/...` run train the same thing."""
    from sslcli.spec import load_spec

    same = {"revisiting-table4": {"moco": "moco-v2", "mc": "moco-v2-mc", "mc-cc": "moco-v2-mc-cc",
                                  "mc-cc-m": "moco-v2-mc-cc-m", "mc-cc-m-aplus": "moco-v2-mc-cc-m-aplus",
                                  "mc-cc-m-aplus-nn": "moco-v2-mc-cc-m-aplus-nn"},
            "detcon": {"simclr": "simclr", "detcon-s-fh": "detcon-s", "detcon-b": "detcon-b"}}
    for study_name, arms in same.items():
        study = load_study(REPO / "studies" / f"{study_name}.yaml", tmp_path / study_name)
        for arm, example in arms.items():
            run = next(r for r in study.runs if r.arm == arm and r.seed == 0)
            want = load_spec(REPO / "examples" / f"{example}_r50_b256_200ep_coco.yaml").model_dump(mode="json")
            got = run.spec.model_dump(mode="json")
            for spec in (want, got):
                for key in ("name", "output_dir", "seed"):
                    spec.pop(key)
            assert got == want, (study_name, arm)


def test_report_tables_verdicts_and_plots_from_hand_made_results(tmp_path):
    from sslcli.study.report import write_report

    plan = {"study": "fake", "file": "studies/fake.yaml", "out": ".", "arms": ["a", "b", "random-init"],
            "seeds": [0, 1, 2, 3, 4], "runs": [], "prepare": [], "evaluate": [],
            "expect": [{"metric": "knn.k.20.top1", "higher": "a", "than": "b", "paper": {"a": 71.5, "b": 70.0}},
                       {"metric": "knn.k.20.top5", "higher": "a", "than": "b", "paper": "a <b> | c"}]}
    (tmp_path / "study.json").write_text(json.dumps(plan))
    (tmp_path / "provenance.json").write_text(json.dumps({"commands": ["sslcli pretrain specs/x.yaml"], "losses": [
        {"arm": "a", "seed": s, "steps": [1, 2, 3], "losses": [3.0, 2.5, 2.0]} for s in range(5)]}))
    top1 = {"a": (10.0, 12.0, 14.0, 11.0, 13.0), "b": (5.0, 6.0, 7.0, 5.0, 7.0), "random-init": (1.0,) * 5}
    top5 = {"a": (50.2, 50.4, 50.1, 50.3, 50.5), "b": (50.0,) * 5, "random-init": (20.0,) * 5}
    rows = []
    for arm in plan["arms"]:
        cr = {"a": (1.0, 1.1, 1.2, 1.1, 1.1), "b": (1.3,) * 5, "random-init": (1.0,) * 5}[arm]
        for seed in range(5):
            rows += [{"arm": arm, "seed": seed, "metric": "knn.k.20.top1", "value": top1[arm][seed],
                      "train_wall_s": 100.0 * (seed + 1) if arm == "a" else None, "eval_hash": "e1",
                      "eval_wall_s": 2.0},
                     {"arm": arm, "seed": seed, "metric": "knn.k.20.top1_se", "value": {"a": 3.0, "b": 4.0}.get(arm, 0.5)},
                     {"arm": arm, "seed": seed, "metric": "knn.k.20.top5", "value": top5[arm][seed]},
                     {"arm": arm, "seed": seed, "metric": "knn.k.20.top5_se", "value": 1.0},
                     {"arm": arm, "seed": seed, "metric": "segment-retrieval.per_class_iou.red-disc", "value": 50.0}]
            for layer in ("res2", "res5"):
                rows.append({"arm": arm, "seed": seed, "metric": f"coupling.{layer}.mean", "value": cr[seed]})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    # a: mean 12, sample std sqrt(10 / 4); b: mean 6, std 1; each with the mean of its probe SE rows.
    assert f"| a | 12 | {math.sqrt(2.5):.4g} | 5 | 3 | 10 | 12 | 14 | 11 | 13 |" in md
    assert "| b | 6 | 1 | 5 | 4 | 5 | 6 | 7 | 5 | 7 |" in md
    # top-1 differences 5, 6, 7, 6, 6: mean 6, sd sqrt(1 / 2), t = 6 / (sqrt(1 / 2) / sqrt 5) = 6 sqrt 10 with 4
    # degrees of freedom, whose two-sided p is 1 - (3/2) x (1 - x^2 / 3) for x = t / sqrt(t^2 + 4).
    t = 6 * math.sqrt(10)
    x = t / math.sqrt(t * t + 4)
    p1 = 1 - 1.5 * x * (1 - x * x / 3)
    first, second = result["expectations"]
    assert first["p_value"] == pytest.approx(p1, rel=1e-6) and first["verdict"] == "holds"
    # top-5 differences .2 .4 .1 .3 .5: Holm over 2 tests gives max(2 p1, p2) to the larger p.
    x2 = 0.3 / (math.sqrt(0.025) / math.sqrt(5))
    x2 = x2 / math.sqrt(x2 * x2 + 4)
    p2 = 1 - 1.5 * x2 * (1 - x2 * x2 / 3)
    assert second["p_holm"] == pytest.approx(max(2 * p1, p2), rel=1e-6) and second["verdict"] == "holds"
    # The probe's own noise: sqrt(1 + 1) = 1.414 is larger than the 0.3 difference, so the report says so.
    assert second["probe_se"] == pytest.approx(math.sqrt(2)) and second["below_probe_se"]
    assert first["probe_se"] == pytest.approx(5.0) and not first["below_probe_se"]
    summary = md.split("## Summary")[1].split("## Expectations")[0]
    assert "2 of 2 expectations hold" in summary and "a scores higher than b on knn.k.20.top1" in summary
    assert "smaller than the probe's own standard error (1.414)" in summary
    assert "HOLDS" in md and "a: 71.5; b: 70" in md and "a \\<b\\> \\| c" in md  # user text escaped
    assert str(tmp_path) not in md and "studies/fake.yaml" in md and "sslcli pretrain specs/x.yaml" in md
    # Per-layer metrics side by side: a's res5 mean 1.1 with std 0.0707.
    assert "| arm | res2 | res5 |" in md and "1.1 ± 0.07071 (n=5)" in md
    for png in ("knn.k.20.top1.png", "coupling.layers.mean.png", "training-loss.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000
    assert not (tmp_path / "plots" / "knn.k.20.top1_se.png").exists()  # SE rows are a column, not a metric
    assert 'src="plots/knn.k.20.top1.png"' in (tmp_path / "report.html").read_text()
    # Per-class breakdowns: one table with a row per class, no plot per class.
    assert "| per_class_iou | a | b | random-init |" in md and "| red-disc | 50 ± 0 (n=5) |" in md
    assert not list((tmp_path / "plots").glob("*per_class*"))
    # Cost: a's five runs took 100 ... 500 s (mean 300); 15 evaluations of 2 s, each counted once.
    assert "| a | 5 | 300 | 100 | 500 |" in md and "Training 1500 s and evaluation 30 s" in md
    assert "| b |" not in md.split("## Cost")[1].split("## Commands")[0]  # no training time recorded for b


def test_seed_token_gives_each_seed_its_own_data(tmp_path):
    from sslcli.study.spec import prepare_commands, relative_to

    path = tmp_path / "study.yaml"
    study = _study(prepare=["synthetic {out}/data-{seed} --seed {seed}", "inspect {out}/x"],
                   base={**BASE, "data": {**BASE["data"], "root": "{out}/data-{seed}"}})
    path.write_text(yaml.safe_dump(study))
    loaded = load_study(path, tmp_path / "o")
    roots = {(r.arm, r.seed): r.spec.data.root for r in loaded.runs}
    assert roots[("a", 0)] == roots[("b", 0)] == str(tmp_path / "o" / "data-0")
    assert roots[("a", 1)] == str(tmp_path / "o" / "data-1")
    # A step naming {seed} runs once per seed (its own done-marker each); the others once.
    steps = prepare_commands(loaded.file.prepare, loaded.file.seeds)
    assert [(s.seed, s.args("/s")) for s in steps] == [
        (0, ["synthetic", "/s/data-0", "--seed", "0"]), (1, ["synthetic", "/s/data-1", "--seed", "1"]),
        (None, ["inspect", "/s/x"])]
    assert len({s.marker for s in steps}) == 3
    # study.json keeps paths relative to the study folder; a sibling folder whose name starts the same is not touched.
    out = str(tmp_path / "o")
    assert relative_to({"a": [f"{out}/runs/x", out, f"{out}2/y"]}, out) == {"a": ["runs/x", ".", f"{out}2/y"]}
