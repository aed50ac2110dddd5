"""Tiny LeRobot v3.0 datasets for the training tests, written with the real writer (real mp4s).

The actions are a fixed function of the state (a reach towards a per-task goal, gripper closing near
it), so the tiny preset can learn them in a few hundred steps through its state token
(`vlaforge.data.synth`).
"""

from __future__ import annotations

import pytest
import torch

from vlaforge.data.synth import SynthConfig, write_synthetic


def make_dataset(
    root, n_episodes: int = 3, length: int = 30, size: int = 64, n_tasks: int = 2, seed: int = 0, **options
):
    """Writes a LeRobot-style synthetic dataset (no vlaforge metadata); `options` go to `SynthConfig`."""
    cfg = SynthConfig(
        out=str(root),
        episodes=n_episodes,
        length=length,
        image_size=size,
        tasks=n_tasks,
        seed=seed,
        **{"lerobot_style": True, **options},
    )
    write_synthetic(cfg)
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """3 episodes x 30 frames, 64 px, one camera (built once per test session)."""
    return make_dataset(tmp_path_factory.mktemp("train_ds") / "ds")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for every run of a module (module fixtures included): bitwise comparisons
    need the same reduction order in the runs they compare, and the machine has 2 shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def dataset_factory():
    """`make_dataset` for tests that need a dataset of another size (no cross-directory imports)."""
    return make_dataset
