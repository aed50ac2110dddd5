"""Tiny LeRobot v3.0 datasets for the training tests, written with the real writer (real mp4s).

The actions are a fixed function of the state (a reach towards a per-task goal, gripper closing near
it), so the tiny preset can learn them in a few hundred steps through its state token.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge.data.lerobot import LeRobotWriter

TASKS = ["reach the red goal", "reach the blue goal"]
GOALS = np.array([[0.6, -0.4, 0.3], [-0.5, 0.5, -0.2]], dtype=np.float32)


def _images(T: int, size: int, seed: int) -> np.ndarray:
    """Smooth moving gradients (codec-friendly) (T, size, size, 3) uint8."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = np.arange(T, dtype=np.float32)[:, None, None]
    r = 128 + 90 * np.sin(xx / size * 3.0 + t * 0.2 + seed)
    g = 128 + 90 * np.cos(yy / size * 2.5 - t * 0.1 + seed)
    b = 60 + 150 * (xx + yy) / (2 * size) + 0 * t
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def make_dataset(
    root, n_episodes: int = 3, length: int = 30, size: int = 64, n_tasks: int = 2, seed: int = 0
):
    """Writes a dataset: state = (x, y, z, grip) moving towards the task's goal; action = the step taken."""
    rng = np.random.default_rng(seed)
    features = {
        "observation.images.corner2": {
            "dtype": "video",
            "shape": [size, size, 3],
            "names": ["height", "width", "channels"],
        },
        "observation.state": {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "grip"]},
        "action": {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "gripper"]},
    }
    with LeRobotWriter(root, fps=10, features=features, robot_type="synthetic") as w:
        for e in range(n_episodes):
            task = e % n_tasks
            pos = rng.uniform(-0.8, 0.8, size=3).astype(np.float32)
            states, actions = [], []
            for _ in range(length):
                delta = np.clip(GOALS[task] - pos, -0.2, 0.2)
                near = float(np.linalg.norm(GOALS[task] - pos) < 0.25)
                states.append(np.r_[pos, near].astype(np.float32))
                actions.append(np.r_[delta / 0.2, 2 * near - 1].astype(np.float32))
                pos = pos + 0.5 * delta
            frames = {
                "observation.images.corner2": _images(length, size, seed=e),
                "observation.state": np.stack(states),
                "action": np.stack(actions),
            }
            w.add_episode(TASKS[task], frames)
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
