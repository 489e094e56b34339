"""`sslcli export`: convert a checkpoint's backbone to torchvision or detectron2 format, or write an untrained one."""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import app
from sslcli.cli.common import command, current
from sslcli.cli.options import Prefix, TrustCheckpoint
from sslcli.errors import InputError


@command(app, "export")
def export(
    checkpoint: Path = typer.Argument(None, help="Checkpoint to convert (sslcli, torchvision, MoCo, SoCo, DetCon .npy)."),
    to: str = typer.Option("torchvision", "--to", help="torchvision | detectron2"),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (.pth for torchvision, .pkl for detectron2)."),
    trust_checkpoint: TrustCheckpoint = False, prefix: Prefix = None,
    random_init: Path = typer.Option(None, "--random-init", metavar="SPEC",
                                     help="Instead of converting: write the untrained backbone of this run spec, "
                                          "built as the engine builds it (spec seed), as an sslcli checkpoint."),
    seed: int = typer.Option(None, "--seed", help="With --random-init: use this seed instead of the spec's."),
):
    """Export a backbone for downstream fine-tuning.

    torchvision: a state dict of the backbone (no fc; load with strict=False). detectron2: a pickled
    {"model": numpy arrays with detectron2 names, "__author__", "matching_heuristics": True}.

    --random-init SPEC writes the backbone as `sslcli pretrain SPEC` has it before its first step (same seed, same
    construction), in the sslcli checkpoint format every probe and analysis reads: the untrained reference.

    Example: sslcli export runs/moco/last.pt --to detectron2 --out moco.pkl
    Example: sslcli export --random-init examples/moco-v2-tiny.yaml --out random.pt
    """
    if random_init is not None:
        if checkpoint is not None:
            raise InputError(f"{checkpoint}: give either a CHECKPOINT to convert or --random-init SPEC, not both")
        from sslcli.spec import load_spec
        from sslcli.study.random_init import write_random_init

        spec = load_spec(random_init, [f"seed={seed}"] if seed is not None else [])
        result = write_random_init(spec, out)
        current().info(f"{out}: untrained {spec.model.arch} width {spec.model.width}, {spec.model.stem} stem "
                       f"({spec.method.name}, seed {spec.seed})")
        return result
    if checkpoint is None:
        raise InputError("sslcli export: missing argument CHECKPOINT (a checkpoint to convert, or --random-init SPEC)")
    from sslcli.backbone_checkpoints import export_backbone  # torch is imported only when a command runs

    report, written = export_backbone(checkpoint, out, to=to, trust=trust_checkpoint, prefix=prefix)
    current().info(report.summary())
    note = stock_model_note(report.arch, report.width, to, report.stem)
    if note is not None:
        current().warn(f"{out}: {note}")
    return {"out": str(out), "to": to, "keys": written, "checkpoint": report.to_dict(),
            "stock_model_loads": note is None, "stock_model_note": note}


STOCK_WIDTH = 64  # the stem width of every torchvision ResNet (and of detectron2's default config)
BASIC_BLOCK_ARCHS = ("resnet18", "resnet34")  # res2 outputs `width` channels; bottleneck ResNets 4 x width


def stock_model_note(arch: str, width: int, to: str, stem: str = "imagenet") -> str | None:
    """Why the export will not load into (or not behave as) the stock model of its format, None when it will: the
    stock ResNets have a 64-channel stem, so every tensor of another width has another shape; and an ImageNet stem
    (7×7 stride-2 conv1 + max-pool), which a small-stem backbone (3×3 stride-1 conv1, no max-pool) does not match."""
    notes = [note for note in (_width_note(arch, width, to), _stem_note(arch, width, to, stem)) if note]
    return "; ".join(notes) or None


def _width_note(arch: str, width: int, to: str) -> str | None:
    if width == STOCK_WIDTH:
        return None
    if to == "torchvision":
        return (f"{arch} of width {width} will not load into a stock torchvision.models.{arch}() (width "
                f"{STOCK_WIDTH}: every tensor shape differs); build the model with "
                f"sslcli.models.backbone.build_backbone({arch!r}, width={width})")
    res2 = width * (1 if arch in BASIC_BLOCK_ARCHS else 4)
    return (f"{arch} of width {width} will not load into detectron2's default ResNet (stem width {STOCK_WIDTH}); "
            f"set MODEL.RESNETS.STEM_OUT_CHANNELS {width} and RES2_OUT_CHANNELS {res2}")


def _stem_note(arch: str, width: int, to: str, stem: str) -> str | None:
    if stem == "imagenet":
        return None
    if to == "torchvision":
        return (f"the small stem (3×3 stride-1 conv1, no max-pool) does not match torchvision.models.{arch}()'s "
                f"stem (7×7 stride-2 conv1 + max-pool): conv1.weight will not load; build the model with "
                f"sslcli.models.backbone.build_backbone({arch!r}, width={width}, stem='small')")
    return ("the small stem (3×3 stride-1 conv1, no max-pool) does not match detectron2's BasicStem (7×7 stride-2 "
            "conv + max-pool): stem.conv1.weight will not load; register a stem with a 3×3 stride-1 conv and no "
            "max-pool, and feature strides 1, 2, 4, 8 for res2..res5")
