"""The study verdicts' statistics (sslcli/study/expect.py), each figure checked against an independent computation:
closed-form t distributions, a second library (statsmodels' DescrStatsW for intervals, scipy's noncentral t for
power), Holm's procedure by hand; and the rule's calibration over simulated studies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sslcli.study.expect import FAILS, HOLDS, INCONCLUSIVE, describe, holm, judge_all, power, seeds_needed


def _by_seed(values) -> dict[int, float]:
    return dict(enumerate(values))


# ---------------------------------------------------------------------------------------------- one expectation
def test_interval_and_p_with_three_seeds_match_the_closed_form():
    # Differences 5, 6, 7: mean 6, sd 1, se 1/sqrt 3, t = 6 sqrt 3 with 2 degrees of freedom, where
    # P(|T| > t) = 1 - t / sqrt(t^2 + 2) and the 97.5 % quantile is q = (2 u - 1) / sqrt(2 u (1 - u)) at u = 0.975
    # (the closed-form inverse of that distribution; 4.3027 in every t table).
    d = describe([5.0, 6.0, 7.0])
    t = 6 * math.sqrt(3)
    assert d["p_value"] == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)
    q = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert q == pytest.approx(4.3027, abs=1e-4)
    assert d["ci"] == pytest.approx([6 - q / math.sqrt(3), 6 + q / math.sqrt(3)], rel=1e-9)
    assert d["effect_size"] == pytest.approx(6.0)  # d_z = mean / sd
    # The percentile bootstrap of 3 values lies within their range and around the mean.
    low, high = d["bootstrap_ci"]
    assert 5.0 <= low < 6.0 < high <= 7.0


def test_interval_with_two_seeds_matches_the_cauchy_closed_form():
    # n = 2: one degree of freedom, T is Cauchy: P(|T| > t) = 1 - 2 atan(t) / pi, quantile tan(pi (u - 1/2)).
    d = describe([1.0, 3.0])  # mean 2, sd sqrt 2, se 1, t = 2
    assert d["p_value"] == pytest.approx(1 - 2 * math.atan(2.0) / math.pi, rel=1e-9)
    q = math.tan(math.pi * 0.475)
    assert d["ci"] == pytest.approx([2 - q, 2 + q], rel=1e-9)
    assert d["bootstrap_ci"] is None  # two values: a bootstrap can only return them


def test_interval_matches_a_second_library():
    from statsmodels.stats.weightstats import DescrStatsW

    diffs = [0.4, -1.2, 2.5, 1.1, 0.9, 1.7]
    got = describe(diffs)
    want = DescrStatsW(np.array(diffs))
    assert got["ci"] == pytest.approx(list(want.tconfint_mean(alpha=0.05)), rel=1e-9)
    assert got["p_value"] == pytest.approx(want.ttest_mean(0.0)[1], rel=1e-9)


def test_equal_differences_are_never_p_zero():
    # [0.6, 0.6] used to give p = 0 and HOLDS: zero variance allows no test at all. Here the differences are 0.6 up
    # to float rounding (1.6 - 1.0 != 2.6 - 2.0 in binary), which must not pass for a tiny, significant spread.
    got = judge_all([(_by_seed([1.6, 2.6, 3.6, 4.6, 5.6]), _by_seed([1.0, 2.0, 3.0, 4.0, 5.0]), "higher")])[0]
    assert got["verdict"] == INCONCLUSIVE and got["p_value"] is None and got["ci"] is None
    assert got["zero_variance"] and "resolution is coarser than the effect" in got["why"]
    assert got["mean_diff"] == pytest.approx(0.6)
    ties = judge_all([(_by_seed([1.0] * 5), _by_seed([1.0] * 5), "higher")])[0]
    assert ties["verdict"] == INCONCLUSIVE and "no difference was measured" in ties["why"]


def test_missing_seeds_are_left_out_and_few_seeds_give_no_verdict():
    arm = {0: 3.0, 1: 3.1, 2: 2.9, 3: 3.05, 4: None, 9: 1.0}
    than = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}
    got = judge_all([(arm, than, "higher")])[0]
    assert got["seeds"] == [0, 1, 2, 3] and got["n"] == 4
    # p is tiny, but 4 seeds are fewer than the default minimum of 5.
    assert got["p_value"] < 1e-4 and got["verdict"] == INCONCLUSIVE and "fewer than the 5" in got["why"]
    assert judge_all([(arm, than, "higher")], min_seeds=4)[0]["verdict"] == HOLDS
    assert judge_all([(arm, than, "lower")], min_seeds=4)[0]["verdict"] == FAILS
    assert judge_all([({0: 1.0}, {0: 2.0}, "lower")])[0]["verdict"] == INCONCLUSIVE
    assert judge_all([({0: None}, {0: 1.0}, "lower")])[0]["why"] == "no seed has values for both arms"


# ----------------------------------------------------------------------------------------------- Holm and power
def _holm_by_hand(p: list[float]) -> list[float]:
    """Holm (1979): sort ascending, multiply the i-th smallest (0-based) by m - i, keep the running maximum, cap at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def test_holm_matches_the_procedure_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, 0.2, 0.011]
    assert holm(p) == pytest.approx(_holm_by_hand(p), rel=1e-12)
    # An untestable expectation counts as p = 1 in the family and stays None.
    got = holm([0.01, None, 0.02])
    assert got[1] is None and got[0] == pytest.approx(0.03) and got[2] == pytest.approx(0.04)


