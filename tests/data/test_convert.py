"""`vlaforge dataset convert`: LeRobot v3 -> RLDS -> LeRobot keeps every number, images within codec tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.cli import main
from vlaforge.data.convert import convert
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.data.rlds_dataset import RLDSDataset
from vlaforge.data.synth import SynthConfig, write_synthetic
from vlaforge.errors import InputError

from .rlds_spec import libero_like, write_tfds


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv") / "synth"
    write_synthetic(SynthConfig(out=str(root), episodes=5, length=12, image_size=32, tasks=2))
    return root


def test_lerobot_to_rlds_and_back(synth, tmp_path, capsys):
    main(
        [
            "dataset",
            "convert",
            str(synth),
            "--to",
            "rlds",
            "--out",
            str(tmp_path / "rl"),
            "--episodes-per-shard",
            "2",
        ]
    )
    assert "5 episodes, 60 frames" in capsys.readouterr().out
    src = LeRobotDataset(synth)
    rl = RLDSDataset(tmp_path / "rl")
    assert len(rl.tfds.shards) == 3 and rl.tfds.shard_lengths == [2, 2, 1]
    np.testing.assert_array_equal(rl.actions(), src.actions())
    np.testing.assert_array_equal(rl.states(), src.states())
    assert [rl.tasks[t] for t in rl.task_indices()] == [src.tasks[t] for t in src.task_indices()]
    assert rl.embodiment() == src.embodiment()
    jpeg_err = np.abs(rl.frames("corner2").astype(int) - src.frames("corner2").astype(int))
    assert jpeg_err.mean() < 3 and jpeg_err.max() < 64  # JPEG quality 95 of the decoded video frames

    report = convert(tmp_path / "rl", "lerobot", tmp_path / "back", workers=2)
    back = LeRobotDataset(tmp_path / "back")
    assert report.episodes == 5 and report.frames == 60
    np.testing.assert_array_equal(back.actions(), src.actions())
    np.testing.assert_array_equal(back.states(), src.states())
    assert [back.tasks[t] for t in back.task_indices()] == [src.tasks[t] for t in src.task_indices()]
    assert [len(back.episode_frames(e)) for e in range(5)] == [12] * 5
    assert back.embodiment() == src.embodiment() and back.fps == src.fps
    err = np.abs(back.frames("corner2").astype(int) - src.frames("corner2").astype(int))
    assert err.mean() < 4  # two lossy codecs in a row (JPEG, then H.264)
    # The RLDS terminal flags come back as a column, and go out again unchanged.
    assert back.column("is_terminal").reshape(-1).tolist() == ([False] * 11 + [True]) * 5
    again = convert(tmp_path / "back", "rlds", tmp_path / "rl2", image_format="png")
    assert sorted(RLDSDataset(again.out).tfds.features) == sorted(rl.tfds.features)


def test_spec_rlds_to_lerobot_keeps_numbers_and_names_what_it_drops(tmp_path):
    data = libero_like(n_episodes=4, shards=2, size=16, fmt="png")
    root = write_tfds(tmp_path, data)
    report = convert(root, "lerobot", tmp_path / "lr", workers=1)
    assert report.not_carried == ["episode_metadata/file_path"]
    lr = LeRobotDataset(tmp_path / "lr")
    np.testing.assert_array_equal(lr.actions(), np.concatenate([e["action"] for e in data["episodes"]]))
    np.testing.assert_array_equal(lr.states(), np.concatenate([e["state"] for e in data["episodes"]]))
    np.testing.assert_array_equal(
        lr.column("reward").reshape(-1),
        np.concatenate([[0.0] * (len(e["action"]) - 1) + [1.0] for e in data["episodes"]]),
    )
    assert lr.camera_names == ["image", "wrist_image"]
    src = np.concatenate([e["image"] for e in data["episodes"]]).astype(int)
    assert np.abs(lr.frames("image").astype(int) - src).mean() < 8  # H.264 (4:2:0 chroma) of 16 px PNG frames


def test_convert_refuses_bad_requests(synth, tmp_path):
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        convert(synth, "rlds", synth.parent)
    with pytest.raises(InputError, match="is not an RLDS dataset"):
        convert(synth, "lerobot", tmp_path / "x")
    with pytest.raises(InputError, match="choose 'rlds' or 'lerobot'"):
        convert(synth, "tfrecord", tmp_path / "x")


def test_interrupted_conversion_leaves_the_old_output_whole(synth, tmp_path, monkeypatch):
    import vlaforge.data.convert as conv

    out = tmp_path / "rl"
    convert(synth, "rlds", out, workers=1)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(conv, "write_metadata", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        convert(synth, "rlds", out, workers=1, overwrite=True, episodes_per_shard=1)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # the old shards, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["rl"]  # no staging directory left beside it
