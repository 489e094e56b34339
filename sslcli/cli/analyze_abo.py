"""`sslcli analyze abo`: average best overlap of a mask store against ground truth (DetCon Fig. 7)."""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import analyze_app
from sslcli.cli.common import command
from sslcli.errors import NotImplementedYet


@command(analyze_app, "abo")
def analyze_abo(store: Path = typer.Argument(..., help="A mask store.")):
    """Average best overlap of a mask store against ground-truth instance masks.

    Example: sslcli analyze abo coco/sslcli/fh-s1000.h5 --gt coco/
    """
    raise NotImplementedYet("analyze abo")
