"""Execution strategies (open-loop, receding, ensemble): the actions each one executes, checked against its
definition computed here, on a stand-in env; then on Meta-World, through `evaluate` and over the wire."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from vlaforge.config import add_config_args, config_from_args
from vlaforge.envs import metaworld as mw
from vlaforge.errors import InputError
from vlaforge.eval.rollout import Job, run_episode
from vlaforge.eval.run import EvalConfig, evaluate
from vlaforge.types import Observation

TASK = "button-press-topdown-v3"
SIZE = 32
EMB = mw.embodiment(("corner2",), SIZE)


def planned(call: int, row: int) -> np.ndarray:
    """Row `row` of the chunk predicted at the controller's `call`-th call: distinct for every (call, row)."""
    return np.array([call, row, np.sin(call + 0.3 * row), 0.01 * call * row], dtype=np.float32)


class Counting:
    """A controller whose chunk is a known function of its call count (`planned`); it records whether each
    observation it planned from had an image."""

    needs_images = True

    def __init__(self, chunk: int, execute_steps: int):
        self.embodiment, self.chunk, self.execute_steps = EMB, chunk, execute_steps
        self.calls, self.saw_image = 0, []

    def reset(self, seed: int) -> None:
        self.calls, self.saw_image = 0, []

    def act(self, obs: Observation, env) -> np.ndarray:
        self.saw_image.append("corner2" in obs.images)
        chunk = np.array([planned(self.calls, j) for j in range(self.chunk)]).reshape(-1, 4)  # (H, 4)
        self.calls += 1
        return chunk


class StandInEnv:
    """Records the executed actions and counts renders; never succeeds, never ends on its own."""

    def __init__(self):
        self.actions: list[np.ndarray] = []
        self.frames_rendered = 0

    def _obs(self, render):
        self.frames_rendered += bool(render)
        images = {"corner2": np.zeros((SIZE, SIZE, 3), np.uint8)} if render else {}
        return Observation(images=images, state=np.zeros(4, np.float32), instruction="")

    def reset(self, seed, render=None):
        self.actions = []
        return self._obs(render)

    def step(self, action, render=None):
        self.actions.append(np.array(action, dtype=np.float64))
        return self._obs(render), 0.0, False, {"success": False}

    def observe(self, render=None):
        return self._obs(render)


def _roll(chunk: int, k: int, execution: str, steps: int = 12, decay: float = 0.01):
    ctl, env = Counting(chunk, k), StandInEnv()
    job = Job(TASK, 0, 7, "press")
    rec = run_episode(ctl, env, job, steps, execution=execution, ensemble_decay=decay)
    return np.stack(env.actions), ctl, env, rec


