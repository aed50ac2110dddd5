"""render_episode writes a decodable mp4 with one frame per episode step, and the CLI calls it."""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.cli import main
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.data.video import read_video
from vlaforge.data.view import render_episode
from vlaforge.errors import InputError


def test_render_episode(two_cam, tmp_path):
    root = two_cam[0]
    ds = LeRobotDataset(root)
    out = render_episode(root, episode=2, out=tmp_path / "ep2.mp4", camera="gripperPOV")
    times, frames = read_video(out)
    assert len(frames) == len(ds.episode_frames(2))
    assert frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0 and frames.shape[1] >= 256
    np.testing.assert_allclose(np.diff(times), 1 / ds.fps, atol=1e-3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.5  # the image and cursor move
    with pytest.raises(InputError, match="episode 9 does not exist"):
        render_episode(root, episode=9, out=tmp_path / "x.mp4")


def test_cli_dataset_info_and_view(two_cam, tmp_path, capsys):
    root = two_cam[0]
    main(["dataset", "info", str(root)])
    assert "5 episodes" in capsys.readouterr().out
    main(["dataset", "view", str(root), "--episode", "0", "--out", str(tmp_path / "e0.mp4")])
    assert "wrote" in capsys.readouterr().out
    assert len(read_video(tmp_path / "e0.mp4")[1]) == len(LeRobotDataset(root).episode_frames(0))
