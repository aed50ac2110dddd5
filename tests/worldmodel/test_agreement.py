"""Agreement metrics against hand-computed values (and scipy for Spearman with ties)."""

import numpy as np
import pytest
from scipy import stats

from vlaforge.worldmodel.agreement import agreement, mmrv, pearson, spearman


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