@pytest.mark.parametrize("execution", ["open-loop", "receding"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_open_loop_and_receding_run_the_first_k_actions_of_each_chunk(execution, k):
    actions, ctl, env, rec = _roll(chunk=5, k=k, execution=execution)
    expected = np.stack([planned(t // k, t % k) for t in range(12)])
    np.testing.assert_array_equal(actions, expected)
    assert ctl.calls == -(-12 // k) and rec["execute_steps"] == k
    assert all(ctl.saw_image)  # every plan got the current image...
    assert env.frames_rendered == ctl.calls  # ...and only the plans did (reset, then after each chunk)


@pytest.mark.parametrize("decay", [0.01, 0.5, 0.0])
def test_ensemble_is_the_weighted_mean_of_the_predictions_covering_each_step(decay):
    h, steps = 5, 12
    actions, ctl, env, rec = _roll(chunk=h, k=h, execution="ensemble", steps=steps, decay=decay)
    expected = []
    for t in range(steps):
        # The chunk predicted at step c covers steps c .. c+H-1; row t-c is its prediction for t.
        preds = np.stack([planned(c, t - c) for c in range(max(0, t - h + 1), t + 1)])  # oldest first
        w = np.exp(-decay * np.arange(len(preds)))  # i = 0: the oldest prediction
        expected.append((w[:, None] * preds).sum(0) / w.sum())
    np.testing.assert_allclose(actions, np.stack(expected), rtol=1e-6, atol=1e-6)
    assert ctl.calls == steps and rec["execute_steps"] == 1  # a plan at every step
    assert all(ctl.saw_image) and env.frames_rendered == steps  # so an image at every step
    if decay:  # the weights matter: not the plain mean, not the newest prediction
        plain = np.stack([planned(c, 6 - c) for c in range(2, 7)]).mean(0)
        assert not np.allclose(actions[6], plain) and not np.allclose(actions[6], planned(6, 0))


def test_ensemble_of_one_step_chunks_is_closed_loop():
    """A token head (chunk 1) under ensemble: allowed, and the same as re-planning every step."""
    ens, *_ = _roll(chunk=1, k=1, execution="ensemble")
    closed, *_ = _roll(chunk=1, k=1, execution="open-loop")
    np.testing.assert_array_equal(ens, closed)


def test_bad_chunks_are_refused():
    with pytest.raises(InputError, match=r"re-plans every 4 steps, but the policy returned a chunk of 3"):
        _roll(chunk=3, k=4, execution="receding")
    with pytest.raises(InputError, match=r"shape \(0, 4\)"):
        _roll(chunk=0, k=1, execution="ensemble")
    with pytest.raises(InputError, match="execution must be one of"):
        _roll(chunk=3, k=1, execution="closed-loop")


# ---------------------------------------------------------------- Meta-World


class LookingChunker:
    """A chunking controller that looks: the expert's action nudged by the image's brightness and by the
    row, so re-planning at another step would change the actions."""

    needs_images = True

    def __init__(self, execute_steps: int, chunk: int = 6):
        self.embodiment, self.execute_steps, self.chunk = EMB, execute_steps, chunk

    def reset(self, seed: int) -> None:
        pass

    def act(self, obs: Observation, env) -> np.ndarray:
        nudge = 0.05 * (obs.images["corner2"].mean() / 255.0 - 0.5)
        rows = env.expert_action()[None] + np.float32(nudge) * (1 + np.arange(self.chunk))[:, None]
        return rows.astype(np.float32)  # (H, 4)


class RecordingEnv(mw.MetaWorldEnv):
    def reset(self, seed, render=None):
        self.actions = []
        return super().reset(seed, render)

    def step(self, action, render=None):
        self.actions.append(np.array(action))
        return super().step(action, render)


def _meta_world(execution: str, k: int, render_every_step: bool = False):
    with RecordingEnv(TASK, image_size=SIZE, max_steps=150, render=False) as env:
        job = Job(TASK, 0, mw.episode_seed(0, TASK, 7), "press")
        rec = run_episode(
            LookingChunker(k), env, job, 150, render_every_step=render_every_step, execution=execution
        )
        return rec, np.stack(env.actions), env.frames_rendered


@pytest.mark.sim
def test_receding_k_is_open_loop_k_on_meta_world():
    rec, actions, renders = _meta_world("receding", 3)
    ref, ref_actions, ref_renders = _meta_world("open-loop", 3)
    assert rec["success"] and rec == ref
    np.testing.assert_array_equal(actions, ref_actions)
    assert renders == ref_renders == -(-rec["steps"] // 3)  # one render per plan


@pytest.mark.sim
def test_ensemble_renders_every_step_with_the_reference_outcome():
    rec, actions, renders = _meta_world("ensemble", 3)
    ref, ref_actions, ref_renders = _meta_world("ensemble", 3, render_every_step=True)
    assert rec == ref and rec["execute_steps"] == 1
    np.testing.assert_array_equal(actions, ref_actions)
    assert renders == rec["steps"]  # reset, then after every step but the last
    assert ref_renders == 1 + rec["steps"]


# ---------------------------------------------------------------- evaluate and eval_info.json


def _eval(tmp_path, name, policy, **kw):
    common = dict(tasks=TASK, episodes=1, max_steps=8, workers=0, videos=0)
    return evaluate(EvalConfig(policy=str(policy), out=tmp_path / name, **{**common, **kw}))


def _episodes(res):
    return [{k: v for k, v in r.items() if k != "video"} for r in res.info["episodes"]]


@pytest.mark.sim
def test_eval_info_records_the_strategy(tmp_path, tiny_policy):
    ckpt = tiny_policy(tmp_path / "ckpt", EMB)  # chunk of 8
    receding = _eval(tmp_path, "receding", ckpt, execution="receding", replan_every=3)
    open_loop = _eval(tmp_path, "open", ckpt, execute_steps=3)
    ensemble = _eval(tmp_path, "ensemble", "expert", execution="ensemble", ensemble_decay=0.2)
    expert = _eval(tmp_path, "expert", "expert")

    assert _episodes(receding) == _episodes(open_loop)  # same seeds, same outcomes
    assert _episodes(ensemble) == _episodes(expert)  # one-step chunks: ensembling changes nothing
    protocols = {
        name: json.loads((tmp_path / name / "eval_info.json").read_text())["protocol"]
        for name in ("receding", "open", "ensemble", "expert")
    }
    fields = ("execution", "execute_steps", "replan_every", "ensemble_decay")
    assert [protocols["receding"][f] for f in fields] == ["receding", 3, 3, None]
    assert [protocols["open"][f] for f in fields] == ["open-loop", 3, None, None]
    assert [protocols["ensemble"][f] for f in fields] == ["ensemble", 1, None, 0.2]
    assert [protocols["expert"][f] for f in fields] == ["open-loop", 1, None, None]

    with pytest.raises(InputError, match="--replan-every 9 exceeds the chunk of 8"):
        _eval(tmp_path, "long", ckpt, execution="receding", replan_every=9)
    with pytest.raises(InputError, match="--replan-every 2 exceeds the chunk of 1 action"):
        _eval(tmp_path, "expert2", "expert", execution="receding", replan_every=2)


@pytest.mark.sim
def test_a_served_policy_is_ensembled_the_same_way(tmp_path, tiny_policy):
    from vlaforge.serve.server import ServeConfig, ServerThread, load_served_policy

    ckpt = tiny_policy(tmp_path / "ckpt", EMB)
    cfg = ServeConfig(policy=str(ckpt), port=0)
    served, info = load_served_policy(cfg)
    with ServerThread(served, cfg, info) as srv:
        before = srv.server.stats["requests"]
        # one column (the training instruction), so every request is this episode's
        remote = _eval(
            tmp_path, "remote", srv.url, execution="ensemble", episodes=1, max_steps=6, instructions="train"
        )
        assert srv.server.stats["requests"] - before == 6  # a chunk every step, over the wire
    local = _eval(
        tmp_path, "local", ckpt, execution="ensemble", episodes=1, max_steps=6, instructions="train"
    )
    assert _episodes(remote) == _episodes(local)
    assert remote.info["protocol"]["execution"] == "ensemble"


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"execution": "open_loop"}, r"execution must be one of .*did you mean 'open-loop'"),
        ({"execution": "receding", "execute_steps": 2}, r"use replan_every 2 \(receding with replan_every K"),
        ({"execution": "ensemble", "execute_steps": 2}, "ensemble re-plans every step"),
        ({"replan_every": 2}, "replan_every applies to execution 'receding'.*--execution receding"),
        ({"execution": "ensemble", "replan_every": 2}, "replan_every applies to execution 'receding'"),
        ({"execution": "receding", "replan_every": 0}, "replan_every must be >= 1"),
        ({"execution": "ensemble", "ensemble_decay": -0.1}, "ensemble_decay must be a finite number >= 0"),
        ({"execution": "ensemble", "ensemble_decay": float("nan")}, "ensemble_decay must be a finite"),
        ({"ensemble_decay": 0.1}, "ensemble_decay applies to execution 'ensemble'.*--execution ensemble"),
    ],
)
def test_bad_combinations_are_refused(tmp_path, kw, match):
    with pytest.raises(InputError, match=match):
        EvalConfig(policy="expert", out=tmp_path, **kw)


def test_defaults_and_flags(tmp_path):
    assert EvalConfig(policy="expert", out=tmp_path, execution="receding").replan_every == 1
    cfg = EvalConfig(policy="expert", out=tmp_path)
    assert (cfg.execution, cfg.replan_every, cfg.ensemble_decay) == ("open-loop", None, 0.01)
    parser = argparse.ArgumentParser()
    add_config_args(parser, EvalConfig)
    ns = parser.parse_args(["--policy", "expert", "--execution", "ensemble", "--ensemble-decay", "0.1"])
    cfg = config_from_args(EvalConfig, ns)
    assert (cfg.execution, cfg.ensemble_decay, cfg.replan_every) == ("ensemble", 0.1, None)
    ns = parser.parse_args(["--policy", "expert", "--execution", "receding", "--replan-every", "4"])
    assert config_from_args(EvalConfig, ns).replan_every == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["--policy", "expert", "--execution", "async"])


@pytest.mark.sim
def test_a_history_policy_is_evaluated_on_consecutive_frames(tmp_path, tiny_policy):
    """A policy reading 2 observations: the simulator renders every step (the buffer needs each frame),
    and the episode runs to its end through `evaluate`."""
    from vlaforge.eval.baselines import PolicyController
    from vlaforge.models.policy import Policy

    ckpt = tiny_policy(tmp_path / "hist-policy", EMB, history=2)
    res = _eval(tmp_path, "hist", ckpt)
    assert [e["steps"] for e in res.info["episodes"]] == [8]
    with RecordingEnv(TASK, image_size=SIZE, max_steps=150, render=False) as env:
        rec = run_episode(PolicyController(Policy.from_pretrained(ckpt)), env, Job(TASK, 0, 5, "press"), 8)
        assert rec["steps"] == 8 and env.frames_rendered == 1 + 8  # the reset, then every step
