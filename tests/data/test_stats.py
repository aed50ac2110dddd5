"""compute_stats equals numpy on the same arrays; images per channel in [0, 1], shaped (3, 1, 1)."""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.data.stats import (
    QUANTILES,
    STATS_KEYS,
    compute_stats,
    sample_indices,
    stats_from_json,
    stats_to_json,
)

from .conftest import smooth_images


def test_numeric_stats_equal_numpy():
    rng = np.random.default_rng(0)
    arrays = {
        "action": rng.normal(size=(500, 7)).astype(np.float32),
        "reward": rng.uniform(size=500),
        "next.success": rng.uniform(size=500) > 0.7,
    }
    stats = compute_stats(arrays)
    for key, arr in arrays.items():
        x = arr.astype(np.float64).reshape(500, -1)
        s = stats[key]
        assert set(s) == set(STATS_KEYS)
        np.testing.assert_array_equal(s["min"], x.min(0))
        np.testing.assert_array_equal(s["max"], x.max(0))
        np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-12)
        for q, p in QUANTILES.items():
            np.testing.assert_allclose(s[q], np.quantile(x, p, axis=0), rtol=1e-12)
        assert s["count"].tolist() == [500]
        assert s["mean"].shape == (x.shape[1],)


def test_a_feature_of_shape_h_d_keeps_its_shape():
    """An (N, H, D) feature (an action plan) is reduced over frames only; its statistics are (H, D), as
    LeRobot's compute_stats reduces a non-image feature over axis 0 alone."""
    rng = np.random.default_rng(1)
    plans = rng.normal(size=(300, 8, 4)).astype(np.float32)
    s = compute_stats({"expert_plan": plans})["expert_plan"]
    x = plans.astype(np.float64)
    for key in ("min", "max", "mean", "std"):
        assert s[key].shape == (8, 4)
    np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-12)
    np.testing.assert_allclose(s["q99"], np.quantile(x, 0.99, axis=0), rtol=1e-12)
    assert s["count"].tolist() == [300]
    back = stats_from_json(stats_to_json({"expert_plan": s}))["expert_plan"]
    np.testing.assert_array_equal(back["q01"], s["q01"])


def test_image_stats_per_channel():
    imgs = smooth_images(40, 24, 24, seed=1)
    s = compute_stats({"cam": imgs})["cam"]
    pix = imgs.reshape(-1, 3).astype(np.float64) / 255
    for key in ("min", "max", "mean", "std", "q01", "q50", "q99"):
        assert s[key].shape == (3, 1, 1)
    np.testing.assert_allclose(s["mean"].reshape(3), pix.mean(0))
    np.testing.assert_allclose(s["std"].reshape(3), pix.std(0))
    np.testing.assert_allclose(s["q10"].reshape(3), np.quantile(pix, 0.1, axis=0))
    assert s["count"].tolist() == [40]
    sub = compute_stats({"cam": imgs}, max_image_frames=10)["cam"]
    assert sub["count"].tolist() == [10]
    np.testing.assert_allclose(sub["mean"].reshape(3), pix.mean(0), atol=0.02)


def test_sample_indices_and_json_round_trip():
    assert sample_indices(5, 10).tolist() == [0, 1, 2, 3, 4]
    idx = sample_indices(1000, 10)
    assert len(idx) == 10 and idx[0] == 0 and idx[-1] == 999
    stats = compute_stats({"a": np.arange(12.0).reshape(4, 3), "cam": smooth_images(3, 8, 8, 0)})
    back = stats_from_json(stats_to_json(stats))
    for f in stats:
        for k in stats[f]:
            np.testing.assert_allclose(back[f][k], stats[f][k])
            assert back[f][k].shape == np.asarray(stats[f][k]).shape


def test_empty_and_bad_dtype():
    with pytest.raises(ValueError, match="empty"):
        compute_stats({"a": np.zeros((0, 3))})
    with pytest.raises(ValueError, match="dtype"):
        compute_stats({"a": np.array(["x", "y"])})