def test_holm_decides_the_verdict():
    # Two clear effects, each p about 0.02 alone: Holm over 3 expectations (the third null) keeps them from holding.
    rng = np.random.default_rng(5)
    comps = []
    for shift in (1.0, 1.0, 0.0):
        diffs = rng.normal(shift, 1.0, 6)
        comps.append((_by_seed(list(diffs)), _by_seed([0.0] * 6), "higher"))
    got = judge_all(comps)
    raw = [c["p_value"] for c in got]
    assert [c["p_holm"] for c in got] == pytest.approx(_holm_by_hand(raw), rel=1e-12)
    for c in got:
        want = HOLDS if c["p_holm"] < 0.05 and c["mean_diff"] > 0 else INCONCLUSIVE
        assert c["verdict"] == want


def _power_statsmodels(d: float, n: int, alpha: float) -> float:
    from statsmodels.stats.power import TTestPower

    return float(TTestPower().power(effect_size=d, nobs=n, alpha=alpha, alternative="two-sided"))


@pytest.mark.parametrize("d, alpha", [(1.0, 0.05), (0.5, 0.05 / 6), (2.0, 0.05 / 7), (0.2, 0.05)])
def test_power_and_seeds_needed_match_a_second_library(d, alpha):
    for n in (3, 5, 10):
        assert power(d, n, alpha) == pytest.approx(_power_statsmodels(d, n, alpha), abs=1e-9)
    want = next(n for n in range(2, 5000) if _power_statsmodels(d, n, alpha) >= 0.8)
    assert seeds_needed(d, alpha) == want
    assert seeds_needed(-d, alpha) == want and seeds_needed(0.0, alpha) is None


def test_power_of_large_effects_is_finite():
    # statsmodels returns NaN here (d 5, 5 seeds, alpha 0.05 / 6); the noncentral t says almost surely significant.
    assert 0.99 < power(5.0, 5, 0.05 / 6) <= 1.0 and seeds_needed(40.0, 0.05) == 2


def test_inconclusive_verdict_states_the_seeds_needed():
    diffs = [1.0, -0.5, 2.0, 0.5, 1.5]  # mean 0.9, sd 0.962: p about 0.1
    got = judge_all([(_by_seed(diffs), _by_seed([0.0] * 5), "higher")])[0]
    assert got["verdict"] == INCONCLUSIVE
    want = max(5, next(n for n in range(2, 500) if _power_statsmodels(got["effect_size"], n, 0.05) >= 0.8))
    assert got["seeds_needed"] == want and f"{want} seeds for 80 % power" in got["why"]


# ------------------------------------------------------------------------------------------------- calibration
# A study like the committed planted ones: 5 arms, 6 expectations between them (planted-detcon's pairs).
PAIRS = [(1, 0), (2, 1), (3, 1), (2, 3), (4, 2), (2, 1)]


@pytest.fixture
def frozen_heap():
    """statsmodels' Holm calls gc.collect() on every call (a full collection of every object of the process): freeze
    the objects that exist now, after one warm-up call has imported what the verdicts use, so 2,000 simulated
    studies take seconds instead of minutes. The verdicts are unchanged by it."""
    import gc

    judge_all([({0: 1.0, 1: 2.0}, {0: 0.0, 1: 0.5}, "higher")])
    gc.freeze()
    yield
    gc.unfreeze()


def _simulated_study(rng, n_seeds: int, effects: dict[int, float]) -> list[dict]:
    """Per-seed values of 5 arms: a shared seed effect (data, init) plus each arm's own noise; arm a's true mean is
    effects.get(a, 0). Values of one seed are correlated across arms, as in a real study."""
    seed_effect = rng.normal(0.0, 1.0, n_seeds)
    arms = [seed_effect + effects.get(a, 0.0) + rng.normal(0.0, 1.0, n_seeds) for a in range(5)]
    comps = [(_by_seed(list(arms[a])), _by_seed(list(arms[b])), "higher") for a, b in PAIRS]
    return judge_all(comps, details=False)


def test_null_studies_rarely_give_any_verdict(frozen_heap):
    rng = np.random.default_rng(2026)
    studies = 1000
    any_verdict = sum(any(c["verdict"] != INCONCLUSIVE for c in _simulated_study(rng, 5, {}))
                      for _ in range(studies))
    # Holm bounds the family-wise error rate by alpha = 5 %; allow two simulation standard errors above it.
    assert any_verdict / studies <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / studies)


def test_the_share_that_holds_matches_the_stated_power(frozen_heap):
    # One true effect of one SD of the per-seed differences (d_z = 1) in the first expectation, the others null,
    # 10 seeds. Arm 1 vs arm 0 (arm 0 is in no other expectation): differences have SD sqrt 2 (two unit noises), so
    # arm 0 sits sqrt 2 lower.
    rng = np.random.default_rng(7)
    studies = 1000
    holds = sum(_simulated_study(rng, 10, {0: -math.sqrt(2.0)})[0]["verdict"] == HOLDS for _ in range(studies))
    stated = power(1.0, 10, 0.05 / len(PAIRS))  # what the report states for d_z = 1, 10 seeds, this family
    assert abs(holds / studies - stated) <= 0.05
