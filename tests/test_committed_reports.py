"""The committed study reports regenerate identically from their own folders: `sslcli study report` on a copy of each
docs/results/<study>/ writes the same report.md and report.html, byte for byte. A refactor that changes a verdict, a
figure or a sentence of a committed report fails here. (The PNG plots are left out: their bytes depend on the
installed matplotlib, not on sslcli.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
STUDIES = sorted(path.parent.name for path in RESULTS.glob("*/study.json"))


def test_there_are_committed_studies():
    assert {"planted-detcon", "planted-revisiting", "planted-d3ssl"} <= set(STUDIES)


@pytest.mark.parametrize("study", STUDIES)
def test_committed_report_regenerates_identically(study, tmp_path, cli):
    copy = tmp_path / study
    shutil.copytree(RESULTS / study, copy, ignore=shutil.ignore_patterns("report.md", "report.html"))
    code, _, err = cli(["study", "report", copy, "--quiet"])
    assert code == 0, err
    for name in ("report.md", "report.html"):
        assert (copy / name).read_bytes() == (RESULTS / study / name).read_bytes(), name
