"""A dataset laid out the way LeRobot itself writes v3.0 reads correctly.

Built here with pyarrow and PyAV directly, following LeRobot's conventions: int fps, feature names nested
as {"motors": [...]}, variable-length list columns, several episodes per data file and per video file
(so from_timestamp restarts in the second file), the episode index split over two parquet files with
per-episode `stats/...` columns, tasks.parquet with the task string as the (unnamed) index, AV1 video with
a short GOP when this FFmpeg can encode AV1, and a stats.json without quantiles for the state.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.data.sampler import ChunkSampler
from vlaforge.data.video import has_codec, write_video

from .conftest import smooth_images

FPS = 15
KEY = "observation.images.top"
LENGTHS = [12, 9, 14, 10]
TASKS = ["pick the cube", "stack the cube"]
EP_TASK = [1, 0, 1, 1]
DATA_FILE = [0, 0, 0, 1]  # episodes 0-2 share data file 0
VIDEO_FILE = [0, 0, 1, 1]  # episodes 0-1 share video file 0, 2-3 video file 1


def _build(root):
    rng = np.random.default_rng(3)
    n = sum(LENGTHS)
    action = rng.normal(size=(n, 6)).astype(np.float32)
    state = rng.normal(size=(n, 6)).astype(np.float32)
    images = np.concatenate([smooth_images(t, 64, 64, seed=e) for e, t in enumerate(LENGTHS)])
    starts = np.cumsum([0, *LENGTHS])[:-1]
    codec = (
        "libsvtav1"
        if has_codec("libsvtav1") and (has_codec("libdav1d", "r") or has_codec("av1", "r"))
        else "h264"
    )

    # data files: plain (variable-length) list columns, several episodes per file
    for f in (0, 1):
        eps = [e for e in range(4) if DATA_FILE[e] == f]
        rows = np.concatenate([np.arange(starts[e], starts[e] + LENGTHS[e]) for e in eps])
        table = pa.table(
            {
                "action": pa.array(action[rows].tolist(), type=pa.list_(pa.float32())),
                "observation.state": pa.array(state[rows].tolist(), type=pa.list_(pa.float32())),
                "timestamp": pa.array(
                    np.concatenate([np.arange(LENGTHS[e]) / FPS for e in eps]).astype(np.float32)
                ),
                "frame_index": pa.array(np.concatenate([np.arange(LENGTHS[e]) for e in eps])),
                "episode_index": pa.array(np.concatenate([np.full(LENGTHS[e], e) for e in eps])),
                "index": pa.array(rows),
                "task_index": pa.array(np.concatenate([np.full(LENGTHS[e], EP_TASK[e]) for e in eps])),
            }
        )
        path = root / f"data/chunk-000/file-{f:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    # video files: concatenated episodes, each file's clock starting at 0
    from_ts = []
    for f in (0, 1):
        eps = [e for e in range(4) if VIDEO_FILE[e] == f]
        offset = 0
        for e in eps:
            from_ts.append(offset / FPS)
            offset += LENGTHS[e]
        frames = np.concatenate([images[starts[e] : starts[e] + LENGTHS[e]] for e in eps])
        write_video(root / f"videos/{KEY}/chunk-000/file-{f:03d}.mp4", frames, FPS, codec=codec, crf=30)

    # the episode index over two parquet files, with per-episode stats columns
    rows = []
    for e in range(4):
        sl = slice(starts[e], starts[e] + LENGTHS[e])
        rows.append(
            {
                "episode_index": e,
                "tasks": [TASKS[EP_TASK[e]]],
                "length": LENGTHS[e],
                "data/chunk_index": 0,
                "data/file_index": DATA_FILE[e],
                "dataset_from_index": int(starts[e]),
                "dataset_to_index": int(starts[e] + LENGTHS[e]),
                f"videos/{KEY}/chunk_index": 0,
                f"videos/{KEY}/file_index": VIDEO_FILE[e],
                f"videos/{KEY}/from_timestamp": from_ts[e],
                f"videos/{KEY}/to_timestamp": from_ts[e] + LENGTHS[e] / FPS,
                "stats/action/mean": action[sl].mean(0).tolist(),
                "stats/action/count": [LENGTHS[e]],
                f"stats/{KEY}/mean": (images[sl].reshape(-1, 3).mean(0) / 255).reshape(3, 1, 1).tolist(),
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": e // 2,
            }
        )
    for f in (0, 1):
        path = root / f"meta/episodes/chunk-000/file-{f:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows[2 * f : 2 * f + 2]), path)
    pd.DataFrame({"task_index": [0, 1]}, index=TASKS).to_parquet(root / "meta/tasks.parquet")

    motors = [f"joint{i}" for i in range(5)] + ["gripper"]
    feats = {
        "action": {"dtype": "float32", "shape": [6], "names": {"motors": motors}},
        "observation.state": {"dtype": "float32", "shape": [6], "names": {"motors": motors}},
        KEY: {
            "dtype": "video",
            "shape": [64, 64, 3],
            "names": ["height", "width", "channel"],
            "info": {
                "video.height": 64,
                "video.width": 64,
                "video.codec": "av1",
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": FPS,
                "video.channels": 3,
                "has_audio": False,
            },
        },
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    info = {
        "codebase_version": "v3.0",
        "robot_type": "so100",
        "total_episodes": 4,
        "total_frames": n,
        "total_tasks": 2,
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": FPS,
        "splits": {"train": "0:4"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": feats,
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    a64 = action.astype(np.float64)
    stats = {
        "action": {
            "min": a64.min(0).tolist(),
            "max": a64.max(0).tolist(),
            "mean": a64.mean(0).tolist(),
            "std": a64.std(0).tolist(),
            "count": [n],
            "q01": np.quantile(a64, 0.01, 0).tolist(),
            "q10": np.quantile(a64, 0.1, 0).tolist(),
            "q50": np.quantile(a64, 0.5, 0).tolist(),
            "q90": np.quantile(a64, 0.9, 0).tolist(),
            "q99": np.quantile(a64, 0.99, 0).tolist(),
        },
        "observation.state": {
            "min": state.min(0).tolist(),
            "max": state.max(0).tolist(),
            "mean": state.mean(0).tolist(),
            "std": state.std(0).tolist(),
            "count": [n],
        },
    }
    (root / "meta/stats.json").write_text(json.dumps(stats, indent=4))
    return action, state, images, codec


def test_reads_lerobot_layout(tmp_path):
    root = tmp_path / "lerobot_ds"
    action, state, images, codec = _build(root)
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 4 and ds.num_frames == sum(LENGTHS) and ds.fps == FPS
    assert ds.tasks == TASKS and ds.camera_keys == [KEY]
    np.testing.assert_array_equal(ds.column("action"), action)
    np.testing.assert_array_equal(ds.column("observation.state"), state)
    assert ds.episodes[2]["tasks"] == [TASKS[1]] and "stats/action/mean" not in ds.episodes[2]
    frames = ds.video_frames(KEY)
    err = np.abs(frames.astype(np.int16) - images.astype(np.int16)).mean()
    assert err < 6, f"{codec}: mean abs error {err:.2f}"
    item = ds[ds.episode_frames(3).start + 2]
    assert item["task"] == TASKS[1] and item[KEY].shape == (64, 64, 3)

    emb = ds.embodiment()
    # no vlaforge metadata: every dim is normalised (nothing is guessed from the name "gripper")
    assert emb.action_names[-1] == "gripper" and emb.normalize_mask == [True] * 6
    assert LeRobotDataset(root, unnormalized_actions="gripper").embodiment().normalize_mask == [True] * 5 + [
        False
    ]
    assert emb.camera_names == ["top"] and emb.control_hz == FPS and emb.robot_type == "so100"
    ns = ds.norm_stats()  # the state has no quantiles in stats.json: they are computed from the column
    np.testing.assert_allclose(
        ns["observation.state"].q99, np.quantile(state.astype(np.float64), 0.99, 0), rtol=1e-5
    )
    np.testing.assert_allclose(ns["action"].q01, np.quantile(action.astype(np.float64), 0.01, 0), rtol=1e-5)

    batch = ChunkSampler(ds, batch_size=8, chunk_size=4, seed=1).batch_from_indices(np.array([11, 12]))
    np.testing.assert_array_equal(
        batch["actions"][0].numpy(), np.repeat(action[11:12], 4, 0)
    )  # ep 0 ends at 12
    assert batch["action_pad"][0].tolist() == [False, True, True, True]
    np.testing.assert_array_equal(batch["actions"][1].numpy(), action[12:16])
