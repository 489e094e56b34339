"""Verdicts on a study's expected orderings ("metric M is lower for arm A than for arm B").

Values are paired by seed (a seed missing for either arm is left out).

- ``all-seeds`` (default): holds if every seed orders the arms the expected way (strictly) and the means differ;
  does not hold if every seed orders them the other way (strictly) and the means differ; else inconclusive.
- ``paired-t``: a paired t-test of A - B over the seeds (needs >= 2 seeds): holds if the mean difference has the
  expected sign and the two-sided p < 0.05; does not hold if it has the other sign with p < 0.05; else inconclusive.

With >= 3 seeds the paired t-test p-value is reported under either rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

ALPHA = 0.05
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
RULE_TEXT = {
    "all-seeds": "holds if every seed orders the arms the expected way and the means differ; does not hold if every "
                 "seed orders them the other way; else inconclusive",
    "paired-t": f"paired t-test over seeds: holds if the mean difference has the expected sign with p < {ALPHA}; "
                f"does not hold if the opposite sign with p < {ALPHA}; else inconclusive",
}


def paired_t_p(diffs: list[float]) -> float | None:
    """Two-sided p-value of a paired t-test on the differences (None with < 2 pairs or zero variance)."""
    if len(diffs) < 2:
        return None
    from scipy import stats

    if all(d == diffs[0] for d in diffs):
        return None if diffs[0] == 0 else 0.0
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def judge(arm: Mapping[int, float | None], than: Mapping[int, float | None], direction: str,
          rule: str = "all-seeds") -> dict:
    """The verdict for "``arm`` is ``direction`` (lower/higher) than ``than``", values keyed by seed."""
    seeds = sorted(s for s in arm if s in than and _finite(arm[s]) and _finite(than[s]))
    a = [float(arm[s]) for s in seeds]  # type: ignore[arg-type]
    b = [float(than[s]) for s in seeds]  # type: ignore[arg-type]
    sign = -1.0 if direction == "lower" else 1.0
    diffs = [x - y for x, y in zip(a, b)]
    out: dict = {"rule": rule, "rule_text": RULE_TEXT[rule], "seeds": seeds, "n": len(seeds),
                 "mean": _mean(a), "mean_than": _mean(b), "diffs": diffs, "p_value": None}
    if len(seeds) >= 3 or (rule == "paired-t" and len(seeds) >= 2):
        out["p_value"] = paired_t_p(diffs)
    if not seeds:
        return {**out, "verdict": INCONCLUSIVE, "why": "no seed has values for both arms"}
    means_differ = out["mean"] != out["mean_than"]
    if rule == "all-seeds":
        if all(sign * d > 0 for d in diffs) and means_differ:
            return {**out, "verdict": HOLDS, "why": f"all {len(seeds)} seed(s) ordered as expected"}
        if all(sign * d < 0 for d in diffs) and means_differ:
            return {**out, "verdict": FAILS, "why": f"all {len(seeds)} seed(s) ordered the other way"}
        agree = sum(sign * d > 0 for d in diffs)
        return {**out, "verdict": INCONCLUSIVE, "why": f"{agree} of {len(seeds)} seed(s) ordered as expected"}
    p = out["p_value"]
    if p is None:
        return {**out, "verdict": INCONCLUSIVE, "why": "a paired t-test needs >= 2 seeds with differing values"}
    mean_diff = sum(diffs) / len(diffs)
    if p < ALPHA and sign * mean_diff > 0:
        return {**out, "verdict": HOLDS, "why": f"p = {p:.3g} < {ALPHA}, mean difference as expected"}
    if p < ALPHA and sign * mean_diff < 0:
        return {**out, "verdict": FAILS, "why": f"p = {p:.3g} < {ALPHA}, mean difference the other way"}
    return {**out, "verdict": INCONCLUSIVE, "why": f"p = {p:.3g} (not < {ALPHA})"}


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
