"""SoCo and D3SSL through `sslcli pretrain` on a real box store: start-up validation and a short run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

METHOD_OPTIONS = {"soco": {}, "d3ssl": {"bank_size": 64}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """16 synthetic images with a selective-search box store and a grid mask store, made through the CLI."""
    from typer.testing import CliRunner

    from sslcli.cli import app
    from sslcli.data.scenes.synthetic import generate

    root = tmp_path_factory.mktemp("regions") / "data"
    generate(root, n_train=16, n_val=0, seed=0, size=64)
    runner = CliRunner()
    for args in (["prepare", "boxes", str(root)], ["prepare", "masks", str(root), "--method", "grid"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.stderr
    return root


def spec_file(tmp_path: Path, root: Path, method: str, boxes: Path | str, **model) -> Path:
    spec = {"spec_version": 1, "name": f"{method}-test",
            "data": {"root": str(root), "image_size": 64, "workers": 0, "pin_memory": False},
            "model": {"arch": "resnet18", "width": 8, "c4": True, **model},
            "method": {"name": method, "boxes": str(boxes), "dim": 16, "hidden_dim": 32, **METHOD_OPTIONS[method]},
            "optimizer": {"name": "lars", "base_lr": 1.0, "weight_decay": 1e-5},
            "schedule": {"name": "cosine", "warmup_epochs": 0}, "batch_size": 4, "epochs": 1, "max_steps": 2,
            "precision": "fp32", "output_dir": str(tmp_path / "run")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_pretrain_runs_on_a_real_box_store(method, dataset, tmp_path, cli):
    code, stdout, err = cli(["pretrain", spec_file(tmp_path, dataset, method, dataset / "sslcli" / "ss-soco.h5"),
                             "--json", "--quiet"])
    assert code == 0, err
    result = json.loads(stdout)
    assert result["steps"] == 2 and math.isfinite(result["final_loss"])


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_missing_box_store_is_a_one_line_input_error(method, dataset, tmp_path, cli):
    missing = tmp_path / "nowhere.h5"
    code, _, err = cli(["pretrain", spec_file(tmp_path, dataset, method, missing), "--quiet"])
    one_line_error(code, err, "method.boxes", str(missing), "prepare boxes")
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_a_mask_store_is_refused(method, dataset, tmp_path, cli):
    masks = next((dataset / "sslcli").glob("grid*.h5"))
    code, _, err = cli(["pretrain", spec_file(tmp_path, dataset, method, masks), "--quiet"])
    one_line_error(code, err, "method.boxes", "holds masks", "expected boxes")


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_a_non_c4_model_is_refused(method, dataset, tmp_path, cli):
    code, _, err = cli(["pretrain", spec_file(tmp_path, dataset, method, dataset / "sslcli" / "ss-soco.h5",
                                              c4=False), "--quiet"])
    one_line_error(code, err, "model.c4")


def test_soco_boxes_of_other_images_are_refused(dataset, tmp_path, cli):
    from sslcli.data.scenes.synthetic import generate

    other = tmp_path / "other"
    generate(other, n_train=16, n_val=0, seed=0, size=96)  # same ids, other sizes
    code, _, err = cli(["pretrain", spec_file(tmp_path, other, "soco", dataset / "sslcli" / "ss-soco.h5"),
                        "--quiet"])
    # refused at start-up by the store's image digests (issue 26), before the per-sample size check would
    one_line_error(code, err, "method.boxes", "ss-soco.h5", "was computed from other images")


def test_soco_transform_reads_the_store_and_collates(dataset):
    import torch
    from torch.utils.data import default_collate

    from sslcli.data.readers.sources import open_source
    from sslcli.methods.soco.method import Soco
    from sslcli.spec import parse_spec

    spec = parse_spec({"data": {"root": str(dataset), "image_size": 64, "workers": 0},
                       "model": {"arch": "resnet18", "width": 8, "c4": True},
                       "method": {"name": "soco", "boxes": str(dataset / "sslcli" / "ss-soco.h5"), "dim": 16,
                                  "hidden_dim": 32, "boxes_per_image": 5}, "batch_size": 4})
    transform = Soco(spec).transform()
    source = open_source(dataset, "train2017")
    samples = []
    for i in range(3):
        torch.manual_seed(i)
        samples.append(transform(source.sample(i)))
    batch = default_collate(samples)
    assert batch["boxes"].shape == (3, 3, 5, 4) and batch["view3"].shape == (3, 3, 32, 32)
