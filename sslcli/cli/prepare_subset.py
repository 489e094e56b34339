"""`sslcli prepare subset`: IN-118K, IN-118K-LT, OI-118K and OpenImage-MINI."""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import prepare_app
from sslcli.cli.common import command
from sslcli.errors import NotImplementedYet


@command(prepare_app, "subset")
def prepare_subset(
    root: Path = typer.Argument(..., help="ImageNet or OpenImages root."),
    kind: str = typer.Option(..., "--kind", help="in118k | in118k-lt | oi118k | oi-mini"),
    out: Path = typer.Option(..., "--out", help="Output folder for the manifest and stats."),
):
    """Build a reproducible pretraining subset.

    Example: sslcli prepare subset imagenet/ --kind in118k-lt --seed 0 --out lists/
    """
    raise NotImplementedYet("prepare subset")
