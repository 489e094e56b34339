"""`sslcli probe linear|knn|segment-retrieval`: evaluate frozen features."""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import probe_app
from sslcli.cli.common import command
from sslcli.errors import NotImplementedYet


@command(probe_app, "linear")
def probe_linear(checkpoint: Path = typer.Argument(..., help="Backbone checkpoint.")):
    """Linear probe (L-BFGS logistic regression on frozen features).

    Example: sslcli probe linear ckpt.pt --data coco/
    """
    raise NotImplementedYet("probe linear")


@command(probe_app, "knn")
def probe_knn(checkpoint: Path = typer.Argument(..., help="Backbone checkpoint.")):
    """Weighted k-nearest-neighbour probe.

    Example: sslcli probe knn ckpt.pt --data coco/ --k 10,20
    """
    raise NotImplementedYet("probe knn")


@command(probe_app, "segment-retrieval")
def probe_segment_retrieval(checkpoint: Path = typer.Argument(..., help="Backbone checkpoint.")):
    """Semantic segment retrieval (dilated res5, K-means regions, nearest train region, mIoU).

    Example: sslcli probe segment-retrieval ckpt.pt --data coco/
    """
    raise NotImplementedYet("probe segment-retrieval")
