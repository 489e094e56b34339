"""Evaluation kinds of a study: which command each runs, how its JSON result becomes dotted metric names, and the
metric names each kind is known to yield (so expectations are checked before any training).

Flattening is generic: every numeric leaf of a command's result becomes ``<prefix>.<dotted path>``, so keys a
command adds later appear without changes here. Only bookkeeping (settings, sizes, the checkpoint report) and
per-item lists are left out.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

# kind -> the sslcli command group (probe results cover one checkpoint; analyze results list several).
EVAL_KINDS: dict[str, str] = {"knn": "probe", "linear": "probe", "segment-retrieval": "probe",
                              "coupling": "analyze", "positional": "analyze", "oknn": "analyze"}

# Numeric keys that describe the inputs, not the features: never metrics.
BOOKKEEPING = frozenset({
    "checkpoint", "settings", "outputs", "pairs", "objects", "skipped_images", "label", "per_pair", "per_object",
    "n", "undefined", "train_rows", "test_rows", "num_classes", "image_size", "k_clamped_to", "temperature",
    "clusters", "train_images", "test_images", "train_regions", "test_regions", "classes_scored", "bank_objects",
    "query_objects", "multilabel", "val_split", "c", "C", "best_c",
})
# Wrapper keys dropped from metric names: coupling's {"layers": {"res5": {"mean": ..}}} -> coupling.res5.mean.
WRAPPERS = frozenset({"layers"})

LAYER_STATS = ("mean", "std", "median", "q25", "q75")
# Glob patterns (after the prefix) of the metrics each kind is known to yield. A '*' may span dots: groups that
# analyses add later (e.g. planted/unplanted pairs) still match on their statistic.
DECLARED: dict[str, tuple[str, ...]] = {
    "knn": ("k.{k}.top1", "k.{k}.top5", "k.{k}.mAP"),
    "linear": ("top1", "top5", "mAP", "val_score"),
    "segment-retrieval": ("mIoU", "pixel_accuracy", "per_class_iou.*"),
    "coupling": tuple(f"*res[2-5].{s}" for s in LAYER_STATS),
    "positional": tuple(f"*res[2-5].{s}" for s in LAYER_STATS),
    "oknn": ("clean.top1", "clean.top5", "disturbed.top1", "disturbed.top5"),
}
DEFAULT_KS = "10,20,100,200"


def declared_metric_ok(kind: str, name: str, options: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``name`` (without the prefix) matches what ``kind`` declares; also a readable list of the names."""
    ks = [k.strip() for k in str(options.get("k", DEFAULT_KS)).split(",") if k.strip()]
    patterns = []
    for pattern in DECLARED[kind]:
        patterns.extend(pattern.replace("{k}", k) for k in ks) if "{k}" in pattern else patterns.append(pattern)
    if kind == "oknn" and not options.get("disturbed"):
        patterns = [p for p in patterns if not p.startswith("disturbed.")]
    known = "{" + ", ".join(patterns) + "}"
    return any(fnmatch.fnmatchcase(name, p) for p in patterns), known


def flatten(tree: Any, prefix: str) -> dict[str, float]:
    """Numeric leaves of ``tree`` as {"prefix.a.b": value}; bools, strings, lists and bookkeeping keys are skipped.
    A leaf that is None (e.g. a statistic over no defined values) becomes NaN so it still shows as missing."""
    out: dict[str, float] = {}

    def walk(node: Any, path: list[str]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                key = str(key)
                if key in BOOKKEEPING:
                    continue
                walk(value, path if key in WRAPPERS else [*path, key])
        elif isinstance(node, bool) or isinstance(node, (str, list)):
            return
        elif isinstance(node, (int, float)):
            out[".".join(path)] = float(node)
        elif node is None and path:
            out[".".join(path)] = math.nan

    walk(tree, [prefix])
    return out


def per_checkpoint(kind: str, result: dict, n_checkpoints: int) -> list[dict]:
    """Split one command result into one result per checkpoint (probes cover one; analyses list them in order)."""
    if EVAL_KINDS[kind] == "probe":
        return [result]
    entries = result.get("checkpoints")
    if not isinstance(entries, list) or len(entries) != n_checkpoints:
        raise ValueError(f"analyze {kind}: expected {n_checkpoints} entries under 'checkpoints' in its JSON result")
    return entries
