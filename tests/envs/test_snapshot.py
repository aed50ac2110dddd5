"""Meta-World's `snapshot`/`restore`: running ahead from a saved state leaves the episode as it was.

The reference is the same episode stepped without interruption; the comparison is bit for bit (MuJoCo's
solver starts each step from the last one's solution, so a restore that missed any of it would drift by
~1e-12 within a few steps, which `==` sees).
"""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.envs import metaworld as mw

mw.configure_rendering()

pytestmark = pytest.mark.sim


def _steps(env, actions):
    out = []
    for a in actions:
        obs, reward, done, info = env.step(a, render=False)
        out.append((env.raw_observation.copy(), reward, done, info["success"]))
    return out


@pytest.mark.parametrize("task", ["pick-place-v3", "door-open-v3"])
def test_running_ahead_and_restoring_leaves_the_episode_bit_for_bit(task):
    actions = np.random.default_rng(3).uniform(-1, 1, (40, 4)).astype(np.float32)
    with mw.MetaWorldEnv(task, image_size=32, max_steps=45) as env:
        env.reset(11, render=False)
        reference = _steps(env, actions)
        env.reset(11, render=False)
        got = []
        for k, a in enumerate(actions):
            if k % 3 == 0:  # the expert runs 6 steps ahead, then the episode is put back
                snap = env.snapshot()
                start = env.raw_observation.copy()
                for _ in range(6):
                    env.step(env.expert_action(), render=False)
                assert not np.array_equal(env.raw_observation, start)  # it did move
                env.restore(snap)
            got += _steps(env, [a])
    for (o1, r1, d1, s1), (o2, r2, d2, s2) in zip(reference, got):
        np.testing.assert_array_equal(o1, o2)
        assert (r1, d1, s1) == (r2, d2, s2)


def test_restore_puts_back_what_the_camera_sees_and_the_step_count():
    with mw.MetaWorldEnv("reach-v3", image_size=32, max_steps=10) as env:
        env.reset(5)
        for _ in range(4):
            env.step(env.expert_action())
        before = env.observe(render=True)
        snap = env.snapshot()
        for _ in range(6):  # to the episode's end
            env.step(np.ones(4, np.float32), render=False)
        with pytest.raises(RuntimeError, match="max_steps"):
            env.step(np.zeros(4, np.float32))
        env.restore(snap)
        after = env.observe(render=True)
        np.testing.assert_array_equal(before.images["corner2"], after.images["corner2"])
        np.testing.assert_array_equal(before.state, after.state)
        for _ in range(6):  # six steps are left again, not zero
            *_, done, _ = env.step(np.zeros(4, np.float32), render=False)
        assert done


def test_a_snapshot_goes_back_into_its_own_task_only():
    with mw.MetaWorldEnv("reach-v3", image_size=16) as a, mw.MetaWorldEnv("push-v3", image_size=16) as b:
        a.reset(0, render=False)
        b.reset(0, render=False)
        with pytest.raises(ValueError, match="reach-v3 cannot be restored into push-v3"):
            b.restore(a.snapshot())
