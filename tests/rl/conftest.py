"""Tiny policies for the RL tests: the tiny preset on Meta-World's embodiment (one 64 px camera)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vlaforge.envs.metaworld import configure_rendering

configure_rendering()  # the tests render; pick the GL backend before anything imports mujoco


def make_stats(action_dim: int = 4, state_dim: int = 4):
    """Statistics for a policy that has not seen data: actions in [-0.9, 0.9] (q01, q99), gripper unmasked."""
    from vlaforge.types import FeatureStats, NormStats

    def fs(d, mask=None):
        return FeatureStats(
            min=-np.ones(d), max=np.ones(d), mean=np.zeros(d), std=np.full(d, 0.5),
            q01=np.full(d, -0.9), q99=np.full(d, 0.9), mask=mask,
        )  # fmt: skip

    feats = {"action": fs(action_dim, [True] * (action_dim - 1) + [False])}
    if state_dim:
        feats["observation.state"] = fs(state_dim)
    return NormStats(feats)


def save_weak_policy(directory: Path, head: str = "chunk", scale: float = 0.05) -> Path:
    """A deliberately weak tiny policy: its chunk head's output layer scaled by `scale` (bias zeroed), so it
    asks for almost no motion whatever it sees."""
    from vlaforge.envs.registry import get_env
    from vlaforge.models.policy import Policy

    emb = get_env("metaworld").embodiment(("corner2",), 64)
    torch.manual_seed(0)
    policy = Policy.from_preset("tiny", head, emb, make_stats(emb.action_dim, emb.state_dim))
    if head == "chunk":
        with torch.no_grad():
            policy.head.mlp[-1].weight.mul_(scale)
            policy.head.mlp[-1].bias.zero_()
    policy.save_pretrained(directory)
    return Path(directory)


def save_driving_policy(directory: Path, action: tuple[float, ...] = (0.0, 0.8, -0.6, 0.0)) -> Path:
    """A tiny flow-head policy whose velocity is a constant (its output layer's weight zeroed, its bias
    -`action`): Euler from x1 ~ N(0, I) to t = 0 lands on x1 + `action`, so its chunks are `action`
    (normalised units) plus unit noise whatever it sees. The default drives the hand forward and down,
    which closes drawer-close's drawer in some episodes and not in others."""
    from vlaforge.envs.registry import get_env
    from vlaforge.models.policy import Policy

    emb = get_env("metaworld").embodiment(("corner2",), 64)
    torch.manual_seed(0)
    policy = Policy.from_preset("tiny", "flow", emb, make_stats(emb.action_dim, emb.state_dim))
    with torch.no_grad():
        policy.head.action_out.weight.zero_()
        policy.head.action_out.bias.copy_(-torch.tensor(action))
    policy.save_pretrained(directory)
    return Path(directory)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: bitwise comparisons need one reduction order, and the machine has 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def weak_policy():
    return save_weak_policy


@pytest.fixture
def driving_policy():
    return save_driving_policy
