"""Wilson intervals against published reference values, and pooling per task / group / overall."""

import math

import pytest

from vlaforge.eval.stats import Z95, Rate, aggregate, wilson_interval

# Reference values: R `prop.test(x, n, correct = FALSE)$conf.int` and statsmodels
# `proportion_confint(x, n, method="wilson")` (both give these to the digits shown).
REFERENCE = [
    (0, 10, 0.0, 0.2775328),
    (10, 10, 0.7224672, 1.0),
    (5, 10, 0.2365931, 0.7634069),
    (1, 10, 0.0178762, 0.4041500),
    (7, 20, 0.1811918, 0.5671457),
]


@pytest.mark.parametrize("k,n,low,high", REFERENCE)
def test_wilson_matches_reference(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-6)
    assert hi == pytest.approx(high, abs=1e-6)


@pytest.mark.parametrize("k,n", [(0, 1), (1, 3), (3, 7), (17, 50), (49, 50), (250, 500)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    # The Wilson bounds are the p at which the score test is exactly at z: (phat - p)^2 = z^2 p (1 - p) / n.
    phat = k / n
    for p in wilson_interval(k, n):
        if p in (0.0, 1.0) and p == phat:
            continue
        assert (phat - p) ** 2 == pytest.approx(Z95**2 * p * (1 - p) / n, rel=1e-9, abs=1e-12)


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(3, 9)
    assert 0 < lo < 3 / 9 < hi < 1
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(4, 3)
    with pytest.raises(ValueError):
        wilson_interval(-1, 3)


def test_interval_narrows_with_more_episodes():
    w10 = wilson_interval(5, 10)
    w100 = wilson_interval(50, 100)
    assert (w100[1] - w100[0]) < (w10[1] - w10[0])
    assert math.isclose(sum(w100) / 2, 0.5)


def test_aggregate_pools_per_task_group_and_overall():
    difficulty = {"a": "easy", "b": "easy", "c": "hard"}
    eps = (
        [{"task": "a", "success": s} for s in (True, True, True, False)]
        + [{"task": "b", "success": s} for s in (False, False)]
        + [{"task": "c", "success": s} for s in (True, False, False)]
    )
    agg = aggregate(eps, difficulty)
    assert list(agg["per_task"]) == ["a", "b", "c"]
    assert agg["per_task"]["a"] == Rate.of(3, 4).to_dict()
    assert agg["per_task"]["b"]["rate"] == 0.0
    assert list(agg["per_group"]) == ["easy", "hard"]  # medium / very_hard have no episodes
    assert agg["per_group"]["easy"]["successes"] == 3 and agg["per_group"]["easy"]["n"] == 6
    assert agg["per_group"]["hard"] == Rate.of(1, 3).to_dict()
    assert agg["overall"]["n"] == 9 and agg["overall"]["successes"] == 4
    lo, hi = wilson_interval(4, 9)
    assert agg["overall"]["ci_low"] == lo and agg["overall"]["ci_high"] == hi


def test_aggregate_rejects_unknown_task():
    with pytest.raises(ValueError, match="no difficulty group"):
        aggregate([{"task": "zzz", "success": True}], {"a": "easy"})
