import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vlaforge.actions import Normalizer
from vlaforge.types import FeatureStats


def _stats(mask=None, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1000, 4)) * [1.0, 2.0, 0.5, 1.0] + [0.0, 1.0, -1.0, 0.0]
    return x, FeatureStats(
        min=x.min(0),
        max=x.max(0),
        mean=x.mean(0),
        std=x.std(0),
        q01=np.quantile(x, 0.01, axis=0),
        q99=np.quantile(x, 0.99, axis=0),
        mask=mask,
    )


def test_q99_matches_openvla_formula_and_mask_passes_gripper_through():
    x, s = _stats(mask=[True, True, True, False])
    n = Normalizer(s, "q99")
    y = n.normalize(x)
    ref = np.clip(2 * (x - s.q01) / (s.q99 - s.q01 + 1e-8) - 1, -1, 1)
    np.testing.assert_allclose(y[:, :3], ref[:, :3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[:, 3], x[:, 3].astype(np.float32))
    assert y.dtype == np.float32 and np.all(np.abs(y[:, :3]) <= 1)
    back = n.unnormalize(y)
    inside = np.all((x >= s.q01) & (x <= s.q99), axis=1)
    np.testing.assert_allclose(back[inside], x[inside], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["q99", "min_max", "mean_std"])
def test_round_trip_inside_bounds(mode):
    x, s = _stats()
    n = Normalizer(s, mode)
    lo, hi = (s.q01, s.q99) if mode == "q99" else (s.min, s.max)
    xin = x[np.all((x >= lo) & (x <= hi), axis=1)]
    np.testing.assert_allclose(n.unnormalize(n.normalize(xin)), xin, rtol=1e-4, atol=1e-4)


@given(arrays(np.float64, (5, 4), elements=st.floats(-1e3, 1e3, allow_nan=False)))
def test_q99_output_always_in_range(x):
    _, s = _stats()
    y = Normalizer(s, "q99").normalize(x)
    assert np.all(np.abs(y) <= 1.0)


def test_constant_dim_does_not_divide_by_zero():
    s = FeatureStats(min=[1, 0], max=[1, 1], mean=[1, 0.5], std=[0, 0.3], q01=[1, 0], q99=[1, 1])
    y = Normalizer(s, "q99").normalize(np.array([[1.0, 0.5]]))
    assert np.all(np.isfinite(y))


def test_errors_name_the_shape():
    _, s = _stats()
    with pytest.raises(ValueError, match="last dim 4"):
        Normalizer(s).normalize(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="mode"):
        Normalizer(s, "bogus")
