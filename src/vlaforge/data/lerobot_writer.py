"""`LeRobotWriter`: writes a LeRobotDataset v3.0 (`vlaforge.data.lerobot_format`) episode by episode.

It streams: each episode's rows go to the open parquet file as a row group and its frames are encoded
straight into the camera's open mp4, so memory stays bounded; files roll over at `data_files_size_in_mb` /
`video_files_size_in_mb` like LeRobot's (huggingface/lerobot, lerobot/datasets/lerobot_dataset.py). The
dataset is written into a staged sibling directory and swapped into place whole at `finalize()`
(`vlaforge.atomic.StagedDir`), so a crash never leaves something that looks like a complete dataset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vlaforge.atomic import StagedDir
from vlaforge.data.lerobot_format import (
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_FILE_SIZE_IN_MB,
    DATA_PATH,
    DEFAULT_FEATURES,
    EPISODES_PATH,
    INFO_KEYS,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_FILE_SIZE_IN_MB,
    VIDEO_PATH,
    DatasetError,
    arrow_column,
    is_scalar,
    next_file,
)
from vlaforge.data.lerobot_stats import StatsCollector
from vlaforge.data.stats import stats_to_json
from vlaforge.data.video import PIX_FMTS, VideoWriter, max_crf, probe

# How datasets store their camera frames by default: full-resolution colour at CRF 10, so that a policy
# trains on what it will see (a one-pixel goal marker keeps its colour; `vlaforge.data.video`, "Chroma").
DATASET_PIX_FMT = "yuv444p"
DATASET_CRF = 10


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
        video_pix_fmt, video_crf: chroma layout and quality (`DATASET_PIX_FMT`, `DATASET_CRF`: full-resolution
            colour, so a one-pixel coloured detail a policy must see survives; "yuv420p" for files any
            player decodes at half-resolution colour; see `vlaforge.data.video`).
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
        video_pix_fmt: str = DATASET_PIX_FMT,
        video_crf: int = DATASET_CRF,
        data_files_size_in_mb: float = DATA_FILE_SIZE_IN_MB,
        video_files_size_in_mb: float = VIDEO_FILE_SIZE_IN_MB,
        chunks_size: int = CHUNKS_SIZE,
    ) -> None:
        self.root = Path(root)
        if fps <= 0:
            raise DatasetError(f"fps must be > 0; got {fps}")
        if self.root.exists() and not overwrite:
            raise DatasetError(
                f"{self.root} already exists; use --overwrite to replace it (overwrite=True from Python)"
            )
        self.fps = float(fps)
        self.robot_type = robot_type
        self.extra_info = dict(extra_info or {})
        self.video_codec = video_codec
        self.video_gop = video_gop
        if video_pix_fmt not in PIX_FMTS:
            raise DatasetError(f"video pixel format {video_pix_fmt!r} is not one of {PIX_FMTS}")
        top = max_crf(video_codec)
        if not 0 <= int(video_crf) <= top:
            raise DatasetError(
                f"video CRF must be in [0, {top}] for {video_codec} (lower keeps more); got {video_crf}"
            )
        self.video_pix_fmt, self.video_crf = video_pix_fmt, int(video_crf)
        self.data_mb, self.video_mb = data_files_size_in_mb, video_files_size_in_mb
        self.chunks_size = chunks_size
        clash = sorted(set(self.extra_info) & INFO_KEYS)
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
                (k, arrow_column(np.zeros([1, *f["shape"]], f["dtype"]), f["shape"]).type)
                for k, f in tabular.items()
            ]
        )
        self._data: pq.ParquetWriter | None = None
        self._data_idx = (0, 0)
        self._data_bytes = 0
        self._videos: dict[str, VideoWriter | None] = dict.fromkeys(self.video_keys)
        self._video_idx = {k: (0, 0) for k in self.video_keys}
        self._video_info: dict[str, dict] = {}
        self._stats = StatsCollector(self.video_keys)
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
            if is_scalar(shape) and arr.ndim == 1:
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
            {f.name: arrow_column(cols[f.name], self._all_features[f.name]["shape"]) for f in self._schema},
            schema=self._schema,
        )
        self._data.write_table(table)
        self._data_bytes += table.nbytes
        row["data/chunk_index"], row["data/file_index"] = self._data_idx
        row["dataset_from_index"], row["dataset_to_index"] = self.total_frames, self.total_frames + n
        if self._data_bytes > self.data_mb * 1024**2:
            self._data.close()
            self._data, self._data_bytes = None, 0
            self._data_idx = next_file(*self._data_idx, self.chunks_size)
        # Videos: encode straight into each camera's open mp4.
        for key in self.video_keys:
            writer = self._videos[key]
            if writer is None:
                c, f = self._video_idx[key]
                path = self.tmp / VIDEO_PATH.format(video_key=key, chunk_index=c, file_index=f)
                h, w = self.features[key]["shape"][:2]
                writer = self._videos[key] = VideoWriter(
                    path,
                    self.fps,
                    h,
                    w,
                    codec=self.video_codec,
                    gop=self.video_gop,
                    pix_fmt=self.video_pix_fmt,
                    crf=self.video_crf,
                )
            start = writer.frames_written
            writer.write(frames[key])
            row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"] = self._video_idx[key]
            row[f"videos/{key}/from_timestamp"] = start / self.fps
            row[f"videos/{key}/to_timestamp"] = (start + n) / self.fps
            if writer.size_bytes() > self.video_mb * 1024**2:
                self._close_video(key)
                self._video_idx[key] = next_file(*self._video_idx[key], self.chunks_size)
        # Per-episode statistics, and what the global statistics need.
        row.update(self._stats.add_episode(cols, {k: frames[k] for k in self.video_keys}))
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
        stats = self._stats.finalize()
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
