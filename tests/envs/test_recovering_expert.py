"""The recovering expert: the script itself from the task's initial states, and a way out of the state the
script cannot leave (fingers shut on top of the puck), on Meta-World's real push and pick-place."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from vlaforge.envs import metaworld as mw
from vlaforge.envs.metaworld import MetaWorldEnv, make_expert
from vlaforge.envs.metaworld.experts import RECOVERING_TASKS, RecoveringExpert
from vlaforge.errors import InputError

mw.configure_rendering()

pytestmark = pytest.mark.sim

TASKS = ["push-v3", "pick-place-v3"]


def _raw(env: MetaWorldEnv) -> np.ndarray:
    return env._raw_obs


def _act(expert, obs: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.clip(np.asarray(expert.get_action(obs), np.float32), -1.0, 1.0)


@pytest.mark.parametrize("task", TASKS)
def test_it_is_the_script_from_initial_states(task):
    """Along the script's own episodes (8 seeds) the recovering expert never steps in and gives the
    script's action at every step, so demonstrations and labels away from trouble are unchanged."""
    env = MetaWorldEnv(task, image_size=32, max_steps=200, render=False)
    rec = make_expert(task, "recovering")
    assert isinstance(rec, RecoveringExpert)
    for seed in range(8):
        env.reset(seed, render=False)
        for _ in range(200):
            obs = _raw(env)
            script = env.expert_action()
            assert not rec.recovering(obs)
            np.testing.assert_array_equal(_act(rec, obs), script)
            *_, info = env.step(script, render=False)
            if info["success"]:
                break
        assert info["success"], f"{task} seed {seed}: the script itself failed"


def _stuck(env: MetaWorldEnv, seed: int) -> None:
    """Leaves the hand over the puck with the fingers shut, resting on the puck's top: the hand goes up and
    over the puck with the fingers closing, then down until they press on it (where a policy that closed
    its fingers too early leaves these tasks)."""
    env.reset(seed, render=False)
    for k in range(60):
        o = _raw(env)
        hand, puck = o[:3], o[4:7]
        height = 0.15 if k < 35 else 0.0  # over the puck first, then down onto it
        target = puck + np.array([-0.005, 0.0, height])
        env.step(np.concatenate([np.clip(10 * (target - hand), -1, 1), [1.0]]), render=False)


@pytest.mark.parametrize("task", TASKS)
def test_it_gets_out_of_the_state_the_script_cannot_leave(task):
    env = MetaWorldEnv(task, image_size=32, max_steps=500, render=False)
    _stuck(env, seed=3)
    obs = _raw(env)
    assert obs[3] < 0.5 and obs[2] - obs[6] > 0.05, "the fingers should be shut, resting on the puck"
    start = env.snapshot()
    results = {}
    for variant in ("script", "recovering"):
        env.restore(start)
        expert = make_expert(task, variant)
        won = False
        for _ in range(300):
            *_, info = env.step(_act(expert, _raw(env)), render=False)
            if info["success"]:
                won = True
                break
        results[variant] = won
    assert results == {"script": False, "recovering": True}


def test_variants_and_refusals():
    assert set(RECOVERING_TASKS) == set(TASKS)
    # A task without a recovery rule keeps its script under the recovering variant.
    assert type(make_expert("reach-v3", "recovering")) is type(make_expert("reach-v3"))
    with pytest.raises(InputError, match="unknown expert variant 'clever'"):
        make_expert("push-v3", "clever")
    with pytest.raises(InputError, match="recovering expert knows only"):
        RecoveringExpert("reach-v3", make_expert("reach-v3"))
    env = MetaWorldEnv("push-v3", image_size=32, max_steps=20, render=False, expert="recovering")
    assert isinstance(env._expert, RecoveringExpert)
