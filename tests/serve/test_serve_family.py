"""A pi0 / SmolVLA policy in LeRobot's layout, served (`vlaforge serve --policy DIR` loads it) and evaluated
for one short Meta-World episode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge.envs import metaworld as mw
from vlaforge.eval.run import EvalConfig, evaluate
from vlaforge.models.lerobot_tiny import tiny_policy, write_tokenizer
from vlaforge.models.policy import Policy
from vlaforge.serve.server import ServeConfig, ServerThread, load_served_policy

SIZE = 48


@pytest.fixture(scope="module", params=["pi0", "smolvla"])
def family_policy(request, tmp_path_factory):
    """A tiny random family policy for Meta-World's Sawyer, saved in LeRobot's layout."""
    root = tmp_path_factory.mktemp(request.param)
    write_tokenizer(root / "tok")
    emb = mw.embodiment(("corner2",), SIZE)
    policy = tiny_policy(request.param, root / "tok", seed=2, embodiment=emb)
    return policy, policy.save_pretrained(root / "lerobot", format="lerobot")


def test_one_request_through_the_real_server(family_policy):
    from vlaforge.client import RemotePolicy

    _, path = family_policy
    local = Policy.from_pretrained(path)
    cfg = ServeConfig(policy=str(path), port=0)
    served, info = load_served_policy(cfg)  # what `vlaforge serve` loads
    assert info["checkpoint"] == path.name and len(info["model_sha256"]) == 64
    rng = np.random.default_rng(0)
    obs = {
        "images": {"corner2": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)},
        "state": rng.standard_normal(local.embodiment.state_dim).astype(np.float32),
        "instruction": "close the drawer",
    }
    with ServerThread(served, cfg, info) as srv:
        torch.manual_seed(11)  # the server draws the flow's noise from torch's global stream
        remote = RemotePolicy(srv.url).predict_action(obs)
    torch.manual_seed(11)
    want = local.predict_action(obs)
    assert remote.shape == (local.chunk_size, 4)
    np.testing.assert_allclose(remote, want, rtol=1e-5, atol=1e-6)
    low, high = np.asarray(local.embodiment.action_low), np.asarray(local.embodiment.action_high)
    assert ((remote >= low) & (remote <= high)).all()  # clipped to the Sawyer's limits


@pytest.mark.sim
def test_one_short_evaluation_episode(family_policy, tmp_path):
    policy, ckpt = family_policy  # the LeRobot directory itself
    res = evaluate(
        EvalConfig(policy=str(ckpt), tasks="drawer-close-v3", episodes=1, max_steps=6, workers=0, videos=0,
                   out=tmp_path / "eval")
    )  # fmt: skip
    (ep,) = res.info["episodes"]
    assert ep["task"] == "drawer-close-v3" and ep["steps"] == 6 and isinstance(ep["success"], bool)
    assert res.info["protocol"]["execute_steps"] == policy.execute_steps
