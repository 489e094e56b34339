"""`sslcli analyze abo`: average best overlap of a mask store against ground truth (DetCon Fig. 7).

The same report as `sslcli prepare inspect STORE --gt ROOT` (sslcli.analysis.quality.store_report).
"""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import analyze_app
from sslcli.cli.common import command
from sslcli.errors import InputError


@command(analyze_app, "abo")
def analyze_abo(
    store: Path = typer.Argument(..., help="A mask (or box) region store."),
    gt: Path = typer.Option(..., "--gt", help="COCO root with annotations/instances_<split>.json."),
    split: str = typer.Option("train2017", "--split", help="COCO split of the ground truth."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N stored images."),
):
    """Average best overlap of a mask store against ground-truth instance masks.

    Example: sslcli analyze abo coco/sslcli/fh-s1000.h5 --gt coco/
    """
    from sslcli.analysis.quality import store_report

    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: expected a positive number of images")
    return store_report(store, gt, split, limit)
