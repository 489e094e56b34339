"""A method from another installed package: registered through the `sslcli.methods` entry point, trained with
`sslcli pretrain`, its fields in `--schema` and its own checks in the spec's errors.

The plugin (tests/plugin/toy_plugin) is installed as a real distribution into a temporary site folder: the package
plus a ``.dist-info`` with METADATA and entry_points.txt, which is what importlib.metadata reads. Every sslcli call
runs in a subprocess with that folder on PYTHONPATH, so the entry point is found the way an installed one is.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sslcli.method_registry import BUILTIN_METHODS

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "plugin" / "toy_plugin"
# The built-in methods in the order they register (the module names end in the method names).
BUILTINS = ", ".join(module.rsplit(".", 1)[1] for module in BUILTIN_METHODS)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(PLUGIN, site / "toy_plugin")
    info = site / "toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sslcli.methods]\ntoy-plugin = toy_plugin:register\n")
    return site


def run(args: list[str], site: Path | None, cwd: Path) -> subprocess.CompletedProcess:
    path = [str(REPO)] + ([str(site)] if site is not None else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory, site) -> Path:
    root = tmp_path_factory.mktemp("data") / "synthetic"
    proc = run(["-m", "sslcli", "prepare", "synthetic", str(root), "--images", "16", "--size", "48", "--quiet"],
               None, root.parent)
    assert proc.returncode == 0, proc.stderr
    return root


def write_spec(folder: Path, data: Path, **method) -> Path:
    spec = {"data": {"root": str(data), "image_size": 32, "workers": 0, "pin_memory": False},
            "model": {"arch": "resnet18", "width": 8},
            "method": {"name": "toy-plugin", "dim": 16, "scale": 5.0, **method},
            "optimizer": {"base_lr": 0.1}, "schedule": {"warmup_epochs": 0},
            "batch_size": 8, "epochs": 1, "max_steps": 2, "output_dir": str(folder / "run"),
            "logging": {"every_steps": 1}}
    path = folder / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def test_plugin_method_trains_through_the_cli(site, data, tmp_path):
    spec = write_spec(tmp_path, data, scale=1.0)
    proc = run(["-m", "sslcli", "pretrain", str(spec), "--json"], site, tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["steps"] == 2
    # Cross-entropy over 8 logits that are cosines (scale 1, so in [-1, 1]): the true one at worst -1 and the 7
    # others +1 gives log(1 + 7e²); at best the reverse, log(1 + 7e⁻²).
    assert math.log(1 + 7 * math.exp(-2)) <= result["final_loss"] <= math.log(1 + 7 * math.exp(2))
    assert (tmp_path / "run" / "last.pt").is_file()


def test_schema_lists_the_plugin_fields(site, tmp_path):
    proc = run(["-m", "sslcli", "pretrain", "--schema"], site, tmp_path)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    plugin = schema["$defs"]["ToyPluginSpec"]
    assert set(plugin["properties"]) == {"name", "dim", "scale"}
    assert plugin["properties"]["scale"]["exclusiveMinimum"] == 0.0
    method = schema["properties"]["method"]
    assert method["discriminator"]["mapping"]["toy-plugin"] == "#/$defs/ToyPluginSpec"
    assert method["discriminator"]["mapping"]["moco"] == "#/$defs/MocoSpec"  # the built-ins are all still there


def test_plugin_spec_errors_name_their_field(site, data, tmp_path):
    spec = write_spec(tmp_path, data, scale=-1.0, bogus=1)
    proc = run(["-m", "sslcli", "pretrain", str(spec), "--dry-run"], site, tmp_path)
    assert proc.returncode == 2
    assert "method.scale: Input should be greater than 0" in proc.stderr
    assert "method.bogus: unknown key" in proc.stderr
    # The plugin's own cross-field check (its registered `problems` hook):
    proc = run(["-m", "sslcli", "pretrain", str(write_spec(tmp_path, data)), "--dry-run", "--set", "batch_size=1"],
               site, tmp_path)
    assert proc.returncode == 2
    assert "batch_size: toy-plugin contrasts the images of a batch; 1 has no negatives" in proc.stderr


def test_unknown_method_without_the_plugin(data, tmp_path):
    proc = run(["-m", "sslcli", "pretrain", str(write_spec(tmp_path, data)), "--dry-run"], None, tmp_path)
    assert proc.returncode == 2
    assert f"method: unknown method 'toy-plugin': expected one of {BUILTINS}" in proc.stderr


def test_validating_a_plugin_spec_imports_no_torch(site, data, tmp_path):
    # ...and a validated spec survives pickling (the launcher sends it to spawned ranks that way).
    code = ("import pickle, sys; from sslcli.spec import load_spec, spec_schema; spec_schema(); "
            f"spec = load_spec({str(write_spec(tmp_path, data))!r}); assert spec.method.scale == 5.0; "
            "assert pickle.loads(pickle.dumps(spec)) == spec; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    proc = run(["-c", code], site, tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_a_broken_or_clashing_plugin_is_named(tmp_path):
    site = tmp_path / "site"
    info = site / "bad_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sslcli.methods]\nbad = no_such_module:register\n")
    proc = run(["-m", "sslcli", "pretrain", "--schema"], site, tmp_path)
    assert proc.returncode == 1
    assert "method plugin 'bad' (no_such_module:register): cannot load (ModuleNotFoundError" in proc.stderr
    # A plugin may not take over a built-in's name (existing specs would train something else).
    (site / "clash.py").write_text("from sslcli.method_registry import register_method\n"
                                   "from sslcli.methods.simclr.spec import SimclrSpec\n"
                                   "def register():\n    register_method('simclr', SimclrSpec, 'clash:Nothing')\n")
    (info / "entry_points.txt").write_text("[sslcli.methods]\nclash = clash:register\n")
    proc = run(["-m", "sslcli", "pretrain", "--schema"], site, tmp_path)
    assert proc.returncode == 1
    assert "method 'simclr': registered already (spec sslcli.methods.simclr.spec.SimclrSpec)" in proc.stderr


# ----------------------------------------------------------------------------- the plugin's facts (registry)
def _estimate(site: Path, data: Path, tmp_path: Path) -> dict:
    """``study run --dry-run --json``'s estimate for a one-arm study of the plugin with a known step count."""
    base = json.loads(write_spec(tmp_path, data).read_text())  # max_steps 2: the step count is known
    study = {"name": "plugin", "base": base, "arms": {"toy": {}}, "seeds": [0]}
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(study))
    proc = run(["-m", "sslcli", "study", "run", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--json"],
               site, tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["estimate"]


def test_study_estimate_uses_the_plugins_own_figure_or_says_unknown(site, data, tmp_path):
    estimate = _estimate(site, data, tmp_path)
    # Its registered 500 img/s (ResNet-50, 224 px, width 64, two views) scaled by the documented rule to this run:
    # two 32 px views, ResNet-18 (1.8 / 4.1 GFLOPs of a ResNet-50), width 8: cost = (2·32²)/(2·224²)·(1.8/4.1)·(8/64)².
    cost = (2 * 32 ** 2) / (2 * 224 ** 2) * (1.8 / 4.1) * (8 / 64) ** 2
    hours = 2 * 8 / (500.0 / cost) / 3600  # 2 steps of batch 8
    assert estimate["per_run"]["toy seed 0"] == pytest.approx(hours, rel=1e-3)
    assert estimate["gpu_unknown"] == [] and "toy-plugin 500" in estimate["assumption"]
    # No measured CPU rate: "unknown", not a KeyError.
    assert estimate["cpu_per_run"]["toy seed 0"] is None and estimate["cpu_unknown"] == ["toy seed 0"]
    assert estimate["cpu_hours"] is None and "toy-plugin not measured" in estimate["cpu_assumption"]


def bare_site(tmp_path: Path) -> Path:
    """The same plugin registered with no facts at all (its package copied, without the dist-info of `site`)."""
    bare = tmp_path / "bare-site"
    shutil.copytree(PLUGIN, bare / "toy_plugin")
    (bare / "bare_toy.py").write_text("from sslcli.method_registry import register_method\n"
                                      "from toy_plugin import ToyPluginSpec, problems\n"
                                      "def register():\n"
                                      "    register_method('toy-plugin', ToyPluginSpec, 'toy_plugin.method:ToyPlugin',"
                                      " problems)\n")
    info = bare / "bare_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bare-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sslcli.methods]\nbare = bare_toy:register\n")
    return bare


def test_a_plugin_without_a_gpu_figure_gets_an_unknown_estimate(data, tmp_path):
    estimate = _estimate(bare_site(tmp_path), data, tmp_path)
    assert estimate["per_run"]["toy seed 0"] is None and estimate["gpu_unknown"] == ["toy seed 0"]
    assert estimate["gpu_hours"] is None and "toy-plugin no assumed figure" in estimate["assumption"]


def test_analyze_crop_iou_samples_the_plugins_crop_pair(site, data, tmp_path):
    spec = write_spec(tmp_path, data)
    proc = run(["-m", "sslcli", "analyze", "crop-iou", str(data), "--spec", str(spec), "--pairs", "50",
                "--out", str(tmp_path / "iou"), "--json"], site, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["scale"] == [0.3, 1.0]  # the plugin's own area range, not --min-scale's 0.2
    # Registered without a crop pair: the error names the methods that have one.
    proc = run(["-m", "sslcli", "analyze", "crop-iou", str(data), "--spec", str(spec), "--out", str(tmp_path / "o")],
               bare_site(tmp_path), tmp_path)
    assert proc.returncode == 2
    assert "method 'toy-plugin' has no image-level crop pair; expected one of moco, simclr, byol" in proc.stderr


def test_plugin_trains_on_the_gpu_pipeline_through_its_device_views_hook(site, data, tmp_path):
    spec = write_spec(tmp_path, data)
    proc = run(["-m", "sslcli", "pretrain", str(spec), "--set", "data.pipeline=gpu", "--json"], site, tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["steps"] == 2 and math.isfinite(result["final_loss"])
