"""`sslcli prepare masks|boxes|inspect`: region proposals precomputed into HDF5 stores."""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import prepare_app
from sslcli.cli.common import command
from sslcli.errors import NotImplementedYet


@command(prepare_app, "masks")
def prepare_masks(
    root: Path = typer.Argument(..., help="Data-set root."),
    method: str = typer.Option("fh", "--method", help="fh | grid | gt | mcg"),
):
    """Precompute region masks into an HDF5 store.

    Example: sslcli prepare masks coco/ --method fh --scales 500,1000,1500 --workers 8
    """
    raise NotImplementedYet("prepare masks")


@command(prepare_app, "boxes")
def prepare_boxes(
    root: Path = typer.Argument(..., help="Data-set root."),
    method: str = typer.Option("selective-search", "--method", help="selective-search"),
):
    """Precompute box proposals into an HDF5 store.

    Example: sslcli prepare boxes coco/ --method selective-search --filter soco --workers 8
    """
    raise NotImplementedYet("prepare boxes")


@command(prepare_app, "inspect")
def prepare_inspect(store: Path = typer.Argument(..., help="An HDF5 region store.")):
    """Summarise a region store and measure its quality against ground truth.

    Example: sslcli prepare inspect coco/sslcli/fh-s1000.h5 --gt coco/
    """
    raise NotImplementedYet("prepare inspect")
