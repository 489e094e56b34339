"""`sslcli export`: convert a checkpoint's backbone to torchvision or detectron2 format."""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import app
from sslcli.cli.common import command
from sslcli.errors import NotImplementedYet


@command(app, "export")
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to convert."),
    to: str = typer.Option("torchvision", "--to", help="torchvision | detectron2"),
):
    """Export a backbone for downstream fine-tuning.

    Example: sslcli export runs/moco/last.pt --to detectron2 --out moco.pkl
    """
    raise NotImplementedYet("export")
