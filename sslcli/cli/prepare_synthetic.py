"""`sslcli prepare synthetic`: the embedded default data set, and the planted-prior benchmark (--preset planted)."""

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
    size: int | None = typer.Option(None, "--size", help="Long side of each image in pixels (the short side is "
                                    "75-100 %); default 160, or 224 with --preset planted."),
    preset: str = typer.Option("default", "--preset", help="default: ten colour-coded classes, no priors. planted: "
                               "ten shape x texture classes with random colours per object, co-occurrence and "
                               "position rules planted in train (none in val)."),
    pair: list[str] = typer.Option([], "--pair", help="Planted pair rule A,B,STRENGTH (class ids or names; "
                                   "repeatable): each class-A object gets a class-B object touching it with "
                                   "probability STRENGTH. Replaces the preset's rules (with --region/--rules)."),
    region: list[str] = typer.Option([], "--region", help="Planted region rule CLASS,REGION,STRENGTH (REGION: "
                                     "top-left, top-right, bottom-left, bottom-right, top, bottom, left, right, "
                                     "centre, or x0,y0,x1,y1 fractions; repeatable)."),
    rules: Path | None = typer.Option(None, "--rules", help="JSON/YAML file {pairs: [{a, b, strength}], regions: "
                                      "[{class, region, strength}]}; an empty file section = no such rule."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty OUT."),
):
    """Generate multi-object scenes in COCO layout, with no download.

    Default preset: ten object classes (shapes with their own textures and
    colours) at random scales, positions and rotations, occluding each other,
    on backgrounds cut from scikit-image's bundled images. Planted preset:
    ten shape x texture classes whose colours are random per object, never
    overlapping, with declared class pairs touching and declared classes in
    declared regions in train (written to info.planted), and every class
    independent and uniformly placed in val. Writes OUT/train2017/*.jpg,
    OUT/val2017/*.jpg and OUT/annotations/instances_{train,val}2017.json
    (boxes, RLE masks of the visible pixels). See docs/synthetic.md.

    Example: sslcli prepare synthetic demo-data --images 64 --seed 0
    Example: sslcli prepare synthetic planted --preset planted --images 400 --pair 1,2,1.0 --region 5,top-left,0.9
    """
    from sslcli.data.scenes.synthetic import generate

    planted_rules = None
    if pair or region or rules is not None:
        from sslcli.data.scenes.planted import load_rules_file, make_rules, parse_rule_option

        if rules is not None and (pair or region):
            from sslcli.errors import InputError

            raise InputError("--rules: give the rules either in a file or as --pair/--region options, not both")
        planted_rules = load_rules_file(rules) if rules is not None else make_rules(
            [parse_rule_option(p, "pair") for p in pair], [parse_rule_option(r, "region") for r in region],
            where="--pair/--region")
    n_val = max(16, images // 4) if val_images is None else val_images
    return generate(out, images, n_val, seed, size=size, force=force, preset=preset, rules=planted_rules,
                    on_image=lambda jobs: progress(jobs, description="generating scenes"))
