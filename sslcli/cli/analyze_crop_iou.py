"""`sslcli analyze crop-iou`: IoU histogram between the two default MoCo crops (Revisiting Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import analyze_app
from sslcli.cli.common import command
from sslcli.errors import NotImplementedYet


@command(analyze_app, "crop-iou")
def analyze_crop_iou(data: Path = typer.Argument(..., help="Data-set root.")):
    """IoU histogram between the two default crops.

    Example: sslcli analyze crop-iou coco/ --pairs 10000 --out crop-iou.png
    """
    raise NotImplementedYet("analyze crop-iou")
