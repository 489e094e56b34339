"""Untrained reference checkpoints: the backbone exactly as the engine builds it for a spec and its seed."""

from __future__ import annotations

import os
from pathlib import Path

import sslcli
from sslcli.spec import RunSpec


def random_init_state(spec: RunSpec) -> dict:
    """A checkpoint dict in the engine's format holding the backbone only (what
    `sslcli.backbone_checkpoints.load_backbone` reads): the engine's seeding, then the engine's method construction
    (`Trainer.__init__`), so the weights equal step 0 of `sslcli pretrain` for this spec."""
    from sslcli.engine.trainer import seed_everything
    from sslcli.engine.training_checkpoint import FORMAT, VERSION
    from sslcli.methods import build_method

    seed_everything(spec.seed)
    method = build_method(spec)
    backbone = {k: v.detach().cpu().clone() for k, v in method.backbone().state_dict().items()}
    return {"format": FORMAT, "version": VERSION, "random_init": True, "spec": spec.model_dump(mode="json"),
            "arch": spec.model.arch, "width": spec.model.width, "stem": spec.model.stem, "backbone": backbone,
            "step": 0,
            "sslcli_version": sslcli.__version__}


def write_random_init(spec: RunSpec, out: str | os.PathLike) -> dict:
    """Write the untrained backbone of ``spec`` (seed ``spec.seed``) to ``out`` atomically; return a summary."""
    import torch

    from sslcli.io import atomic_path

    state = random_init_state(spec)
    with atomic_path(Path(out), suffix=".pt") as tmp:
        torch.save(state, tmp)
    return {"out": str(out), "arch": spec.model.arch, "width": spec.model.width, "stem": spec.model.stem,
            "seed": spec.seed,
            "method": spec.method.name, "tensors": len(state["backbone"])}
