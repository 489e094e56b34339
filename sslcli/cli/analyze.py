"""`sslcli analyze coupling|positional|oknn`: what the features encode (D3SSL §3, §5.3)."""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import analyze_app
from sslcli.cli.common import command
from sslcli.errors import NotImplementedYet


@command(analyze_app, "coupling")
def analyze_coupling(checkpoints: list[Path] = typer.Argument(..., help="One or more checkpoints.")):
    """Coupling rate per layer (res2..res5).

    Example: sslcli analyze coupling ckpt.pt --data coco/
    """
    raise NotImplementedYet("analyze coupling")


@command(analyze_app, "positional")
def analyze_positional(checkpoints: list[Path] = typer.Argument(..., help="One or more checkpoints.")):
    """Positional bias (mean cosine similarity on 3x3 tilings) per layer.

    Example: sslcli analyze positional ckpt.pt --data coco/
    """
    raise NotImplementedYet("analyze positional")


@command(analyze_app, "oknn")
def analyze_oknn(checkpoints: list[Path] = typer.Argument(..., help="One or more checkpoints.")):
    """Object-level kNN accuracy (optionally with disturbed backgrounds).

    Example: sslcli analyze oknn ckpt.pt --data coco/ --disturbed
    """
    raise NotImplementedYet("analyze oknn")
