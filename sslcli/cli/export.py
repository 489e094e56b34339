"""`sslcli export`: convert a checkpoint's backbone to torchvision or detectron2 format."""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import app
from sslcli.cli.common import command, current

TRUST_HELP = ("Allow full unpickling (torch.load weights_only=False). Needed for SoCo checkpoints, whose argparse "
              "Namespace cannot be read otherwise; unpickling can execute code, so use it only for files you trust.")


@command(app, "export")
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to convert (sslcli, torchvision, MoCo, SoCo, DetCon .npy)."),
    to: str = typer.Option("torchvision", "--to", help="torchvision | detectron2"),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (.pth for torchvision, .pkl for detectron2)."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP),
    prefix: str = typer.Option(None, "--prefix", help="Take the backbone from keys under this exact prefix."),
):
    """Export a backbone for downstream fine-tuning.

    torchvision: a state dict of the backbone (no fc; load with strict=False). detectron2: a pickled
    {"model": numpy arrays with detectron2 names, "__author__", "matching_heuristics": True}.

    Example: sslcli export runs/moco/last.pt --to detectron2 --out moco.pkl
    """
    from sslcli.checkpoints import export_backbone  # torch is imported only when a command runs

    report, written = export_backbone(checkpoint, out, to=to, trust=trust_checkpoint, prefix=prefix)
    current().info(report.summary())
    return {"out": str(out), "to": to, "keys": written, "checkpoint": report.to_dict()}
