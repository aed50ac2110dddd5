"""Shared fixtures for the model tests: a 4-dim Meta-World-like embodiment, its stats, random batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge.types import Embodiment, FeatureStats, NormStats

STATE_DIM = 6
INSTRUCTIONS = ["open the drawer", "Pick up the red block and place it on the shelf", "press the button"]


def make_embodiment(cameras=("corner2",), state_dim=STATE_DIM) -> Embodiment:
    return Embodiment(
        action_dim=4,
        action_names=["dx", "dy", "dz", "gripper"],
        normalize_mask=[True, True, True, False],
        action_low=[-1.0] * 4,
        action_high=[1.0] * 4,
        control_hz=80.0,
        camera_names=list(cameras),
        image_size=64,
        state_dim=state_dim,
    )


def make_stats(action_dim=4, state_dim=STATE_DIM, mask=(True, True, True, False)) -> NormStats:
    def fs(d, m=None, scale=0.8):
        return FeatureStats(
            min=-np.ones(d),
            max=np.ones(d),
            mean=np.zeros(d),
            std=np.ones(d) * 0.5,
            q01=-np.ones(d) * scale,
            q99=np.ones(d) * scale,
            mask=m,
        )

    feats = {"action": fs(action_dim, list(mask))}
    if state_dim:
        feats["observation.state"] = fs(state_dim, scale=2.0)
    return NormStats(feats)


def make_batch(B=4, H=8, seed=0, cameras=("corner2",), size=48, state_dim=STATE_DIM) -> dict:
    """A training batch as the sampler yields it (images at a size other than the model's, to test resizing)."""
    g = torch.Generator().manual_seed(seed)
    actions = torch.rand(B, H, 4, generator=g) * 1.6 - 0.8
    actions[..., 3] = torch.where(actions[..., 3] > 0, 1.0, -1.0)  # a binary gripper, as Meta-World's
    pad = torch.zeros(B, H, dtype=torch.bool)
    pad[0, H // 2 :] = True  # the first sample runs past its episode's end
    return {
        "images": {
            c: torch.randint(0, 256, (B, size, size, 3), generator=g, dtype=torch.uint8) for c in cameras
        },
        "state": torch.randn(B, state_dim, generator=g),
        "instruction": [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(B)],
        "actions": actions,
        "action_pad": pad,
        "index": torch.arange(B),
    }


@pytest.fixture
def embodiment() -> Embodiment:
    return make_embodiment()


@pytest.fixture
def norm_stats() -> NormStats:
    return make_stats()


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # One intra-op thread: these models are tiny, and on a busy 2-core machine a second OpenMP thread
    # spin-waits and makes each step ~10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


class Helpers:
    """Factory functions for tests (conftest modules are not importable by name)."""

    embodiment = staticmethod(make_embodiment)
    stats = staticmethod(make_stats)
    batch = staticmethod(make_batch)


@pytest.fixture
def h() -> type[Helpers]:
    return Helpers
