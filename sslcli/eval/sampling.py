"""The evaluation's own noise: the sampling standard error of an accuracy over the rows a probe evaluated."""

from __future__ import annotations

import math


def binomial_se(percent: float, n: int) -> float | None:
    """Standard error (percentage points) of an accuracy of ``percent`` % over ``n`` independent rows:
    100 * sqrt(p (1 - p) / n). It is the probe's own noise, beside the spread over seeds (None without rows)."""
    if n <= 0:
        return None
    p = percent / 100.0
    return 100.0 * math.sqrt(max(p * (1.0 - p), 0.0) / n)


def with_se(accuracies: dict[str, float], n: int) -> dict[str, float | None]:
    """{"top1": a, "top5": b} -> the same plus {"top1_se": SE(a), "top5_se": SE(b)} over ``n`` evaluated rows."""
    return {**accuracies, **{f"{k}_se": binomial_se(v, n) for k, v in accuracies.items() if k.startswith("top")}}
