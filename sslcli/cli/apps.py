"""The Typer application objects. Command modules register themselves on these with `common.command`."""

from __future__ import annotations

import typer

from sslcli.cli.common import OneLineErrorsGroup

HELP = """sslcli: self-supervised visual pretraining on complex, multi-object images.

Stages: prepare data and region proposals, pretrain with one shared engine, probe the features, analyze what they
encode. Every command takes --json (one JSON object on stdout), --quiet and --debug.

Example: sslcli prepare synthetic demo-data --images 64 && sslcli demo
"""

app = typer.Typer(help=HELP, cls=OneLineErrorsGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
prepare_app = typer.Typer(help="Prepare data: subsets, the synthetic demo set, region masks and boxes (HDF5 stores).",
                          no_args_is_help=True)
probe_app = typer.Typer(help="Probe frozen features: linear, knn, segment-retrieval.", no_args_is_help=True)
analyze_app = typer.Typer(help="Measure what features encode: coupling, positional, oknn, crop-iou, abo.",
                          no_args_is_help=True)
study_app = typer.Typer(help="Studies: arms x seeds of runs, evaluations, expected orderings, a report "
                        "(docs/study.md).", no_args_is_help=True)

app.add_typer(prepare_app, name="prepare")
app.add_typer(probe_app, name="probe")
app.add_typer(analyze_app, name="analyze")
app.add_typer(study_app, name="study")
