"""The `sslcli` command line. Importing this package registers every command on `app`."""

from __future__ import annotations

import typer

from sslcli import __version__

# Each module registers its commands on import; one module per feature keeps them independent.
from sslcli.cli import (  # noqa: E402,F401  (imported for registration)
    analyze,
    analyze_abo,
    analyze_crop_iou,
    demo,
    export,
    prepare_regions,
    prepare_subset,
    prepare_synthetic,
    pretrain,
    probe,
    study,
)
from sslcli.cli.apps import app


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


def main() -> None:
    app()
