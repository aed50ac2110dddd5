"""Synthetic datasets: both metadata flavours, the gripper range, and the learnable structure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.data.synth import GOALS, TASKS, SynthConfig, write_synthetic
from vlaforge.errors import InputError


def test_vlaforge_and_lerobot_style(tmp_path):
    ours = LeRobotDataset(
        write_synthetic(SynthConfig(out=str(tmp_path / "a"), episodes=3, length=12, image_size=16))
    )
    theirs = LeRobotDataset(
        write_synthetic(
            SynthConfig(out=str(tmp_path / "b"), episodes=3, length=12, image_size=16, lerobot_style=True)
        )
    )
    assert ours.info["vlaforge"]["env"] == "synthetic" and "vlaforge" not in theirs.info
    assert ours.embodiment() == theirs.embodiment()  # the stored one says what the derived one finds
    assert (
        ours.num_frames == 36 and ours.tasks == TASKS[:2] and ours.frames("corner2").shape == (36, 16, 16, 3)
    )
    np.testing.assert_array_equal(ours.actions(), theirs.actions())
    with pytest.raises(InputError, match="already exists"):
        write_synthetic(SynthConfig(out=str(tmp_path / "a")))
    write_synthetic(SynthConfig(out=str(tmp_path / "a"), episodes=1, overwrite=True))
    assert json.loads((tmp_path / "a" / "meta/info.json").read_text())["total_episodes"] == 1


def test_actions_are_a_function_of_state_and_task(tmp_path):
    cfg = SynthConfig(
        out=str(tmp_path / "ds"), episodes=4, length=20, image_size=8, gripper_min=0, gripper_max=100
    )
    ds = LeRobotDataset(write_synthetic(cfg))
    state, action, task = ds.states(), ds.actions(), ds.task_indices()
    np.testing.assert_array_equal(action[:, 3], 100 * state[:, 3])  # gripper closes when near the goal
    step = np.clip(GOALS[task] - state[:, :3], -0.2, 0.2) / 0.2  # reach towards the task's goal
    np.testing.assert_allclose(action[:, :3], step, atol=1e-6)
    assert set(np.unique(action[:, 3]).tolist()) == {0.0, 100.0}


def test_bad_config():
    with pytest.raises(InputError, match=r"tasks=9 \(1 to 4\).*gripper range \[1.0, 0.0\]"):
        SynthConfig(out="x", tasks=9, gripper_min=1.0, gripper_max=0.0)
