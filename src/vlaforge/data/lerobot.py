"""LeRobotDataset v3.0 on disk: a streaming writer and a validating reader.

The layout follows LeRobot's v3.0 format (huggingface/lerobot, `CODEBASE_VERSION = "v3.0"`): many episodes
per file, with a relational episode index telling where each episode lives::

    meta/info.json                         codebase_version, fps, features, totals, path templates
    meta/stats.json                        per-feature min/max/mean/std/count/q01/q10/q50/q90/q99
    meta/tasks.parquet                     task string (the index) -> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, data/video file indices,
                                           dataset_from_index/to_index, video from/to timestamps, stats/...
    data/chunk-000/file-000.parquet        one row per frame (timestamp, frame_index, episode_index, index,
                                           task_index, observation.state, action, ...)
    videos/<key>/chunk-000/file-000.mp4    frame k of episode e is at from_timestamp(e) + timestamp(k)

Design choices:

- The writer streams: each episode's rows go to the open parquet file as a row group and its frames are
  encoded straight into the camera's open mp4, so memory stays bounded; files roll over at
  `data_files_size_in_mb` / `video_files_size_in_mb` like LeRobot's. Everything is written into a hidden
  sibling directory and swapped into place whole at `finalize()` (`vlaforge.atomic.StagedDir`), so a crash never leaves
  something that looks like a complete dataset.
- The reader keeps every numeric column in memory as numpy and decodes each camera's videos once,
  sequentially, into a uint8 memmap cache at the training resolution (`root/.cache/<key>.<h>x<w>.u8` + a
  JSON sidecar fingerprinting the mp4s and the size, so several sizes coexist; frames are resized with
  Pillow's antialiased bicubic filter, see `vlaforge.data.video.resize_frames`). Training reads the
  memmap; it never seeks in a video per frame. When several processes (torchrun ranks) open a missing
  cache at once, one builds it under an exclusive `fcntl.flock` on `<key>.<h>x<w>.lock` beside it and
  the others wait for it, so a node decodes once; no process group is needed.
- For datasets whose cache would be too big, `frame_reader(camera)` decodes chosen frames by seeking
  (`vlaforge.data.video.SeekingDecoder`), bitwise equal to the cache; `ChunkSampler` runs it in worker
  processes ahead of the trainer (streaming mode).
- `LeRobotDataset` implements `vlaforge.data.dataset.TrainingDataset`, the interface training uses.
- Bad input is an error naming the file and what to do (`DatasetError`); nothing is silently skipped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from vlaforge.atomic import StagedDir
from vlaforge.data.frame_cache import cached_frames, file_fingerprint
from vlaforge.data.interface import IMAGE_PREFIX, normalize_mask, parse_unnormalized
from vlaforge.data.stats import compute_stats, feature_stats, sample_indices, stats_from_json, stats_to_json
from vlaforge.data.video import (
    SeekingDecoder,
    VideoError,
    VideoWriter,
    decode_episodes_into,
    probe,
    resize_frames,
)
from vlaforge.errors import InputError
from vlaforge.types import Embodiment, FeatureStats, NormStats

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
_INFO_KEYS = set(  # LeRobot's own info.json fields, which extra_info must not overwrite
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
_STATS_FRAMES_PER_EPISODE = 16  # image frames kept per episode for statistics
_STATS_IMAGE_SIDE = 64  # images are strided down to about this side for statistics
# Image frames kept for the global statistics: past this many, every other one is dropped, so a writer's
# memory stays bounded whatever the dataset's size (the statistics use at most 2000 frames anyway).
_STATS_MAX_KEPT = 8000


class DatasetError(InputError):
    """A dataset on disk (or being written) is malformed; the message names the file and the fix."""


def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


def _scalar(shape) -> bool:
    return list(shape) == [1]


def _arrow_column(values: np.ndarray, shape: list[int]) -> pa.Array:
    """(T, *shape) numpy -> an arrow column: a scalar for shape [1], nested fixed-size lists otherwise."""
    if _scalar(shape):
        return pa.array(values.reshape(-1))
    arr: pa.Array = pa.array(values.reshape(-1))
    for dim in reversed(shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, int(dim))
    return arr


def _column_to_numpy(col: pa.ChunkedArray, shape: list[int], n: int, where: str) -> np.ndarray:
    """An arrow column of (nested) lists or scalars -> numpy (N,) for shape [1], else (N, *shape)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    while (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        arr = arr.flatten()
    values = arr.to_numpy(zero_copy_only=False)
    out_shape = (n,) if _scalar(shape) else (n, *shape)
    if values.size != int(np.prod(out_shape)):
        raise DatasetError(
            f"{where}: has {values.size} values over {n} frames but the feature shape in meta/info.json is "
            f"{list(shape)} ({int(np.prod(shape))} per frame). Fix the feature's shape in info.json or "
            "re-create the dataset."
        )
    return values.reshape(out_shape)


def _image_hw(feature: Mapping[str, Any], key: str) -> tuple[int, int]:
    shape = list(feature["shape"])
    names = feature.get("names") or []
    if len(shape) != 3:
        raise DatasetError(f"meta/info.json: video feature {key!r} has shape {shape}; expected [H, W, 3]")
    if names and names[0] in ("channels", "channel"):  # channel-first description (C, H, W)
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


class LeRobotWriter:
    """Writes a LeRobotDataset v3.0 episode by episode.

    Args:
        root: the dataset directory to create.
        fps: frames per second of every stream.
        features: the non-default features, e.g. ``{"observation.images.corner2": {"dtype": "video",
            "shape": [H, W, 3], "names": ["height", "width", "channels"]}, "observation.state": {"dtype":
            "float32", "shape": [4], "names": [...]}, "action": {...}, "next.success": {"dtype": "bool",
            "shape": [1]}}``. The defaults (timestamp, frame_index, episode_index, index, task_index) are added.
        robot_type: stored in meta/info.json.
        overwrite: replace an existing `root` at `finalize()` (otherwise an existing root is refused).
        extra_info: merged into meta/info.json (e.g. ``{"vlaforge": {"embodiment": {...}}}``).
        video_codec: encoder family or name ("h264" by default; see `vlaforge.data.video.pick_encoder`).
        video_gop: keyframe interval in frames; None leaves the encoder's default (libx264: 250). A short
            interval makes random access (streaming training) cheaper and files bigger (LeRobot uses 2).
        data_files_size_in_mb, video_files_size_in_mb, chunks_size: file rollover limits (LeRobot's defaults).

    Use as a context manager: an exception inside ``with`` removes the temporary directory; leaving the block
    normally finalizes.
    """

    def __init__(
        self,
        root: str | Path,
        fps: float,
        features: dict,
        robot_type: str = "unknown",
        overwrite: bool = False,
        extra_info: dict | None = None,
        video_codec: str = "h264",
        video_gop: int | None = None,
        data_files_size_in_mb: float = DATA_FILE_SIZE_IN_MB,
        video_files_size_in_mb: float = VIDEO_FILE_SIZE_IN_MB,
        chunks_size: int = CHUNKS_SIZE,
    ) -> None:
        self.root = Path(root)
        if fps <= 0:
            raise DatasetError(f"fps must be > 0; got {fps}")
        if self.root.exists() and not overwrite:
            raise DatasetError(f"{self.root} already exists; pass overwrite=True (--overwrite) to replace it")
        self.fps = float(fps)
        self.robot_type = robot_type
        self.extra_info = dict(extra_info or {})
        self.video_codec = video_codec
        self.video_gop = video_gop
        self.data_mb, self.video_mb = data_files_size_in_mb, video_files_size_in_mb
        self.chunks_size = chunks_size
        clash = sorted(set(self.extra_info) & _INFO_KEYS)
        if clash:
            raise DatasetError(f"extra_info keys {clash} would overwrite LeRobot's own info.json fields")
        self.features = self._check_features(features)
        self.video_keys = [k for k, f in self.features.items() if f["dtype"] == "video"]
        self._staged = StagedDir(self.root, overwrite=True)  # existing roots are refused above
        self.tmp = self._staged.path
        self.episodes: list[dict[str, Any]] = []
        self.tasks: dict[str, int] = {}
        self.total_frames = 0
        tabular = {k: f for k, f in self._all_features.items() if f["dtype"] != "video"}
        self._schema = pa.schema(
            [
                (k, _arrow_column(np.zeros([1, *f["shape"]], f["dtype"]), f["shape"]).type)
                for k, f in tabular.items()
            ]
        )
        self._data: pq.ParquetWriter | None = None
        self._data_idx = (0, 0)
        self._data_bytes = 0
        self._videos: dict[str, VideoWriter | None] = dict.fromkeys(self.video_keys)
        self._video_idx = {k: (0, 0) for k in self.video_keys}
        self._video_info: dict[str, dict] = {}
        self._numeric: dict[str, list[np.ndarray]] = {}
        self._image_samples: dict[str, list[np.ndarray]] = {k: [] for k in self.video_keys}
        self._done = False

    @staticmethod
    def _check_features(features: dict) -> dict[str, dict]:
        out = {}
        for key, ft in features.items():
            if key in DEFAULT_FEATURES:
                raise DatasetError(f"feature {key!r} is written automatically; leave it out of `features`")
            if "/" in key:
                raise DatasetError(f"feature name {key!r} must not contain '/'")
            if not isinstance(ft, Mapping) or "dtype" not in ft or "shape" not in ft:
                raise DatasetError(f"feature {key!r} needs 'dtype' and 'shape'; got {ft!r}")
            ft = {**ft, "shape": [int(s) for s in ft["shape"]], "names": ft.get("names")}
            if ft["dtype"] == "video":
                if len(ft["shape"]) != 3 or ft["shape"][2] != 3:
                    raise DatasetError(f"video feature {key!r} needs shape [H, W, 3]; got {ft['shape']}")
                ft["names"] = ft["names"] or ["height", "width", "channels"]
            else:
                try:
                    np.dtype(ft["dtype"])
                except TypeError as e:
                    raise DatasetError(
                        f"feature {key!r}: dtype {ft['dtype']!r} is not supported (use 'video' or a numpy dtype)"
                    ) from e
            out[key] = ft
        return out

    def _check_frames(self, frames: Mapping[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
        missing = sorted(set(self.features) - set(frames))
        extra = sorted(set(frames) - set(self.features))
        if missing or extra:
            raise DatasetError(
                f"episode {len(self.episodes)}: frame keys do not match the features (missing {missing}, "
                f"unexpected {extra})"
            )
        out, length = {}, None
        for key, ft in self.features.items():
            arr = np.asarray(frames[key])
            dtype = np.dtype("uint8" if ft["dtype"] == "video" else ft["dtype"])
            shape = ft["shape"]
            if _scalar(shape) and arr.ndim == 1:
                arr = arr[:, None]
            if arr.ndim != len(shape) + 1 or list(arr.shape[1:]) != shape:
                raise DatasetError(
                    f"episode {len(self.episodes)}: {key!r} has shape {arr.shape}; the features say "
                    f"(T, {', '.join(map(str, shape))})"
                )
            if arr.dtype != dtype and not np.can_cast(arr.dtype, dtype, "same_kind"):
                raise DatasetError(
                    f"episode {len(self.episodes)}: {key!r} has dtype {arr.dtype}; the features say {dtype}"
                )
            if length is None:
                length = arr.shape[0]
            elif arr.shape[0] != length:
                raise DatasetError(
                    f"episode {len(self.episodes)}: {key!r} has {arr.shape[0]} frames, other keys {length}"
                )
            out[key] = arr.astype(dtype, copy=False)
        if not length:
            raise DatasetError(f"episode {len(self.episodes)}: an episode needs at least one frame")
        return length, out

    def add_episode(self, task: str, frames: dict[str, np.ndarray]) -> int:
        """Appends one episode and returns its episode_index.

        Args:
            task: the instruction for this episode.
            frames: one array per feature, (T, *shape); shape-[1] features may also be (T,). Video features
                are uint8 (T, H, W, 3) and are encoded immediately.

        Raises:
            DatasetError: naming the key whose shape or dtype disagrees with the features.
        """
        if self._done:
            raise DatasetError(f"{self.root}: the writer is finalized; open a new one to add episodes")
        if not isinstance(task, str) or not task:
            raise DatasetError(f"episode {len(self.episodes)}: task must be a non-empty string; got {task!r}")
        n, frames = self._check_frames(frames)
        ep = len(self.episodes)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        cols = {
            "timestamp": (np.arange(n) / self.fps).astype(np.float32),
            "frame_index": np.arange(n, dtype=np.int64),
            "episode_index": np.full(n, ep, dtype=np.int64),
            "index": np.arange(self.total_frames, self.total_frames + n, dtype=np.int64),
            "task_index": np.full(n, task_index, dtype=np.int64),
        }
        cols.update({k: v for k, v in frames.items() if k not in self.video_keys})
        row: dict[str, Any] = {"episode_index": ep, "tasks": [task], "length": n}
        # Data rows: one row group per episode in the open parquet file.
        if self._data is None:
            path = self.tmp / DATA_PATH.format(chunk_index=self._data_idx[0], file_index=self._data_idx[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data = pq.ParquetWriter(path, self._schema)
        table = pa.table(
            {f.name: _arrow_column(cols[f.name], self._all_features[f.name]["shape"]) for f in self._schema},
            schema=self._schema,
        )
        self._data.write_table(table)
        self._data_bytes += table.nbytes
        row["data/chunk_index"], row["data/file_index"] = self._data_idx
        row["dataset_from_index"], row["dataset_to_index"] = self.total_frames, self.total_frames + n
        if self._data_bytes > self.data_mb * 1024**2:
            self._data.close()
            self._data, self._data_bytes = None, 0
            self._data_idx = _next_file(*self._data_idx, self.chunks_size)
        # Videos: encode straight into each camera's open mp4.
        for key in self.video_keys:
            writer = self._videos[key]
            if writer is None:
                c, f = self._video_idx[key]
                path = self.tmp / VIDEO_PATH.format(video_key=key, chunk_index=c, file_index=f)
                h, w = self.features[key]["shape"][:2]
                writer = self._videos[key] = VideoWriter(
                    path, self.fps, h, w, codec=self.video_codec, gop=self.video_gop
                )
            start = writer.frames_written
            writer.write(frames[key])
            row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"] = self._video_idx[key]
            row[f"videos/{key}/from_timestamp"] = start / self.fps
            row[f"videos/{key}/to_timestamp"] = (start + n) / self.fps
            if writer.size_bytes() > self.video_mb * 1024**2:
                self._close_video(key)
                self._video_idx[key] = _next_file(*self._video_idx[key], self.chunks_size)
        # Per-episode statistics, and what the global statistics need.
        for key, arr in cols.items():
            self._numeric.setdefault(key, []).append(arr)
            for stat, value in feature_stats(arr).items():
                row[f"stats/{key}/{stat}"] = value.tolist()
        for key in self.video_keys:
            h, w = self.features[key]["shape"][:2]
            step = max(1, max(h, w) // _STATS_IMAGE_SIDE)
            sample = frames[key][sample_indices(n, _STATS_FRAMES_PER_EPISODE)][:, ::step, ::step]
            self._image_samples[key].append(np.ascontiguousarray(sample))
            kept = self._image_samples[key]
            if sum(len(x) for x in kept) > _STATS_MAX_KEPT:  # bounded memory on huge datasets
                self._image_samples[key] = [np.concatenate(kept)[::2]]
            for stat, value in feature_stats(sample).items():
                row[f"stats/{key}/{stat}"] = value.tolist()
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        self.episodes.append(row)
        self.total_frames += n
        return ep

    @property
    def _all_features(self) -> dict[str, dict]:
        return {**DEFAULT_FEATURES, **self.features}

    def _close_video(self, key: str) -> None:
        writer = self._videos[key]
        if writer is not None:
            writer.close()
            if key not in self._video_info:
                info = probe(writer.path)
                info.pop("frames")
                self._video_info[key] = info
            self._videos[key] = None

    def finalize(self) -> Path:
        """Closes the files, writes stats and metadata, and moves the dataset into place. Returns root."""
        if self._done:
            return self.root
        if not self.episodes:
            self.abort()
            raise DatasetError(f"{self.root}: no episodes were added; nothing to write")
        if self._data is not None:
            self._data.close()
            self._data = None
        for key in self.video_keys:
            self._close_video(key)
        stats = compute_stats({k: np.concatenate(v) for k, v in self._numeric.items()})
        for key, samples in self._image_samples.items():
            stats[key] = feature_stats(np.concatenate(samples), max_image_frames=2000)
        meta = self.tmp / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        (self.tmp / STATS_PATH).write_text(json.dumps(stats_to_json(stats), indent=2))
        ep_path = self.tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episodes), ep_path)
        tasks = sorted(self.tasks, key=self.tasks.get)
        pd.DataFrame(
            {"task_index": [self.tasks[t] for t in tasks]}, index=pd.Index(tasks, name="task")
        ).to_parquet(self.tmp / TASKS_PATH)
        features = {
            k: {"dtype": f["dtype"], "shape": list(f["shape"]), "names": f.get("names")}
            | ({"info": self._video_info[k]} if k in self._video_info else {})
            for k, f in self._all_features.items()
        }
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.episodes),
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_mb,
            "video_files_size_in_mb": self.video_mb,
            "fps": int(self.fps) if self.fps.is_integer() else self.fps,  # LeRobot stores an int
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": features,
        }
        info.update(self.extra_info)
        (self.tmp / INFO_PATH).write_text(json.dumps(info, indent=4))
        self._staged.commit()  # fsyncs the tree, then swaps it in whole (an old dataset is replaced)
        self._done = True
        return self.root

    def abort(self) -> None:
        """Stops writing and removes the temporary directory; nothing appears at root."""
        if self._data is not None:
            self._data.close()
            self._data = None
        for key, writer in self._videos.items():
            if writer is not None:
                writer.abort()
                self._videos[key] = None
        self._staged.abort()
        self._done = True

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.finalize()


def _read_parquet(path: Path, what: str) -> pa.Table:
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


def _short(key: str) -> str:
    """'observation.images.corner2' -> 'corner2'."""
    return key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else key


def _names(names: Any, dim: int, prefix: str) -> list[str]:
    """Feature names as a flat list of `dim` strings (LeRobot sometimes nests them, e.g. {"motors": [...]})."""
    if isinstance(names, Mapping):
        names = [n for v in names.values() for n in (v if isinstance(v, list) else [v])]
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return list(names)
    return [f"{prefix}_{i}" for i in range(dim)]


class LeRobotDataset:
    """Reads a LeRobotDataset v3.0 directory (written by vlaforge or by LeRobot itself).

    Implements `vlaforge.data.dataset.TrainingDataset` (what training uses); `open_dataset` returns one
    for a LeRobot directory.

    Args:
        root: the dataset directory.
        cache_dir: where decoded video caches go (default ``root/.cache``).
        image_size: square side camera frames are cached and served at (`frames`, `frame_reader`,
            `__getitem__`) and the embodiment's `image_size`; None keeps the dataset's own size.
        unnormalized_actions: names or indices of action dims left unnormalised (or a comma-separated
            string); None takes the mask of vlaforge's stored embodiment when there is one, else every
            dim is normalised (nothing is guessed from names).

    Attributes:
        root, info, fps, features, num_frames, num_episodes, camera_keys (feature keys), camera_names
        (short), tasks (by task_index), episodes (rows of the episode index as dicts, sorted by
        episode_index), stats (meta/stats.json), image_size, cache_builds (the caches this object decoded).

    Raises:
        DatasetError: on a missing/corrupt file, another codebase_version, frame counts that disagree with
            the episode index, a column whose size disagrees with its feature shape, or a missing/unreadable
            video; the message names the file.
    """

    def __init__(
        self,
        root: str | Path,
        cache_dir: str | Path | None = None,
        image_size: int | None = None,
        unnormalized_actions: Sequence[str | int] | str | None = None,
    ) -> None:
        self.root = Path(root)
        if image_size is not None and int(image_size) < 1:
            raise DatasetError(f"image_size={image_size}: must be a positive number of pixels (or None)")
        self.image_size = int(image_size) if image_size is not None else None
        self.unnormalized_actions = parse_unnormalized(unnormalized_actions)
        self.cache_builds: list[str] = []
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root / ".cache"
        info_path = self.root / INFO_PATH
        if not info_path.is_file():
            raise DatasetError(f"{info_path} is missing: {self.root} is not a LeRobotDataset v3.0 directory")
        try:
            self.info: dict[str, Any] = json.loads(info_path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{info_path}: not valid JSON ({e})") from e
        version = self.info.get("codebase_version")
        if version != CODEBASE_VERSION:
            raise DatasetError(
                f"{info_path}: codebase_version is {version!r}; only LeRobotDataset {CODEBASE_VERSION} is "
                "supported. Convert it with LeRobot's v2.1 -> v3.0 converter "
                "(lerobot/datasets/v30/convert_dataset_v21_to_v30.py) and try again."
            )
        for key in ("fps", "features"):
            if key not in self.info:
                raise DatasetError(f"{info_path}: required key {key!r} is missing")
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        self.camera_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.camera_names = [_short(k) for k in self.camera_keys]
        unsupported = [k for k, f in self.features.items() if f.get("dtype") in ("image", "string")]
        if unsupported:
            raise DatasetError(
                f"{info_path}: features {unsupported} are stored as images/strings inside parquet; vlaforge "
                "reads video features only. Re-encode them as videos (LeRobot: use_videos=True)."
            )
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes()
        self.num_episodes = len(self.episodes)
        self._columns = self._load_data()
        self.num_frames = int(self._columns["index"].shape[0])
        self._check_videos()
        self.stats = self._load_stats()
        self._video_cache: dict[tuple[str, int, int], np.ndarray] = {}
        if self.unnormalized_actions is not None:
            self.embodiment()  # checks the names now, not at the first norm_stats()

    # ------------------------------------------------------------------ loading and validation
    def _load_tasks(self) -> list[str]:
        path = self.root / TASKS_PATH
        df = _read_parquet(path, "tasks").to_pandas()
        if "task_index" not in df.columns:
            raise DatasetError(f"{path}: no 'task_index' column (columns: {list(df.columns)})")
        names = df["task"] if "task" in df.columns else pd.Series(df.index, index=df.index)
        tasks: list[str | None] = [None] * len(df)
        for name, idx in zip(names.tolist(), df["task_index"].tolist()):
            if not 0 <= int(idx) < len(df):
                raise DatasetError(f"{path}: task_index {idx} out of range for {len(df)} tasks")
            tasks[int(idx)] = str(name)
        return [str(t) for t in tasks]

    def _load_episodes(self) -> list[dict[str, Any]]:
        files = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            raise DatasetError(f"{self.root / 'meta/episodes'}: no episode index parquet files")
        rows: list[dict[str, Any]] = []
        need = [
            "episode_index",
            "length",
            "dataset_from_index",
            "dataset_to_index",
            "data/chunk_index",
            "data/file_index",
        ]
        for key in self.camera_keys:
            need += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
        for path in files:
            table = _read_parquet(path, "episode index")
            missing = [c for c in need if c not in table.column_names]
            if missing:
                raise DatasetError(f"{path}: episode index is missing columns {missing}")
            keep = [c for c in table.column_names if not c.startswith("stats/")]
            rows += table.select(keep).to_pylist()
        rows.sort(key=lambda r: r["episode_index"])
        start = 0
        for i, r in enumerate(rows):
            if r["episode_index"] != i:
                raise DatasetError(
                    f"{self.root / 'meta/episodes'}: episode indices are not 0..{len(rows) - 1} "
                    f"(found {r['episode_index']} at position {i})"
                )
            a, b, n = int(r["dataset_from_index"]), int(r["dataset_to_index"]), int(r["length"])
            if b - a != n or a != start:
                raise DatasetError(
                    f"{self.root / 'meta/episodes'}: episode {i} has length {n} but spans frames [{a}, {b}) "
                    f"(expected to start at {start}); the episode index is inconsistent, re-create the dataset"
                )
            start = b
        return rows

    def _load_data(self) -> dict[str, np.ndarray]:
        template = self.info.get("data_path", DATA_PATH)
        files = sorted({(int(r["data/chunk_index"]), int(r["data/file_index"])) for r in self.episodes})
        tables = []
        for c, f in files:
            tables.append(_read_parquet(self.root / template.format(chunk_index=c, file_index=f), "data"))
        where = f"{self.root / 'data'}"
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
        except pa.ArrowInvalid as e:
            raise DatasetError(f"{where}: data files have incompatible columns ({e})") from e
        n = table.num_rows
        expected = sum(int(r["length"]) for r in self.episodes)
        total = self.info.get("total_frames", n)
        if n != expected or total != n:
            raise DatasetError(
                f"{where}: data files hold {n} frames but the episode index sums to {expected} and "
                f"meta/info.json says total_frames={total}; the dataset is inconsistent (re-create it)"
            )
        cols = {}
        for key, ft in self.features.items():
            if ft.get("dtype") == "video":
                continue
            if key not in table.column_names:
                raise DatasetError(
                    f"{where}: feature {key!r} from meta/info.json has no column in the data files"
                )
            cols[key] = _column_to_numpy(table[key], list(ft["shape"]), n, f"{where}: column {key!r}")
        for key in DEFAULT_FEATURES:
            if key not in cols:
                raise DatasetError(f"{where}: default column {key!r} is missing")
        order = np.argsort(cols["index"], kind="stable")
        if not np.array_equal(order, np.arange(n)):
            cols = {k: v[order] for k, v in cols.items()}
        if not np.array_equal(cols["index"], np.arange(n)):
            raise DatasetError(f"{where}: the 'index' column is not 0..{n - 1}; re-create the dataset")
        for r in self.episodes:
            a, b, e = int(r["dataset_from_index"]), int(r["dataset_to_index"]), int(r["episode_index"])
            if not np.all(cols["episode_index"][a:b] == e):
                found = np.unique(cols["episode_index"][a:b]).tolist()
                raise DatasetError(
                    f"{where}: frames [{a}, {b}) should belong to episode {e} per the episode index but the "
                    f"data says episodes {found}; the frame counts disagree (re-create the dataset)"
                )
        return cols

    def video_path(self, key: str, episode: int) -> Path:
        """The mp4 file holding camera `key` of `episode`."""
        r = self.episodes[episode]
        template = self.info.get("video_path") or VIDEO_PATH
        return self.root / template.format(
            video_key=key,
            chunk_index=int(r[f"videos/{key}/chunk_index"]),
            file_index=int(r[f"videos/{key}/file_index"]),
        )

    def _video_files(self, key: str) -> dict[Path, list[int]]:
        files: dict[Path, list[int]] = {}
        for e in range(self.num_episodes):
            files.setdefault(self.video_path(key, e), []).append(e)
        return files

    def _check_videos(self) -> None:
        for key in self.camera_keys:
            for path in self._video_files(key):
                try:
                    probe(path)
                except VideoError as e:
                    raise DatasetError(str(e)) from e

    def _load_stats(self) -> dict[str, dict[str, np.ndarray]]:
        path = self.root / STATS_PATH
        if not path.is_file():
            return compute_stats({k: v for k, v in self._columns.items() if k not in DEFAULT_FEATURES})
        try:
            return stats_from_json(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: not valid JSON ({e}); delete it to recompute statistics") from e

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self.num_frames

    def column(self, name: str) -> np.ndarray:
        """The whole column over all frames: (N,) for shape-[1] features, (N, *shape) otherwise."""
        if name not in self._columns:
            raise KeyError(f"no column {name!r}; have {sorted(self._columns)} (videos: use video_frames)")
        return self._columns[name]

    def episode_frames(self, ep: int) -> range:
        """Global frame indices of episode `ep`."""
        r = self.episodes[ep]
        return range(int(r["dataset_from_index"]), int(r["dataset_to_index"]))

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Every column at frame `i` (numpy), each camera's uint8 (h, w, 3) image, and "task": str."""
        if not -self.num_frames <= i < self.num_frames:
            raise IndexError(f"frame {i} out of range for {self.num_frames} frames")
        i = int(i) % self.num_frames
        item: dict[str, Any] = {k: v[i] for k, v in self._columns.items()}
        for key in self.camera_keys:
            item[key] = np.array(self.frames(key)[i])
        item["task"] = self.tasks[int(self._columns["task_index"][i])]
        return item

    # ------------------------------------------------------------------ the TrainingDataset interface
    def actions(self) -> np.ndarray:
        """float32 (N, D) actions in robot units."""
        if "action" not in self._columns:
            raise DatasetError(f"{self.root / INFO_PATH}: no 'action' feature; a policy needs actions")
        return np.ascontiguousarray(self._columns["action"], dtype=np.float32).reshape(self.num_frames, -1)

    def states(self) -> np.ndarray:
        """float32 (N, S) "observation.state"; (N, 0) when the dataset has none."""
        if "observation.state" not in self._columns:
            return np.zeros((self.num_frames, 0), dtype=np.float32)
        state = self._columns["observation.state"]
        return np.ascontiguousarray(state, dtype=np.float32).reshape(self.num_frames, -1)

    def task_indices(self) -> np.ndarray:
        """int64 (N,) task index of every frame."""
        return np.asarray(self._columns["task_index"], dtype=np.int64)

    def frames(self, camera: str) -> np.ndarray:
        """uint8 (N, s, s, 3) memmap of `camera` (short name or key) at `image_size`, from the cache."""
        return self.video_frames(self._camera_key(camera), self.image_size)

    def frame_reader(self, camera: str) -> VideoFrameReader:
        """A picklable reader decoding chosen frames of `camera` at `image_size` (bitwise = `frames`)."""
        key = self._camera_key(camera)
        native = _image_hw(self.features[key], key)
        files: dict[str, int] = {}
        file_of = np.empty(self.num_frames, dtype=np.int32)
        time_of = np.empty(self.num_frames, dtype=np.float64)
        for e, r in enumerate(self.episodes):
            a, n = int(r["dataset_from_index"]), int(r["length"])
            f = files.setdefault(str(self.video_path(key, e)), len(files))
            file_of[a : a + n] = f
            time_of[a : a + n] = float(r[f"videos/{key}/from_timestamp"]) + np.arange(n) / self.fps
        return VideoFrameReader(list(files), file_of, time_of, self.fps, native, self.image_size, key)

    def cache_bytes(self, cameras: Sequence[str] | None = None) -> int:
        """Bytes the decoded caches of `cameras` (default: all) take at `image_size`."""
        keys = [self._camera_key(c) for c in cameras] if cameras is not None else self.camera_keys
        return sum(self.num_frames * int(np.prod(self._frame_hw(k))) * 3 for k in keys)

    # ------------------------------------------------------------------ the decoded-video cache
    def _camera_key(self, camera: str) -> str:
        key = camera if camera in self.camera_keys else IMAGE_PREFIX + camera
        if key not in self.camera_keys:
            raise KeyError(f"no camera {camera!r} in {self.root}; cameras are {self.camera_names}")
        return key

    def _frame_hw(self, key: str, size: int | None = None) -> tuple[int, int]:
        size = self.image_size if size is None else size
        return (size, size) if size is not None else _image_hw(self.features[key], key)

    def video_frames(self, key: str, size: int | None = None) -> np.ndarray:
        """uint8 (N, h, w, 3) memmap of every frame of camera `key`, decoded once into the cache.

        Args:
            key: the camera's feature key ("observation.images.corner2") or short name.
            size: square side to resize the frames to; None: the dataset's own (h, w).

        The cache (``cache_dir/<key>.<h>x<w>.u8``) is built by the first process that needs it; others
        opening it at the same time wait on its lock file and then read it.
        """
        key = self._camera_key(key)
        native = _image_hw(self.features[key], key)
        h, w = (int(size), int(size)) if size is not None else native
        if (key, h, w) in self._video_cache:
            return self._video_cache[(key, h, w)]
        shape = (self.num_frames, h, w, 3)
        files = self._video_files(key)
        fingerprint = {
            "shape": list(shape),
            "fps": self.fps,
            "resize": None if (h, w) == native else "PIL bicubic (antialiased)",
            "files": file_fingerprint(list(files), self.root),
        }

        def build(out: np.ndarray) -> None:
            # The bar appears only when the build lasts more than 2 s (tqdm's `delay`).
            with tqdm(total=shape[0], desc=f"caching {key} at {h}x{w}", unit="frame", delay=2.0) as bar:
                for path, eps in files.items():
                    spans = [
                        (
                            e,
                            float(self.episodes[e][f"videos/{key}/from_timestamp"]),
                            int(self.episodes[e]["dataset_from_index"]),
                            int(self.episodes[e]["length"]),
                        )
                        for e in eps
                    ]
                    try:
                        decode_episodes_into(
                            path, out, spans, self.fps, progress=bar.update, native_hw=native
                        )
                    except VideoError as e:
                        raise DatasetError(f"{e} (camera {key!r})") from e

        frames = cached_frames(self.cache_dir, f"{key}.{h}x{w}", shape, fingerprint, build, self.cache_builds)
        self._video_cache[(key, h, w)] = frames
        return frames

    # ------------------------------------------------------------------ derived views
    def embodiment(self) -> Embodiment:
        """The robot this dataset describes, at `image_size` and with the `unnormalized_actions` mask.

        From info["vlaforge"]["embodiment"] when vlaforge wrote the dataset; otherwise derived from the
        features and statistics, with every action dim normalised unless `unnormalized_actions` names it
        (a gripper in degrees or 0..100 would not train if it were left unnormalised).
        """
        stored = (self.info.get("vlaforge") or {}).get("embodiment")
        if stored:
            emb = Embodiment.from_dict(stored)
            changes: dict[str, Any] = {}
            if self.image_size is not None:
                changes["image_size"] = self.image_size
            if self.unnormalized_actions is not None:
                changes["normalize_mask"] = normalize_mask(
                    emb.action_names, self.unnormalized_actions, f"{self.root}: "
                )
            return dataclasses.replace(emb, **changes) if changes else emb
        act = self.features.get("action")
        if act is None:
            raise DatasetError(f"{self.root / INFO_PATH}: no 'action' feature; cannot derive an embodiment")
        dim = int(np.prod(act["shape"]))
        names = _names(act.get("names"), dim, "action")
        stats = self.stats.get("action", {})
        col = self._columns["action"].reshape(self.num_frames, -1)
        low = np.asarray(stats.get("min", col.min(0))).reshape(-1)
        high = np.asarray(stats.get("max", col.max(0))).reshape(-1)
        state = self.features.get("observation.state")
        state_dim = int(np.prod(state["shape"])) if state else 0
        if not self.camera_keys:
            raise DatasetError(f"{self.root}: no video features; a VLA needs at least one camera")
        return Embodiment(
            action_dim=dim,
            action_names=names,
            normalize_mask=normalize_mask(names, self.unnormalized_actions, f"{self.root}: "),
            action_low=low.tolist(),
            action_high=high.tolist(),
            control_hz=self.fps,
            camera_names=list(self.camera_names),
            image_size=self._frame_hw(self.camera_keys[0])[0],
            state_dim=state_dim,
            state_names=_names(state.get("names"), state_dim, "state") if state else [],
            robot_type=str(self.info.get("robot_type") or "unknown"),
        )

    def training_data(self) -> dict[str, Any]:
        """Where a policy trained on this dataset comes from: the path and, for simulation datasets vlaforge
        collected, the environment and each episode's task and reset seed (`meta/info.json` "vlaforge")."""
        ours = self.info.get("vlaforge") or {}
        episodes = [
            {"task": str(e["task"]), "seed": int(e["seed"])}
            for e in ours.get("episodes") or []
            if "task" in e and "seed" in e
        ]
        return {"dataset": str(self.root.resolve()), "env": ours.get("env"), "episodes": episodes}

    def norm_stats(self) -> NormStats:
        """NormStats for "action" (with the embodiment's mask) and "observation.state" when present."""
        out = {}
        mask = self.embodiment().normalize_mask
        for key in ("action", "observation.state"):
            if key not in self._columns:
                continue
            s = self.stats.get(key, {})
            if any(k not in s for k in ("min", "max", "mean", "std", "q01", "q99")):
                s = feature_stats(self._columns[key])  # older stats.json without quantiles
            out[key] = FeatureStats(
                min=s["min"],
                max=s["max"],
                mean=s["mean"],
                std=s["std"],
                q01=s["q01"],
                q99=s["q99"],
                mask=mask if key == "action" else None,
            )
        return NormStats(out)

    def size_bytes(self) -> int:
        """Bytes on disk, not counting the decoded-video cache."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file() and ".cache" not in p.parts)

    def summary(self) -> str:
        """A human-readable summary (what `vlaforge dataset info DIR` prints)."""
        lines = [
            f"LeRobotDataset {self.info['codebase_version']} at {self.root}",
            f"  robot_type {self.info.get('robot_type')}, fps {self.fps:g}, {self.num_frames} frames, "
            f"{self.num_episodes} episodes, {len(self.tasks)} tasks, {self.size_bytes() / 1e6:.1f} MB on disk",
            "  tasks (episodes):",
        ]
        counts = pd.Series([t for r in self.episodes for t in (r.get("tasks") or [])]).value_counts()
        lines += [f"    {int(counts.get(t, 0)):5d}  {t}" for t in self.tasks] + ["  features:"]
        for key, ft in self.features.items():
            vi = ft.get("info") or {}
            extra = f"  ({vi['video.codec']}, {vi.get('video.pix_fmt')})" if "video.codec" in vi else ""
            lines.append(f"    {key:40s} {ft['dtype']:8s} {list(ft['shape'])}{extra}")
        for key in [k for k in ("action", "observation.state") if k in self.stats]:
            lines.append(f"  {key} stats:")
            for stat in [s for s in ("min", "max", "mean", "std", "q01", "q99") if s in self.stats[key]]:
                vals = np.asarray(self.stats[key][stat]).reshape(-1)
                lines.append(f"    {stat:4s} " + " ".join(f"{v:+.3f}" for v in vals))
        return "\n".join(lines)


@dataclasses.dataclass
class VideoFrameReader:
    """Decodes chosen frames of one camera of a LeRobot dataset (`LeRobotDataset.frame_reader`).

    Picklable (paths and numpy arrays; the open decoder is not pickled), so a streaming `ChunkSampler`
    sends it to its worker processes once. Frames come out bitwise equal to the decoded cache: the same
    decoder from a keyframe, the same RGB conversion and the same resize.

    Attributes:
        files: the mp4 paths.
        file_of: int32 (N,) index into `files` of every global frame.
        time_of: float64 (N,) presentation time (s) of every global frame inside its file.
        fps: frames per second.
        native_hw: (H, W) of the frames in the files.
        size: square side to resize to; None keeps `native_hw`.
        key: the camera's feature key (for error messages).
    """

    files: list[str]
    file_of: np.ndarray
    time_of: np.ndarray
    fps: float
    native_hw: tuple[int, int]
    size: int | None
    key: str

    def __post_init__(self) -> None:
        self._decoder: SeekingDecoder | None = None

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        h, w = (self.size, self.size) if self.size is not None else self.native_hw
        return (int(h), int(w), 3)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (B, h, w, 3) frames at global indices `indices` (B,), in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), *self.frame_shape), dtype=np.uint8)  # (B, h, w, 3)
        if self._decoder is None:
            self._decoder = SeekingDecoder()
        files = self.file_of[idx]
        for f in np.unique(files):
            sel = np.nonzero(files == f)[0]
            try:
                imgs = self._decoder.frames_at(self.files[f], self.time_of[idx[sel]], self.fps)
            except VideoError as e:
                raise DatasetError(f"{e} (camera {self.key!r})") from e
            if imgs.shape[1:3] != tuple(self.native_hw):
                raise DatasetError(
                    f"{self.files[f]}: frames are {imgs.shape[1:]} but the dataset's features say "
                    f"{[*self.native_hw, 3]}; fix the feature shape in meta/info.json or re-encode the video"
                )
            out[sel] = resize_frames(imgs, self.size)
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_decoder"] = None  # open containers stay in the process that opened them
        return state
