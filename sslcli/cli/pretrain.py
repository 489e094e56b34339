"""`sslcli pretrain`: validate a run spec and train it with the shared engine."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from sslcli.cli.apps import app
from sslcli.cli.common import command, current
from sslcli.errors import InputError
from sslcli.process import signals_raise
from sslcli.spec import dump_spec, load_spec, spec_schema


@command(app, "pretrain")
def pretrain(
    spec_path: Path = typer.Argument(None, metavar="SPEC", help="YAML run spec (see examples/)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the resolved spec; do not train."),
    schema: bool = typer.Option(False, "--schema", "--print-schema", help="Print the run spec's JSON schema."),
    overrides: list[str] = typer.Option([], "--set", help="Override a spec field: --set epochs=2 (repeatable)."),
    gpus: int = typer.Option(0, "--gpus", help="Processes to launch (one per GPU; gloo on CPU when no GPU). "
                                               "0 = one process on the best device."),
    resume: str = typer.Option(None, "--resume", help="'auto' (latest checkpoint in output_dir) or a checkpoint path."),
    nodes: int = typer.Option(1, "--nodes", help="Number of nodes (torchrun rendezvous)."),
    node_rank: int = typer.Option(0, "--node-rank", help="This node's rank."),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="Rendezvous host."),
    master_port: int = typer.Option(29500, "--master-port", help="Rendezvous port."),
):
    """Pretrain a backbone from a YAML run spec.

    Length: epochs x steps per epoch, or max_steps when the spec gives it (exactly that many steps, past epochs if
    need be; the schedule follows epochs, or max_steps when max_steps is the longer). docs/pretrain.md has the rule.

    Example: sslcli pretrain examples/moco-v2_r50_b256_200ep_coco.yaml --gpus 2
    """
    if schema:
        print(json.dumps(spec_schema(), indent=2))
        return None
    if spec_path is None:
        raise InputError("SPEC: a run spec file is required (or --schema)")
    # Checked before the world size is used (--nodes 0 would divide by zero), and on --dry-run too.
    if gpus < 0 or nodes < 1 or not 0 <= node_rank < nodes:
        raise InputError(f"--gpus {gpus} --nodes {nodes} --node-rank {node_rank}: expected gpus ≥ 0, nodes ≥ 1 and "
                         "0 ≤ node-rank < nodes")
    world = max(gpus, 1) * nodes
    spec = load_spec(spec_path, overrides, world_size=world)
    if dry_run:
        from sslcli.data.readers.sources import check_data_root

        check_data_root(spec.data.root, spec.data.split, spec.data.format)
        if current().json:
            return {"valid": True, "lr": spec.lr, "spec": spec.model_dump(mode="json")}
        print(dump_spec(spec), end="")
        current().info(f"{spec_path}: valid ({spec.method.name}, global batch {spec.batch_size}, lr {spec.lr:g})")
        return None
    # SIGTERM and SIGUSR1 (a scheduler's preemption) end the command as Ctrl-C does, with one line and exit code
    # 128 + the signal's number; once training runs, the engine saves a step checkpoint first (docs/pretrain.md).
    with signals_raise():
        from sslcli.engine.launch import launch

        return launch(spec, resume=resume, gpus=gpus, nodes=nodes, node_rank=node_rank, master_addr=master_addr,
                      master_port=master_port)
