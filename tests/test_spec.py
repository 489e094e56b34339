"""Run-spec validation: defaults from METHODS.md, unknown keys, discriminated methods, cross-field rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from sslcli.method_registry import method_names
from sslcli.spec import SpecError, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def minimal(**method):
    return {"data": {"root": "d"}, "method": {"name": "moco", **method}, "batch_size": 256}


def test_moco_defaults_follow_methods_md():
    spec = parse_spec(minimal())
    m = spec.method
    assert (m.queue_size, m.temperature, m.momentum, m.dim, m.hidden_dim) == (65536, 0.2, 0.999, 128, 2048)
    assert m.constrained.min_overlap == 0.2 and m.knn.k == 20 and m.knn.weight == 0.4 and m.knn.warmup_epochs == 5
    assert m.multi_crop.large_size == 160 and m.multi_crop.small_size == 96 and m.multi_crop.n_small == 4
    assert spec.lr == pytest.approx(0.3)


def test_lr_scaling_rule_is_explicit():
    data = minimal()
    data["batch_size"] = 512
    assert parse_spec(data).lr == pytest.approx(0.6)
    data["optimizer"] = {"lr_scaling": "none"}
    assert parse_spec(data).lr == pytest.approx(0.3)


@pytest.mark.parametrize("name", method_names())
def test_every_reserved_method_name_validates(name):
    method = {"name": name}
    if name in ("soco", "d3ssl"):
        method["boxes"] = "boxes.h5"
    data = {"data": {"root": "d"}, "method": method, "batch_size": 256}
    if name in ("soco", "d3ssl"):  # ResNet-C4 methods: refused without model.c4, at validation (not at build time)
        with pytest.raises(SpecError, match=f"model.c4: method {name} is a ResNet-C4 method"):
            parse_spec(data)
        data["model"] = {"c4": True}
    assert parse_spec(data).method.name == name


def test_all_errors_reported_with_paths():
    with pytest.raises(SpecError) as info:
        parse_spec({"data": {"root": "d", "extra": 1}, "method": {"name": "byol", "dim": 0}, "epochs": 0})
    problems = info.value.problems
    assert any(p.startswith("data.extra: unknown key") for p in problems)
    assert any(p.startswith("method.dim:") for p in problems)
    assert any(p.startswith("epochs:") for p in problems)
    assert len(problems) == 3


def test_unknown_method_lists_the_choices():
    with pytest.raises(SpecError) as info:
        parse_spec({"data": {"root": "d"}, "method": {"name": "swav"}})
    assert "unknown method 'swav'" in str(info.value) and "detcon" in str(info.value)


def test_detcon_store_needs_a_path():
    with pytest.raises(SpecError) as info:
        parse_spec({"data": {"root": "d"}, "method": {"name": "detcon", "masks": {"kind": "store"}}})
    assert "method.masks" in str(info.value) and "path" in str(info.value)


def test_inverted_range_is_named():
    with pytest.raises(SpecError) as info:
        parse_spec(minimal(multi_crop={"enabled": True, "small_scale": [0.3, 0.1]}))
    assert "method.multi_crop.small_scale: lower bound 0.3 is above upper bound 0.1" in info.value.problems


def test_batch_must_split_over_processes():
    with pytest.raises(SpecError) as info:
        parse_spec({**minimal(queue_size=1024), "batch_size": 256}, world_size=3)
    assert any(p.startswith("batch_size: must be divisible") for p in info.value.problems)


def test_every_example_spec_validates():
    specs = sorted(EXAMPLES.glob("*.yaml"))
    assert len(specs) >= 5
    for path in specs:
        load_spec(path)


def test_constrained_needs_multi_crop():
    with pytest.raises(SpecError) as info:
        parse_spec(minimal(constrained={"enabled": True}))
    assert any(p.startswith("method.constrained.enabled") for p in info.value.problems)
