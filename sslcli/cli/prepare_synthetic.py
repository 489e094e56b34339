"""`sslcli prepare synthetic`: the embedded default data set."""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import prepare_app
from sslcli.cli.common import command
from sslcli.errors import NotImplementedYet


@command(prepare_app, "synthetic")
def prepare_synthetic(
    out: Path = typer.Argument(..., help="Output root (COCO layout)."),
    images: int = typer.Option(64, "--images", help="Number of training images."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
):
    """Generate multi-object scenes in COCO layout, with no download.

    Example: sslcli prepare synthetic demo-data --images 64 --seed 0
    """
    raise NotImplementedYet("prepare synthetic")
