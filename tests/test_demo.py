"""The README's first quick-start command: `sslcli demo` runs every stage through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_demo_runs_every_stage_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "sslcli", "demo", "--out", str(out), "--images", "16", "--steps", "2",
                           "--json"], capture_output=True, text=True, env={**os.environ,
                                                                          "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    stages = json.loads(proc.stdout)["stages"]
    assert len(stages) == 16
    assert stages["pretrain MoCo-v2"]["steps"] == 2 and stages["pretrain DetCon_S (FH masks)"]["steps"] == 2
    assert (out / "runs" / "moco-tiny" / "last.pt").is_file() and (out / "moco.pkl").is_file()
    assert 0.0 < stages["mask quality (ABO)"]["abo"] <= 1.0
    assert set(stages["coupling rate"]["checkpoints"][0]["layers"]) == {"res2", "res3", "res4", "res5"}
    assert (out / "study" / "report.html").is_file() and stages["study (studies/tiny.yaml: 2 arms x 2 seeds)"]["rows"] > 0
    # A second run replaces the demo's own folder; any other non-empty folder is refused.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    refused = subprocess.run([sys.executable, "-m", "sslcli", "demo", "--out", str(other)], capture_output=True,
                             text=True)
    assert refused.returncode == 2 and (other / "keep.txt").is_file()
