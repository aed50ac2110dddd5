"""Several envs rendering in one process (batched evaluation keeps them alive side by side): closing one
must leave the others' images intact."""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.envs.metaworld import MetaWorldEnv, configure_rendering

configure_rendering()


def _reference(task: str, seed: int) -> np.ndarray:
    with MetaWorldEnv(task, image_size=32, render=False) as env:
        return env.reset(seed, render=True).images["corner2"]


@pytest.mark.sim
def test_closing_one_env_leaves_the_others_rendering_the_same():
    ref_a, ref_b = _reference("reach-v3", 1), _reference("button-press-topdown-v3", 2)
    a = MetaWorldEnv("reach-v3", image_size=32, render=False)
    b = MetaWorldEnv("button-press-topdown-v3", image_size=32, render=False)
    try:
        np.testing.assert_array_equal(a.reset(1, render=True).images["corner2"], ref_a)
        np.testing.assert_array_equal(b.reset(2, render=True).images["corner2"], ref_b)
        a.close()  # b drew last, so a's GL context is not the current one
        np.testing.assert_array_equal(b.observe(render=True).images["corner2"], ref_b)
        with MetaWorldEnv("reach-v3", image_size=32, render=False) as c:
            np.testing.assert_array_equal(c.reset(1, render=True).images["corner2"], ref_a)
            np.testing.assert_array_equal(b.observe(render=True).images["corner2"], ref_b)
    finally:
        b.close()
