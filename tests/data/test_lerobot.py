"""LeRobotDataset v3.0: write then read, the on-disk layout, stats, and the atomic writer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from vlaforge.data.lerobot import DatasetError, LeRobotDataset, LeRobotWriter
from vlaforge.data.stats import QUANTILES, feature_stats
from vlaforge.errors import InputError

from .conftest import TASKS, features_for, make_raw, write_dataset

CAMS = ("observation.images.corner2", "observation.images.gripperPOV")


def test_round_trip_columns(two_cam):
    root, raw = two_cam
    ds = LeRobotDataset(root)
    lengths = [len(f["action"]) for _, f in raw]
    assert ds.num_episodes == 5 and ds.num_frames == sum(lengths) and len(ds) == sum(lengths)
    assert ds.camera_keys == list(CAMS)
    assert ds.tasks == TASKS
    np.testing.assert_array_equal(ds.column("action"), np.concatenate([f["action"] for _, f in raw]))
    np.testing.assert_array_equal(
        ds.column("observation.state"), np.concatenate([f["observation.state"] for _, f in raw])
    )
    np.testing.assert_array_equal(
        ds.column("next.success"), np.concatenate([f["next.success"] for _, f in raw])
    )
    np.testing.assert_array_equal(ds.column("index"), np.arange(ds.num_frames))
    np.testing.assert_array_equal(ds.column("frame_index"), np.concatenate([np.arange(n) for n in lengths]))
    np.testing.assert_array_equal(ds.column("episode_index"), np.repeat(np.arange(5), lengths))
    np.testing.assert_allclose(
        ds.column("timestamp"), np.concatenate([np.arange(n) / 10 for n in lengths]), atol=1e-6
    )
    np.testing.assert_array_equal(ds.column("task_index"), np.repeat([0, 1, 0, 1, 0], lengths))
    assert list(ds.episode_frames(2)) == list(range(sum(lengths[:2]), sum(lengths[:3])))
    item = ds[ds.episode_frames(3).start + 4]
    assert item["task"] == TASKS[1]
    np.testing.assert_array_equal(item["action"], raw[3][1]["action"][4])
    assert item[CAMS[0]].dtype == np.uint8 and item[CAMS[0]].shape == (32, 32, 3)


def test_round_trip_images_within_codec_tolerance(two_cam):
    root, raw = two_cam
    ds = LeRobotDataset(root)
    for key in CAMS:
        frames = ds.video_frames(key)
        assert frames.shape == (ds.num_frames, 32, 32, 3) and frames.dtype == np.uint8
        truth = np.concatenate([f[key] for _, f in raw])
        err = np.abs(frames.astype(np.int16) - truth.astype(np.int16))
        assert err.mean() < 6, f"{key}: mean abs error {err.mean():.2f} of 255"
        # the two cameras differ, so a swapped camera would fail here
    other = np.concatenate([f[CAMS[1]] for _, f in raw]).astype(np.int16)
    assert np.abs(ds.video_frames(CAMS[0]).astype(np.int16) - other).mean() > 10


def test_video_cache_reused_and_rebuilt_when_stale(tmp_path):
    raw = make_raw(2, size=16, base_len=6)
    root = write_dataset(tmp_path / "ds", raw, size=16)
    ds = LeRobotDataset(root)
    key = ds.camera_keys[0]
    ds.video_frames(key)
    cache = root / ".cache" / f"{key}.16x16.u8"
    mtime = cache.stat().st_mtime_ns
    LeRobotDataset(root).video_frames(key)
    assert cache.stat().st_mtime_ns == mtime  # fresh cache: not rebuilt
    mp4 = ds.video_path(key, 0)
    mp4.touch()  # the source changed: the fingerprint no longer matches
    LeRobotDataset(root).video_frames(key)
    assert cache.stat().st_mtime_ns != mtime


def test_info_episodes_tasks_layout(two_cam):
    root, raw = two_cam
    info = json.loads((root / "meta/info.json").read_text())
    for key in (
        "codebase_version",
        "robot_type",
        "total_episodes",
        "total_frames",
        "total_tasks",
        "chunks_size",
        "data_files_size_in_mb",
        "video_files_size_in_mb",
        "fps",
        "splits",
        "data_path",
        "video_path",
        "features",
    ):
        assert key in info, key
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "sawyer"
    assert info["total_episodes"] == 5 and info["total_tasks"] == 2 and info["chunks_size"] == 1000
    assert info["splits"] == {"train": "0:5"} and info["fps"] == 10
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["vlaforge"] == {"note": 1}
    feats = info["features"]
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert feats[key]["shape"] == [1]
    vinfo = feats[CAMS[0]]["info"]
    assert (
        vinfo["video.codec"] in ("h264", "mpeg4") and vinfo["video.height"] == 32 and vinfo["video.fps"] == 10
    )
    assert (root / "data/chunk-000/file-000.parquet").is_file()
    for key in CAMS:
        assert (root / f"videos/{key}/chunk-000/file-000.mp4").is_file()

    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert list(tasks.index) == TASKS and tasks["task_index"].tolist() == [0, 1]

    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in eps] == list(range(5))
    start = 0
    for e, (task, frames) in zip(eps, raw):
        n = len(frames["action"])
        assert e["tasks"] == [task] and e["length"] == n
        assert (e["dataset_from_index"], e["dataset_to_index"]) == (start, start + n)
        assert (e["data/chunk_index"], e["data/file_index"]) == (0, 0)
        assert (e["meta/episodes/chunk_index"], e["meta/episodes/file_index"]) == (0, 0)
        for key in CAMS:
            assert e[f"videos/{key}/from_timestamp"] == pytest.approx(start / 10)
            assert e[f"videos/{key}/to_timestamp"] == pytest.approx((start + n) / 10)
        ref = feature_stats(frames["action"])
        for stat in ("min", "max", "mean", "std", "q01", "q99"):
            np.testing.assert_allclose(e[f"stats/action/{stat}"], ref[stat])
        assert e["stats/action/count"] == [n]
        assert np.asarray(e[f"stats/{CAMS[0]}/mean"]).shape == (3, 1, 1)
        start += n


def test_stats_json_equals_numpy(two_cam):
    root, raw = two_cam
    stats = json.loads((root / "meta/stats.json").read_text())
    for key in ("action", "observation.state"):
        arr = np.concatenate([f[key] for _, f in raw]).astype(np.float64)
        s = stats[key]
        np.testing.assert_allclose(s["min"], arr.min(0))
        np.testing.assert_allclose(s["max"], arr.max(0))
        np.testing.assert_allclose(s["mean"], arr.mean(0))
        np.testing.assert_allclose(s["std"], arr.std(0))
        for q, p in QUANTILES.items():
            np.testing.assert_allclose(s[q], np.quantile(arr, p, axis=0))
        assert s["count"] == [len(arr)]
    img = stats[CAMS[0]]
    assert np.asarray(img["mean"]).shape == (3, 1, 1)
    truth = np.concatenate([f[CAMS[0]] for _, f in raw]) / 255.0
    np.testing.assert_allclose(np.asarray(img["mean"]).reshape(3), truth.reshape(-1, 3).mean(0), atol=0.03)
    assert np.min(img["min"]) >= 0 and np.max(img["max"]) <= 1


def test_norm_stats_and_embodiment(two_cam):
    ds = LeRobotDataset(two_cam[0])
    emb = ds.embodiment()
    assert emb.action_dim == 4 and emb.action_names == ["dx", "dy", "dz", "gripper"]
    assert emb.normalize_mask == [True, True, True, True]  # no metadata: every dim, whatever its name
    assert emb.camera_names == ["corner2", "gripperPOV"] and emb.image_size == 32 and emb.control_hz == 10
    assert emb.state_dim == 4 and emb.robot_type == "sawyer"
    act = ds.column("action")
    np.testing.assert_allclose(emb.action_low, act.min(0), rtol=1e-6)
    ns = ds.norm_stats()
    ns.validate(emb)
    np.testing.assert_allclose(ns["action"].q99, np.quantile(act.astype(np.float64), 0.99, axis=0), rtol=1e-5)
    assert "observation.state" in ns
    text = ds.summary()
    assert "open the drawer" in text and "10 fps" in text.replace("fps 10", "10 fps") and "action" in text


def test_embodiment_from_info(tmp_path):
    emb = {
        "action_dim": 4,
        "action_names": ["a", "b", "c", "grip"],
        "normalize_mask": [True, True, True, False],
        "action_low": [-1] * 4,
        "action_high": [1] * 4,
        "control_hz": 10.0,
        "camera_names": ["corner2"],
        "image_size": 16,
        "state_dim": 4,
        "state_names": [],
        "robot_type": "sawyer",
    }
    root = write_dataset(
        tmp_path / "ds",
        make_raw(1, size=16, base_len=5),
        size=16,
        extra_info={"vlaforge": {"embodiment": emb}},
    )
    assert LeRobotDataset(root).embodiment().to_dict() == emb
    # explicit options override the stored embodiment: the training size and the mask
    opened = LeRobotDataset(root, image_size=8, unnormalized_actions=["a", "3"])
    assert opened.embodiment().to_dict() == {
        **emb,
        "image_size": 8,
        "normalize_mask": [False, True, True, False],
    }
    assert opened.norm_stats()["action"].mask.tolist() == [False, True, True, False]
    assert LeRobotDataset(root, unnormalized_actions=[]).embodiment().normalize_mask == [True] * 4


def test_unnormalized_actions_bad_name(two_cam):
    with pytest.raises(
        InputError, match=r"'grip' is not an action dim; the valid names are \['dx', 'dy', 'dz', 'gripper'\]"
    ):
        LeRobotDataset(two_cam[0], unnormalized_actions="dx,grip")
    with pytest.raises(InputError, match="'4' is not an action dim.*indices 0..3"):
        LeRobotDataset(two_cam[0], unnormalized_actions=[4])


def test_writer_rolls_over_files(tmp_path):
    """Tiny size limits force several data and video files; reading must stitch them back."""
    raw = make_raw(4, size=16, base_len=40)
    root = write_dataset(
        tmp_path / "ds", raw, size=16, data_files_size_in_mb=1e-6, video_files_size_in_mb=1e-6, chunks_size=2
    )
    assert (root / "data/chunk-001/file-001.parquet").is_file()
    assert (root / "videos/observation.images.corner2/chunk-001/file-001.mp4").is_file()
    ds = LeRobotDataset(root)
    np.testing.assert_array_equal(ds.column("action"), np.concatenate([f["action"] for _, f in raw]))
    truth = np.concatenate([f["observation.images.corner2"] for _, f in raw]).astype(np.int16)
    assert np.abs(ds.video_frames("observation.images.corner2").astype(np.int16) - truth).mean() < 6


def test_atomic_writer_exception_leaves_nothing(tmp_path):
    root = tmp_path / "ds"
    raw = make_raw(2, size=16, base_len=5)
    with pytest.raises(RuntimeError, match="boom"), LeRobotWriter(root, 10, features_for(size=16)) as w:
        w.add_episode(*raw[0])
        raise RuntimeError("boom")
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary sibling is gone too


def test_writer_refuses_existing_root_and_overwrites_on_request(tmp_path):
    raw = make_raw(1, size=16, base_len=5)
    root = write_dataset(tmp_path / "ds", raw, size=16)
    with pytest.raises(DatasetError, match="already exists"):
        LeRobotWriter(root, 10, features_for(size=16))
    write_dataset(root, make_raw(2, size=16, base_len=5), size=16, overwrite=True)
    assert LeRobotDataset(root).num_episodes == 2


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("action", np.zeros((5, 3), np.float32), r"'action' has shape \(5, 3\)"),
        ("observation.images.corner2", np.zeros((5, 16, 8, 3), np.uint8), "observation.images.corner2"),
        ("action", np.zeros((4, 4), np.float32), "'action' has 4 frames"),
        ("observation.images.corner2", np.zeros((5, 16, 16, 3), np.float32), "dtype float32"),
    ],
)
def test_writer_validates_frames(tmp_path, key, value, match):
    task, frames = make_raw(1, size=16, base_len=5)[0]
    frames[key] = value
    with (
        pytest.raises(DatasetError, match=match),
        LeRobotWriter(tmp_path / "ds", 10, features_for(size=16)) as w,
    ):
        w.add_episode(task, frames)
    assert not (tmp_path / "ds").exists()


def test_writer_rejects_missing_keys(tmp_path):
    task, frames = make_raw(1, size=16, base_len=5)[0]
    del frames["observation.state"]
    with (
        pytest.raises(DatasetError, match=r"missing \['observation.state'\]"),
        LeRobotWriter(tmp_path / "ds", 10, features_for(size=16)) as w,
    ):
        w.add_episode(task, frames)
