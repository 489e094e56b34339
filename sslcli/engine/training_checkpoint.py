"""The engine's own training checkpoint: the sslcli format, atomic saves, RNG capture, and the resume rules.

Reading a backbone out of this or any other checkpoint format for evaluation is `sslcli.backbone_checkpoints`.

Format (a dict saved with `torch.save`; every value loads with ``torch.load(..., weights_only=True)``):
``format`` "sslcli-checkpoint", ``version`` 1, ``spec`` (the resolved run spec as JSON data), ``arch``, ``width``,
``backbone`` (the pretrained ResNet's state dict, torchvision names, no prefix), ``method`` (the whole method's
state: encoders, heads, queues), ``optimizer``, ``scaler``, ``epoch`` (epochs completed), ``step`` (steps
completed), ``steps_per_epoch``, ``world_size``, ``rng`` ({"ranks": [one state per rank]}), ``epoch_stats``
({"loss_sum", "steps"} of the epoch in progress when the run stopped mid-epoch, else zeros), ``sslcli_version``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from sslcli.errors import InputError
from sslcli.io import atomic_path
from sslcli.spec import SAVE_SCHEDULE_FIELDS

FORMAT = "sslcli-checkpoint"
VERSION = 1
LAST = "last.pt"

# Spec fields a resumed run may change: they do not alter the numbers the run computes. The data order and the
# augmentations are seeded per sample (engine/data.py), so the worker count does not change them either.
# data.cache: the cached images are the pixels the gpu pipeline decodes, so a run may resume with or without it.
RESUMABLE_CHANGES = ("epochs", "output_dir", "logging", "max_steps", "data.workers", "data.pin_memory",
                     "data.threads", "data.cache", *SAVE_SCHEDULE_FIELDS)


def epoch_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically: a kill mid-write leaves the previous file intact."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed run left in ``folder`` (``.<name>.*.tmp``, see
    `sslcli.io.atomic_path`). Only for a folder this process holds (`sslcli.process.FolderLock`)."""
    stale = sorted(folder.glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an sslcli checkpoint on the CPU; InputError naming the file if it is missing or not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated files, other formats: one line naming the file
        raise InputError(f"{path}: not a readable checkpoint ({load_error_reason(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path}: not an sslcli training checkpoint (expected \"format\": \"{FORMAT}\")")
    if state.get("version") != VERSION:
        raise InputError(f"{path}: checkpoint version {state.get('version')!r}, this sslcli reads version {VERSION}")
    return state


def load_error_reason(exc: BaseException) -> str:
    """What went wrong in torch's words, without its paragraphs of advice (which for a file that is no checkpoint at
    all suggests weights_only=False, i.e. running code from it)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # the unpickler's own finding follows torch's advice
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0].split('. ')[0].rstrip('.')}"



# ---------------------------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """This process's RNG states as tensors and plain tuples (loadable with weights_only=True)."""
    # The legacy form (the default): (name, keys, position, has_gauss, cached_gaussian).
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ------------------------------------------------------------------------------------------------------- resume
def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: None (fresh run), output_dir/last.pt for 'auto' (None if absent), or a path."""
    if resume is None:
        return None
    if resume == "auto":
        last = Path(output_dir) / LAST
        return last if last.is_file() else None
    return Path(resume)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


# Spec fields that name files: equal when they resolve to the same file (``demo-data`` and its absolute path).
PATH_FIELDS = ("data.root", "method.masks.path", "method.boxes")


def spec_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted paths of fields that differ between two spec dicts, ignoring `RESUMABLE_CHANGES`."""
    a, b = _flatten(saved), _flatten(current)

    def allowed(path: str) -> bool:
        return any(path == p or path.startswith(p + ".") for p in RESUMABLE_CHANGES)

    return sorted(p for p in set(a) | set(b) if not allowed(p) and _norm(p, a.get(p)) != _norm(p, b.get(p)))


# Fields added after checkpoints were first written: a saved spec without them had their default.
ADDED_DEFAULTS = {"data.pipeline": "cpu", "model.stem": "imagenet"}


def _norm(path: str, value: Any) -> Any:
    if value is None and path in ADDED_DEFAULTS:
        return ADDED_DEFAULTS[path]
    if path in PATH_FIELDS and isinstance(value, str):
        return os.path.realpath(value)  # relative paths resolve against this run's working folder
    return list(value) if isinstance(value, tuple) else value


def check_resumable(state: dict[str, Any], current_spec: dict[str, Any], path: Path, steps_per_epoch: int) -> None:
    diffs = spec_differences(state["spec"], current_spec)
    if diffs:
        raise InputError(f"{path}: the checkpoint's spec differs in {', '.join(diffs)} (only epochs, output_dir, "
                         "logging, max_steps, checkpoint_every_steps/minutes and data.workers/pin_memory/threads "
                         "may change on resume)")
    if state.get("steps_per_epoch") != steps_per_epoch:
        raise InputError(f"{path}: saved with {state.get('steps_per_epoch')} steps per epoch, the data now gives "
                         f"{steps_per_epoch} (did the data set change?)")
