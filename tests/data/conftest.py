"""Synthetic LeRobot v3.0 datasets for the data tests: smooth images, known actions and states."""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.data.lerobot import LeRobotWriter

TASKS = ["open the drawer", "press the button"]


def smooth_images(T: int, h: int, w: int, seed: int) -> np.ndarray:
    """uint8 (T, h, w, 3): moving colour gradients (codec-friendly, unlike noise)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.arange(T, dtype=np.float32)[:, None, None]
    r = 128 + 90 * np.sin((xx / w) * 3.0 + t * 0.15 + seed)
    g = 128 + 90 * np.cos((yy / h) * 2.5 - t * 0.1 + seed * 0.7)
    b = 60 + 150 * ((xx + yy) / (h + w)) + 0 * t
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def make_raw(n_episodes: int = 5, cameras=("corner2",), size: int = 32, base_len: int = 20, seed: int = 0):
    """Per-episode raw arrays (tasks alternate; lengths vary)."""
    rng = np.random.default_rng(seed)
    raw = []
    for e in range(n_episodes):
        T = base_len + 3 * e
        frames = {
            f"observation.images.{c}": smooth_images(T, size, size, seed=e + 10 * i)
            for i, c in enumerate(cameras)
        }
        frames["observation.state"] = rng.normal(size=(T, 4)).astype(np.float32)
        frames["action"] = rng.uniform(-1, 1, size=(T, 4)).astype(np.float32)
        frames["next.success"] = np.arange(T) == T - 1
        raw.append((TASKS[e % 2], frames))
    return raw


def features_for(cameras=("corner2",), size: int = 32) -> dict:
    feats = {
        f"observation.images.{c}": {
            "dtype": "video",
            "shape": [size, size, 3],
            "names": ["height", "width", "channels"],
        }
        for c in cameras
    }
    feats["observation.state"] = {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "grip"]}
    feats["action"] = {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "gripper"]}
    feats["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    return feats


def write_dataset(root, raw, cameras=("corner2",), size: int = 32, fps: float = 10, **kw):
    with LeRobotWriter(root, fps=fps, features=features_for(cameras, size), robot_type="sawyer", **kw) as w:
        for task, frames in raw:
            w.add_episode(task, frames)
    return root


@pytest.fixture(scope="session")
def two_cam(tmp_path_factory):
    """A 5-episode, 2-task, 2-camera dataset and its raw arrays (built once per session)."""
    cams = ("corner2", "gripperPOV")
    raw = make_raw(5, cams)
    root = write_dataset(
        tmp_path_factory.mktemp("ds") / "two_cam", raw, cams, extra_info={"vlaforge": {"note": 1}}
    )
    return root, raw
