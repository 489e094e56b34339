"""`sslcli prepare synthetic`: the embedded default data set."""

from __future__ import annotations

from pathlib import Path

import typer

from sslcli.cli.apps import prepare_app
from sslcli.cli.common import command, progress


@command(prepare_app, "synthetic")
def prepare_synthetic(
    out: Path = typer.Argument(..., help="Output root (COCO layout)."),
    images: int = typer.Option(64, "--images", help="Number of training images."),
    val_images: int | None = typer.Option(None, "--val-images", help="Number of validation images "
                                          "(default: max(16, images // 4))."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same images and annotations."),
    size: int = typer.Option(160, "--size", help="Long side of each image in pixels (the short side is 75-100 %)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty OUT."),
):
    """Generate multi-object scenes in COCO layout, with no download.

    Ten object classes (shapes with their own textures and colours) at random
    scales, positions and rotations, occluding each other, on backgrounds cut
    from scikit-image's bundled images. Writes OUT/train2017/*.jpg,
    OUT/val2017/*.jpg and OUT/annotations/instances_{train,val}2017.json
    (boxes, RLE masks of the visible pixels). See docs/synthetic.md.

    Example: sslcli prepare synthetic demo-data --images 64 --seed 0
    """
    from sslcli.data.synthetic import generate

    n_val = max(16, images // 4) if val_images is None else val_images
    return generate(out, images, n_val, seed, size=size, force=force,
                    on_image=lambda jobs: progress(jobs, description="generating scenes"))
