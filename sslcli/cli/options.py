"""Options that several commands share, declared once as annotated types: a command writes
``device: Device = "auto"`` and gets the same flag and help text as every other command that takes it. The default
stays in the command's signature, where it differs between commands (``--batch-size``: 16 for the analyses, 64 for
the probes). Options shared by the commands of one module only are declared the same way at the top of that module.
"""

from __future__ import annotations

from typing import Annotated

import typer

TRUST_HELP = ("Allow full unpickling (torch.load weights_only=False). Needed for SoCo checkpoints, whose argparse "
              "Namespace cannot be read otherwise; unpickling can execute code, so use it only for files you trust.")
PREFIX_HELP = ("Take the backbone from keys under this exact prefix (e.g. online_ for BYOL-style haiku files holding "
               "online and target networks).")

Device = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, cuda or cuda:N.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
TrustCheckpoint = Annotated[bool, typer.Option("--trust-checkpoint", help=TRUST_HELP)]
Prefix = Annotated[str | None, typer.Option("--prefix", help=PREFIX_HELP)]
