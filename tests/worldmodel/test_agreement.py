"""Agreement metrics against hand-computed values (and scipy for Spearman with ties)."""

import numpy as np
import pytest
from scipy import stats

from vlaforge.worldmodel.agreement import agreement, by_task, mmrv, pearson, predicted_self_pearson, spearman


def test_hand_computed_table():
    truth, proxy = [0.9, 0.5, 0.2, 0.0], [0.8, 0.1, 0.3, 0.0]
    # Only entries 1 and 2 swap order; |0.5 - 0.2| = 0.3 is the max violation of both: (0 + .3 + .3 + 0) / 4.
    assert mmrv(truth, proxy) == pytest.approx(0.15)
    # Deviations (.5, .1, -.2, -.4) and (.5, -.2, 0, -.3): 0.35 / sqrt(0.46 * 0.38).
    assert pearson(truth, proxy) == pytest.approx(0.35 / np.sqrt(0.46 * 0.38))
    # Ranks (4, 3, 2, 1) and (4, 2, 3, 1): 1 - 6 * 2 / (4 * 15) = 0.8.
    assert spearman(truth, proxy) == pytest.approx(0.8)
    a = agreement(truth, proxy)
    assert a["n"] == 4 and a["mean_abs_error"] == pytest.approx((0.1 + 0.4 + 0.1) / 4)
    assert mmrv(truth, truth) == 0.0 and pearson(truth, truth) == pytest.approx(1.0)


def test_mmrv_ties_follow_strict_comparison():
    # The proxy ties two entries the truth separates by 0.2: entry 0 is violated (0.2), entry 1 is not.
    assert mmrv([0.6, 0.4, 0.1], [0.5, 0.5, 0.1]) == pytest.approx(0.2 / 3)
    # The truth ties them and the proxy separates them: a violation of size |0.5 - 0.5| = 0.
    assert mmrv([0.5, 0.5, 0.1], [0.6, 0.4, 0.1]) == 0.0


def test_spearman_with_ties_matches_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 30) / 3, rng.integers(0, 4, 30) / 3
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)


def test_per_task_as_simplerenv_then_the_mean():
    # Task a: the proxy keeps the truth's order (MMRV 0). Task b: truth (0, .4, .4), proxy (.2, .1, .3):
    # entry 0 and entry 1 swap order (|0 - .4| = .4 each); entry 2 vs 1 is a tie in the truth only (|0|):
    # MMRV (.4 + .4 + 0) / 3 = 0.2667. The mean over the two tasks: 0.1333.
    rows = [{"task": "a", "sim": t, "worldmodel": p} for t, p in ((0.9, 0.8), (0.5, 0.6), (0.2, 0.1))]
    rows += [{"task": "b", "sim": t, "worldmodel": p} for t, p in ((0.0, 0.2), (0.4, 0.1), (0.4, 0.3))]
    per, mean = by_task(rows)
    assert list(per) == ["a", "b"] and per["a"]["n"] == 3
    assert per["a"]["mmrv"] == 0.0 and per["b"]["mmrv"] == pytest.approx(0.8 / 3, abs=1e-4)
    assert per["a"]["spearman"] == pytest.approx(1.0)
    assert mean["tasks"] == 2 and mean["mmrv"] == pytest.approx(0.4 / 3, abs=1e-4)
    assert mean["pearson"] == pytest.approx(
        (pearson([0.9, 0.5, 0.2], [0.8, 0.6, 0.1]) + pearson([0, 0.4, 0.4], [0.2, 0.1, 0.3])) / 2, abs=1e-4
    )
    # Pooling all six pairs is another number: it also scores the tasks' difficulty.
    assert agreement([r["sim"] for r in rows], [r["worldmodel"] for r in rows])["mmrv"] != mean["mmrv"]


def test_per_task_against_another_column():
    # The simulator against itself on other scenes: the same per-task measures over the column named.
    # Task b's reference (0.0, 0.4, 0.5) keeps the truth's order apart from the truth's tie (0.4 = 0.4, the
    # reference 0.4 < 0.5): MMRV max(|0.4 - 0.4|) = 0 for both tied entries, so 0.
    rows = [
        {"task": "a", "sim": t, "worldmodel": 0.0, "ref": r} for t, r in ((0.9, 1.0), (0.5, 0.3), (0.2, 0.4))
    ]
    rows += [
        {"task": "b", "sim": t, "worldmodel": 0.0, "ref": r} for t, r in ((0.0, 0.0), (0.4, 0.4), (0.4, 0.5))
    ]
    per, mean = by_task(rows, proxy="ref")
    # Task a: 0.5 and 0.2 swap order (|0.5 - 0.2| = 0.3 for both), 0.9 keeps its place: MMRV 0.6 / 3 = 0.2.
    assert per["a"]["mmrv"] == pytest.approx(0.2, abs=1e-4) and per["b"]["mmrv"] == 0.0
    assert per["a"]["mean_abs_error"] == pytest.approx((0.1 + 0.2 + 0.2) / 3, abs=1e-4)
    assert mean["mmrv"] == pytest.approx(0.1, abs=1e-4)
    assert per["a"]["pearson"] == pytest.approx(pearson([0.9, 0.5, 0.2], [1.0, 0.3, 0.4]), abs=1e-4)


def test_predicted_self_pearson_by_hand():
    # Rates (0.2, 0.6) and (0.4, 0.8) from 10 episodes each: the covariance across the two policies is
    # ((-0.2)(-0.2) + (0.2)(0.2)) / 1 = 0.08; p = (0.3, 0.7), p(1 - p) = 0.21 for both, times 20 / 19 =
    # 0.221053 per episode; r(10) = 0.08 / (0.08 + 0.0221053) = 0.78351, r(50) = 0.08 / 0.0844211 = 0.94763.
    r = predicted_self_pearson([0.2, 0.6], [0.4, 0.8], episodes=10, counts=(10, 50))
    assert r == {10: pytest.approx(0.7835, abs=1e-4), 50: pytest.approx(0.9476, abs=1e-4)}
    # Policies that always or never succeed: no binomial noise, r = 1 at any count.
    assert predicted_self_pearson([0.0, 1.0], [0.0, 1.0], episodes=10, counts=(1, 10)) == {1: 1.0, 10: 1.0}
    # Two evaluations that disagree (negative covariance): no signal, r = 0.
    assert predicted_self_pearson([0.2, 0.6], [0.6, 0.2], episodes=10, counts=(10,)) == {10: 0.0}
    with pytest.raises(ValueError, match="equal-length"):
        predicted_self_pearson([0.5], [0.5], episodes=10)


def test_a_judge_blind_to_a_task_is_named():
    from vlaforge.worldmodel.population import blind_tasks, format_table

    check = {
        "drawer-open-v3": {
            "episodes": 10,
            "successes": 110,
            "tpr": 0.85,
            "fpr": 0.002,
            "fires_before_success": 0,
        },
        "window-open-v3": {
            "episodes": 10,
            "successes": 154,
            "tpr": 0.09,
            "fpr": 0.0,
            "fires_before_success": 0,
        },
        "reach-v3": {"episodes": 2, "successes": 0, "tpr": None, "fpr": 0.0, "fires_before_success": 0},
    }
    assert blind_tasks(check) == ["window-open-v3"]  # 9% < 10%; no successful frame: nothing to judge
    assert blind_tasks({"unavailable": "moved"}) == []
    table = format_table({"rows": [], "judge_on_real_frames": check})
    assert "Warning: on window-open-v3 the judge sees under 10%" in table
    assert "Warning: on drawer-open-v3" not in table and "Warning: on reach-v3" not in table
