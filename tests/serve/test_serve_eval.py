"""`vlaforge eval --policy ws://HOST:PORT`: the act-observe loop over the wire, measured like in-process
evaluation. The served policy takes exactly the actions the in-process one takes, step by step, and the
evaluation records are the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from serve_helpers import make_stats

from vlaforge.envs import metaworld as mw
from vlaforge.eval.baselines import PolicyController
from vlaforge.eval.rollout import Job, run_episode
from vlaforge.eval.run import EvalConfig, evaluate
from vlaforge.models.policy import Policy
from vlaforge.serve.server import ServeConfig, ServerThread, load_served_policy

pytestmark = pytest.mark.sim
mw.configure_rendering()

TASK = "drawer-close-v3"
SIZE = 48


class Recording:
    """A policy wrapper that keeps every chunk it returns."""

    def __init__(self, policy):
        self.policy, self.embodiment, self.execute_steps = policy, policy.embodiment, policy.execute_steps
        self.chunks: list[np.ndarray] = []

    def predict_action(self, obs):
        chunk = self.policy.predict_action(obs)
        self.chunks.append(chunk)
        return chunk


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    emb = mw.embodiment(("corner2",), SIZE)
    policy = Policy.from_preset("tiny", "chunk", emb, make_stats(emb.action_dim, emb.state_dim), chunk_size=4)
    return policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "policy")


def test_eval_over_the_wire_equals_in_process(checkpoint, tmp_path):
    from vlaforge.client import RemotePolicy

    local = Policy.from_pretrained(checkpoint)
    cfg = ServeConfig(policy=str(checkpoint), port=0)
    served, info = load_served_policy(cfg)  # what `vlaforge serve` loads
    with ServerThread(served, cfg, info) as srv:
        job = Job(TASK, 0, mw.episode_seed(1000, TASK, 0), "close the drawer")
        chunks = {}
        for name, policy in (("local", local), ("remote", RemotePolicy(srv.url))):
            rec = Recording(policy)
            with mw.MetaWorldEnv(TASK, image_size=SIZE, max_steps=20, render=False) as env:
                run_episode(PolicyController(rec), env, job, max_steps=20)
            chunks[name] = rec.chunks
        assert len(chunks["remote"]) == len(chunks["local"]) == 5  # 20 steps, chunks of 4
        for a, b in zip(chunks["remote"], chunks["local"]):
            np.testing.assert_array_equal(a, b)

        # one column (the training instruction), so the requests counted are these episodes'
        common = dict(tasks=TASK, episodes=2, max_steps=12, workers=0, videos=0, instructions="train")
        before = srv.server.stats["requests"]
        remote = evaluate(EvalConfig(policy=srv.url, out=tmp_path / "remote", **common))
        assert srv.server.stats["requests"] - before == 2 * 3  # every plan went over the wire
    inproc = evaluate(EvalConfig(policy=str(checkpoint), out=tmp_path / "local", **common))
    strip = lambda info: [{k: v for k, v in r.items() if k != "video"} for r in info["episodes"]]  # noqa: E731
    assert strip(remote.info) == strip(inproc.info)
    assert remote.info["aggregates"] == inproc.info["aggregates"]
    proto = remote.info["protocol"]
    assert proto["checkpoint"]["remote"] == srv.url
    assert proto["checkpoint"]["model_sha256"] == inproc.info["protocol"]["checkpoint"]["model_sha256"]
    assert proto["execute_steps"] == inproc.info["protocol"]["execute_steps"] == 4
