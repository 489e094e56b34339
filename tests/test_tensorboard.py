"""The TensorBoard writer (logging.tensorboard): the scalars read back with TensorBoard's own event reader."""

from __future__ import annotations

import json

import engine_toy as toy
import pytest

from sslcli.engine.launch import launch
from sslcli.spec import parse_spec

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard comes with the test extra: pip install -e '.[test]'")


def test_tensorboard_scalars_are_the_metrics_log(images, tmp_path, toy_method):
    # 20 images, batch 8 (last partial batch dropped): 2 steps per epoch, 2 epochs.
    spec = parse_spec(toy.spec_dict(images, tmp_path / "run", epochs=2, logging__tensorboard=True))
    launch(spec)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and [r["step"] for r in epochs] == [2, 4]

    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"step/loss", "step/lr", "epoch/loss"} <= tags
    assert not any(tag.endswith("/time") for tag in tags)  # wall-clock time is not a training metric
    for prefix, rows in (("step", steps), ("epoch", epochs)):
        for key in ("loss", "lr") if prefix == "step" else ("loss",):
            logged = events.Scalars(f"{prefix}/{key}")
            assert [e.step for e in logged] == [r["step"] for r in rows], f"{prefix}/{key}"
            # TensorBoard keeps float32 values.
            assert [e.value for e in logged] == pytest.approx([r[key] for r in rows], rel=1e-6), f"{prefix}/{key}"
    # Warm-up over the first epoch from 0.1 × base_lr (linear scaling: 0.4 × 8 / 256): step 1's lr is the start.
    assert events.Scalars("step/lr")[0].value == pytest.approx(0.1 * 0.4 * 8 / 256, rel=1e-6)
