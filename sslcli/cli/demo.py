"""`sslcli demo`: the whole pipeline on the embedded synthetic data."""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import app
from sslcli.cli.common import command
from sslcli.errors import NotImplementedYet


@command(app, "demo")
def demo(out: Path = typer.Option(Path("demo-out"), "--out", help="Working folder for data, stores and runs.")):
    """Run every stage on generated data: synthetic scenes, regions, a tiny pretraining run, probes, analyses.

    Example: sslcli demo --out demo-out
    """
    raise NotImplementedYet("demo")
