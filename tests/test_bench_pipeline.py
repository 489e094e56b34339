"""bench/bench_pipeline.py runs end to end: its --device cuda code (device pipeline, ceiling, engine with every
pipeline, the image cache's two included) at a tiny size on CPU, so the GPU command works the first time it is given a GPU. Figures not checked."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_pipeline_runs_every_section(coco_data):
    cmd = [sys.executable, str(REPO / "bench" / "bench_pipeline.py"), "--data", str(coco_data), "--device", "cpu",
           "--engine", "--size", "32", "--arch", "resnet18", "--width", "8", "--batch", "4", "--steps", "1",
           "--seconds", "0", "--rounds", "1", "--images", "4", "--workers", "1",
           "--pipelines", "cpu,gpu,cache,cache-memory"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={"PYTHONPATH": str(REPO),
                                                                                  "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "FAILED" not in out, out
    for section in ("MoCo-v2      one thread", "MoCo-v2 MC   one thread", "device pipeline on cpu",
                    "backbone ceiling", "engine, data.pipeline: cpu", "engine, data.pipeline: gpu",
                    "engine, data.pipeline: cache,", "engine, data.pipeline: cache-memory,"):
        assert section in out, out
    assert re.fullmatch(r"pipeline: cpu [\d.]+ img/s/core vs [\d.]+ img/s/core = [\d.]+x", out.strip().splitlines()[-1])
