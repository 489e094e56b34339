"""Verdicts on a study's expected orderings ("metric M is higher for arm A than for arm B"), by estimation.

For each expectation the per-seed differences A - B (paired by seed; a seed missing for either arm is left out) give:
the mean difference with a 95 % t-interval and a bootstrap interval, the standardised effect size d_z (mean / SD of
the differences), a two-sided one-sample t-test of "mean difference = 0", and, across all expectations of the study,
Holm-adjusted p-values (statsmodels). The verdict:

- HOLDS: n >= ``min_seeds`` and the Holm-adjusted p < alpha with the mean difference in the expected direction
  (equivalently: the interval at Holm's level for this test excludes zero on the expected side);
- DOES NOT HOLD: the mirror (Holm-adjusted p < alpha, the other direction);
- INCONCLUSIVE otherwise, with the reason and the seeds needed for 80 % power at the observed effect.

Across a study the chance of any HOLDS or DOES NOT HOLD when no arm differs is at most alpha (Holm controls the
family-wise error rate under any dependence between the tests). Every statistic comes from scipy or statsmodels.
Zero variance (every seed gives the same difference) allows no test: the metric's resolution is coarser than the
effect, and the expectation stays inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

ALPHA = 0.05
CONFIDENCE = 0.95
MIN_SEEDS = 5
POWER = 0.8
BOOTSTRAP_RESAMPLES = 9999
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
RULE = "paired-t"
RULE_TEXT = ("two-sided paired t-test of the per-seed differences, Holm-corrected across the study's expectations: "
             "holds with at least {min_seeds} seeds and a Holm-adjusted p below {alpha} with the mean difference in the "
             "expected direction; does not hold with the same in the opposite direction; else inconclusive")


def paired(arm: Mapping[int, float | None], than: Mapping[int, float | None]) -> tuple[list[int], list[float]]:
    """Seeds with finite values for both arms, and the differences arm - than."""
    seeds = sorted(s for s in arm if s in than and _finite(arm[s]) and _finite(than[s]))
    return seeds, [float(arm[s]) - float(than[s]) for s in seeds]  # type: ignore[arg-type]


def describe(diffs: Sequence[float], confidence: float = CONFIDENCE, bootstrap: bool = True) -> dict:
    """Mean difference, its t-interval and bootstrap interval, d_z and the two-sided p of a one-sample t-test.

    Undefined statistics are None: every one with n < 2; the interval, d_z and p when the differences have zero
    variance (``zero_variance``); the bootstrap interval with n < 3 (it can only return the observed values)."""
    from scipy import stats

    x = np.asarray(diffs, dtype=float)
    n = len(x)
    out: dict = {"n": n, "mean_diff": float(x.mean()) if n else None, "sd_diff": None, "ci": None,
                 "bootstrap_ci": None, "effect_size": None, "p_value": None, "zero_variance": False}
    if n < 2:
        return out
    sd = float(x.std(ddof=1))
    out["sd_diff"] = sd
    # Equal up to float rounding (e.g. 1.6 - 1.0 and 2.6 - 2.0) is equal: a spread of 1e-16 is no measurement.
    if np.ptp(x) <= 1e-9 * max(float(np.abs(x).max()), 1e-300) or not math.isfinite(sd):
        out["zero_variance"] = True
        return out
    test = stats.ttest_1samp(x, 0.0)
    ci = test.confidence_interval(confidence)
    out.update(ci=[float(ci.low), float(ci.high)], effect_size=float(x.mean() / sd), p_value=float(test.pvalue))
    if bootstrap and n >= 3:
        boot = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                               method="percentile", random_state=np.random.default_rng(0))
        out["bootstrap_ci"] = [float(boot.confidence_interval.low), float(boot.confidence_interval.high)]
    return out


def holm(p_values: Sequence[float | None], alpha: float = ALPHA) -> list[float | None]:
    """Holm-adjusted p-values (statsmodels). An untestable expectation (None) counts as p = 1 in the family, so the
    correction is never weaker than for the number of expectations the study states; it stays None."""
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    filled = [1.0 if p is None else p for p in p_values]
    adjusted = multipletests(filled, alpha=alpha, method="holm")[1]
    return [None if p is None else float(a) for p, a in zip(p_values, adjusted)]


def power(effect_size: float, n: int, alpha: float) -> float:
    """Power of a two-sided one-sample t-test with n pairs at effect size d_z and level alpha: P(|T| > t_crit) for
    T ~ noncentral t(n - 1, d_z sqrt n), from scipy. (statsmodels' TTestPower gives the same where it is finite but
    returns NaN for some large effects; the lower tail is taken as P(T' > t_crit) with T' ~ nct(n - 1, -d_z sqrt n),
    which scipy keeps finite where its cdf at -t_crit is not.)"""
    from scipy import stats

    df, nc = n - 1, abs(effect_size) * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def seeds_needed(effect_size: float | None, alpha: float, target: float = POWER) -> int | None:
    """The fewest seeds (>= 2) giving ``target`` power at effect size d_z and level alpha (None without an effect;
    power grows with n, so doubling then bisection finds it)."""
    if effect_size is None or effect_size == 0 or not math.isfinite(effect_size):
        return None
    low, high = 1, 2
    while power(effect_size, high, alpha) < target:
        low, high = high, high * 2
    while high - low > 1:  # power(low) < target <= power(high)
        mid = (low + high) // 2
        low, high = (low, mid) if power(effect_size, mid, alpha) >= target else (mid, high)
    return high


def judge_all(comparisons: Sequence[tuple[Mapping[int, float | None], Mapping[int, float | None], str]],
              min_seeds: int = MIN_SEEDS, alpha: float = ALPHA, details: bool = True) -> list[dict]:
    """Verdicts for a study's expectations, given as (arm values, than values, "higher"|"lower"), values by seed.

    The power figures use alpha / m (Bonferroni, the first and strictest step of Holm), so "seeds needed" is what
    makes the expectation hold even if it is the family's weakest result. ``details=False`` leaves out what the
    verdict does not depend on (the bootstrap interval, power, seeds needed): for simulations of many studies."""
    m = len(comparisons)
    described = []
    for arm, than, direction in comparisons:
        seeds, diffs = paired(arm, than)
        described.append({"seeds": seeds, "diffs": diffs, "direction": direction,
                          "mean": _mean([float(arm[s]) for s in seeds]),  # type: ignore[arg-type]
                          "mean_than": _mean([float(than[s]) for s in seeds]),  # type: ignore[arg-type]
                          **describe(diffs, bootstrap=details)})
    adjusted = holm([d["p_value"] for d in described], alpha)
    level = alpha / max(m, 1)
    out = []
    for d, p_holm in zip(described, adjusted):
        d["p_holm"] = p_holm
        has_effect = details and d["effect_size"] is not None
        d["power"] = power(d["effect_size"], d["n"], level) if has_effect else None
        d["seeds_needed"] = seeds_needed(d["effect_size"], level) if has_effect else None
        if d["seeds_needed"] is not None:
            d["seeds_needed"] = max(d["seeds_needed"], min_seeds)
        d.update(zip(("verdict", "why"), _verdict(d, min_seeds, alpha)))
        d.update(rule=RULE, rule_text=RULE_TEXT.format(min_seeds=min_seeds, alpha=alpha), alpha=alpha,
                 min_seeds=min_seeds, family_size=m, test="two-sided")
        out.append(d)
    return out


def _verdict(d: dict, min_seeds: int, alpha: float) -> tuple[str, str]:
    n, sign = d["n"], (-1.0 if d["direction"] == "lower" else 1.0)
    if n == 0:
        return INCONCLUSIVE, "no seed has values for both arms"
    if n < 2:
        return INCONCLUSIVE, f"1 seed: no interval or test is possible (needs 2, and {min_seeds} for a verdict)"
    if d["zero_variance"]:
        if d["mean_diff"] == 0:
            return INCONCLUSIVE, f"all {n} seeds give equal values for both arms: no difference was measured"
        return INCONCLUSIVE, (f"all {n} seeds give the same difference ({d['mean_diff']:.4g}): zero variance, so no "
                              "interval or test; the metric's resolution is coarser than the effect")
    p_holm = d["p_holm"]
    significant = p_holm is not None and p_holm < alpha
    if n < min_seeds:
        more = " (significant before that rule)" if significant else ""
        return INCONCLUSIVE, f"{n} seeds, fewer than the {min_seeds} a verdict needs{more}{_needed(d)}"
    if significant and sign * d["mean_diff"] > 0:
        return HOLDS, f"Holm-adjusted p = {p_holm:.3g}, below {alpha}, difference in the expected direction"
    if significant:
        return FAILS, f"Holm-adjusted p = {p_holm:.3g}, below {alpha}, difference in the opposite direction"
    return INCONCLUSIVE, f"Holm-adjusted p = {p_holm:.3g}, not below {alpha}{_needed(d)}"


def _needed(d: dict) -> str:
    return "" if d["seeds_needed"] is None else f"; {d['seeds_needed']} seeds for 80 % power at the observed effect"


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
