"""LeRobotDataset v3.0 on disk: the layout, its constants, and the parquet helpers its writer and reader share.

The layout follows LeRobot's v3.0 format (huggingface/lerobot, `CODEBASE_VERSION = "v3.0"`; DESIGN.md,
"LeRobotDataset v3.0 on disk"): many episodes per file, with a relational episode index telling where each
episode lives::

    meta/info.json                         codebase_version, fps, features, totals, path templates
    meta/stats.json                        per-feature min/max/mean/std/count/q01/q10/q50/q90/q99
    meta/tasks.parquet                     task string (the index) -> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, data/video file indices,
                                           dataset_from_index/to_index, video from/to timestamps, stats/...
    data/chunk-000/file-000.parquet        one row per frame (timestamp, frame_index, episode_index, index,
                                           task_index, observation.state, action, ...)
    videos/<key>/chunk-000/file-000.mp4    frame k of episode e is at from_timestamp(e) + timestamp(k)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlaforge.data.interface import IMAGE_PREFIX
from vlaforge.errors import InputError

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory
DATA_FILE_SIZE_IN_MB = 100
VIDEO_FILE_SIZE_IN_MB = 500
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
INFO_KEYS = set(  # LeRobot's own info.json fields, which extra_info must not overwrite
    [
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
    ]
)


class DatasetError(InputError):
    """A dataset on disk (or being written) is malformed; the message names the file and the fix."""


def next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


def is_scalar(shape) -> bool:
    return list(shape) == [1]


def arrow_column(values: np.ndarray, shape: list[int]) -> pa.Array:
    """(T, *shape) numpy -> an arrow column: a scalar for shape [1], nested fixed-size lists otherwise."""
    if is_scalar(shape):
        return pa.array(values.reshape(-1))
    arr: pa.Array = pa.array(values.reshape(-1))
    for dim in reversed(shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, int(dim))
    return arr


def column_to_numpy(col: pa.ChunkedArray, shape: list[int], n: int, where: str) -> np.ndarray:
    """An arrow column of (nested) lists or scalars -> numpy (N,) for shape [1], else (N, *shape)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    while (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        arr = arr.flatten()
    values = arr.to_numpy(zero_copy_only=False)
    out_shape = (n,) if is_scalar(shape) else (n, *shape)
    if values.size != int(np.prod(out_shape)):
        raise DatasetError(
            f"{where}: has {values.size} values over {n} frames but the feature shape in meta/info.json is "
            f"{list(shape)} ({int(np.prod(shape))} per frame). Fix the feature's shape in info.json or "
            "re-create the dataset."
        )
    return values.reshape(out_shape)


def image_hw(feature: Mapping[str, Any], key: str) -> tuple[int, int]:
    shape = list(feature["shape"])
    names = feature.get("names") or []
    if len(shape) != 3:
        raise DatasetError(f"meta/info.json: video feature {key!r} has shape {shape}; expected [H, W, 3]")
    if names and names[0] in ("channels", "channel"):  # channel-first description (C, H, W)
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


def read_parquet(path: Path, what: str) -> pa.Table:
    if not path.is_file():
        raise DatasetError(
            f"{path}: {what} file is missing; the dataset is incomplete (re-create or re-download it)"
        )
    try:
        return pq.read_table(path)
    except Exception as e:
        raise DatasetError(
            f"{path}: cannot read {what} parquet ({type(e).__name__}: {e}); the file is corrupt. "
            "Re-create or re-download the dataset."
        ) from e


def short_name(key: str) -> str:
    """'observation.images.corner2' -> 'corner2'."""
    return key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else key


def flat_names(names: Any, dim: int, prefix: str) -> list[str]:
    """Feature names as a flat list of `dim` strings (LeRobot sometimes nests them, e.g. {"motors": [...]})."""
    if isinstance(names, Mapping):
        names = [n for v in names.values() for n in (v if isinstance(v, list) else [v])]
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return list(names)
    return [f"{prefix}_{i}" for i in range(dim)]
