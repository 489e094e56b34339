"""`views:` in a run spec overrides a method's view recipe (colour pipelines, crop area) and nothing else."""

from __future__ import annotations

import pytest

from sslcli.data.views.colour import ColourAug
from sslcli.methods.byol.views import byol_views
from sslcli.methods.detcon.views import MaskViewPair
from sslcli.methods.moco.views import moco_views
from sslcli.methods.simclr.views import simclr_views
from sslcli.spec import SpecError, parse_spec

# METHODS.md §1 and §3, written out here (not imported) so the presets are checked against the text.
MOCO_V2_VIEW = ColourAug(0.4, 0.4, 0.4, 0.1, jitter_p=0.8, gray_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0))
SIMCLR_VIEWS = (ColourAug(0.8, 0.8, 0.8, 0.2, blur_p=1.0), ColourAug(0.8, 0.8, 0.8, 0.2, blur_p=0.0))


def spec_for(method: str, **views):
    return parse_spec({"data": {"root": "d", "image_size": 32}, "method": {"name": method}, "batch_size": 8,
                       "views": views})


def test_the_default_is_the_papers_recipe():
    views = simclr_views(spec_for("simclr"))
    assert views.colours == SIMCLR_VIEWS and views.large_scale == (0.08, 1.0)
    assert moco_views(spec_for("moco")).colours == (MOCO_V2_VIEW, MOCO_V2_VIEW)


@pytest.mark.parametrize("build", [simclr_views, byol_views, moco_views])
def test_a_preset_and_a_crop_scale_replace_the_recipe(build):
    name = {simclr_views: "simclr", byol_views: "byol", moco_views: "moco"}[build]
    views = build(spec_for(name, colour="moco-v2", crop_scale=[0.3, 0.9]))
    assert views.colours == (MOCO_V2_VIEW, MOCO_V2_VIEW)
    assert views.large_scale == (0.3, 0.9)


def test_explicit_pipelines_one_for_both_views_or_one_each():
    both = simclr_views(spec_for("simclr", colour=[{"hue": 0.0, "blur_p": 0.0}]))
    assert both.colours[0] == both.colours[1] == ColourAug(0.4, 0.4, 0.4, 0.0, blur_p=0.0)
    each = simclr_views(spec_for("simclr", colour=[{"solarize_p": 0.0}, {"solarize_p": 0.2}]))
    assert (each.colours[0].solarize_p, each.colours[1].solarize_p) == (0.0, 0.2)


def test_detcon_views_take_the_override():
    from sslcli.methods.detcon.method import Detcon  # the method builds MaskViewPair from the spec
    spec = parse_spec({"data": {"root": "d", "image_size": 32}, "batch_size": 8,
                       "method": {"name": "detcon", "variant": "S", "masks": {"kind": "grid", "grid": 2}},
                       "views": {"colour": "moco-v2", "crop_scale": [0.2, 1.0]}})
    views = Detcon(spec).transform().views
    assert isinstance(views, MaskViewPair)
    assert views.colours == (MOCO_V2_VIEW, MOCO_V2_VIEW) and views.scale == (0.2, 1.0)


@pytest.mark.parametrize(("method", "views", "message"), [
    ("simclr", {"crop_scale": [0.9, 0.2]}, "views.crop_scale: [0.9, 0.2] is not a range"),
    ("simclr", {"colour": [{}, {}, {}]}, "views.colour: 3 pipelines"),
    ("moco", {"colour": "swav"}, "views.colour"),
])
def test_bad_overrides_are_named(method, views, message):
    with pytest.raises(SpecError) as info:
        spec_for(method, **views)
    assert message in str(info.value)


def test_region_methods_refuse_views_crop_scale():
    with pytest.raises(SpecError) as info:
        parse_spec({"data": {"root": "d"}, "batch_size": 8, "views": {"crop_scale": [0.2, 1.0]},
                    "method": {"name": "soco", "boxes": "b.h5"}})
    assert "views.crop_scale: method soco sets its crop with method.crop_scale" in str(info.value)
