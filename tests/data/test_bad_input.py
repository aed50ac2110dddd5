"""Every kind of broken dataset is an error naming the file and the problem; nothing is skipped."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlaforge.data.lerobot import DatasetError, LeRobotDataset
from vlaforge.data.video import write_video

from .conftest import make_raw, write_dataset

KEY = "observation.images.corner2"


@pytest.fixture
def ds_root(tmp_path):
    return write_dataset(tmp_path / "ds", make_raw(3, size=16, base_len=6), size=16)


def _edit_info(root, fn):
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    fn(info)
    path.write_text(json.dumps(info))


def test_missing_info(tmp_path):
    with pytest.raises(DatasetError, match="info.json is missing"):
        LeRobotDataset(tmp_path)


def test_other_codebase_version(ds_root):
    _edit_info(ds_root, lambda i: i.update(codebase_version="v2.1"))
    with pytest.raises(DatasetError, match=r"codebase_version is 'v2.1'; only LeRobotDataset v3.0"):
        LeRobotDataset(ds_root)


def test_missing_data_parquet(ds_root):
    (ds_root / "data/chunk-000/file-000.parquet").unlink()
    with pytest.raises(DatasetError, match=r"file-000.parquet: data file is missing"):
        LeRobotDataset(ds_root)


def test_corrupt_data_parquet(ds_root):
    path = ds_root / "data/chunk-000/file-000.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"file-000.parquet: cannot read data parquet.*corrupt"):
        LeRobotDataset(ds_root)


def test_corrupt_episode_index(ds_root):
    (ds_root / "meta/episodes/chunk-000/file-000.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(DatasetError, match="cannot read episode index parquet"):
        LeRobotDataset(ds_root)


def test_missing_tasks(ds_root):
    (ds_root / "meta/tasks.parquet").unlink()
    with pytest.raises(DatasetError, match="tasks.parquet: tasks file is missing"):
        LeRobotDataset(ds_root)


def test_missing_mp4(ds_root):
    (ds_root / f"videos/{KEY}/chunk-000/file-000.mp4").unlink()
    with pytest.raises(DatasetError, match=r"file-000.mp4: video file is missing"):
        LeRobotDataset(ds_root)


def test_truncated_mp4(ds_root):
    path = ds_root / f"videos/{KEY}/chunk-000/file-000.mp4"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"file-000.mp4: cannot open the video.*corrupt or truncated"):
        LeRobotDataset(ds_root)


def test_mp4_with_too_few_frames(ds_root):
    """A valid mp4 that lacks frames is caught when the cache is built, naming the file and episodes."""
    ds = LeRobotDataset(ds_root)
    path = ds_root / f"videos/{KEY}/chunk-000/file-000.mp4"
    write_video(path, np.zeros((ds.num_frames - 4, 16, 16, 3), np.uint8), fps=10)
    with pytest.raises(
        DatasetError, match=r"file-000.mp4: 4 frames are missing from the video \(episodes \[2\]\)"
    ):
        LeRobotDataset(ds_root).video_frames(KEY)
    assert not list((ds_root / ".cache").glob("*.u8"))  # no half-built cache left behind


def test_total_frames_disagree(ds_root):
    _edit_info(ds_root, lambda i: i.update(total_frames=i["total_frames"] + 1))
    with pytest.raises(DatasetError, match="total_frames"):
        LeRobotDataset(ds_root)


def test_episode_lengths_disagree_with_data(ds_root):
    path = ds_root / "meta/episodes/chunk-000/file-000.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[0]["length"] += 1
    rows[0]["dataset_to_index"] += 1
    rows[1]["length"] -= 1
    rows[1]["dataset_from_index"] += 1
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(
        DatasetError, match=r"frames \[0, 7\) should belong to episode 0.*frame counts disagree"
    ):
        LeRobotDataset(ds_root)


def test_episode_index_inconsistent(ds_root):
    path = ds_root / "meta/episodes/chunk-000/file-000.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[1]["length"] += 2
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DatasetError, match="episode 1 has length 11 but spans frames"):
        LeRobotDataset(ds_root)


def test_feature_shape_disagrees_with_data(ds_root):
    _edit_info(ds_root, lambda i: i["features"]["action"].update(shape=[5]))
    with pytest.raises(DatasetError, match=r"column 'action'.*feature shape in meta/info.json is \[5\]"):
        LeRobotDataset(ds_root)


def test_video_shape_disagrees_with_features(ds_root):
    _edit_info(ds_root, lambda i: i["features"][KEY].update(shape=[8, 8, 3]))
    with pytest.raises(DatasetError, match=r"file-000.mp4: frames are \(16, 16, 3\)"):
        LeRobotDataset(ds_root).video_frames(KEY)


def test_feature_without_column(ds_root):
    _edit_info(
        ds_root, lambda i: i["features"].update(reward={"dtype": "float32", "shape": [1], "names": None})
    )
    with pytest.raises(DatasetError, match="feature 'reward' from meta/info.json has no column"):
        LeRobotDataset(ds_root)
