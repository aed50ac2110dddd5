"""`LeRobotDataset`: reads and validates a LeRobotDataset v3.0 (`vlaforge.data.lerobot_format`) for training.

The reader keeps every numeric column in memory as numpy and decodes each camera's videos once,
sequentially, into a uint8 memmap cache at the training resolution (`vlaforge.data.frame_cache`; frames
resized with Pillow's antialiased bicubic filter, `vlaforge.data.video.resize_frames`), so training never
seeks in a video per frame; for datasets too big to cache, `frame_reader` decodes chosen frames
(`vlaforge.data.lerobot_video`). It implements `vlaforge.data.interface.TrainingDataset`. Bad input is a
`DatasetError` naming the file and what to do; nothing is silently skipped. This module is also where the
LeRobot writer and errors are imported from (`LeRobotWriter`, `DatasetError`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from vlaforge.data.frame_cache import cached_frames, file_fingerprint
from vlaforge.data.interface import (
    IMAGE_PREFIX,
    PLAN_COLUMN,
    PLAN_PAD_COLUMN,
    ActionPlans,
    normalize_mask,
    parse_unnormalized,
)
from vlaforge.data.lerobot_format import (
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_FEATURES,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    DatasetError,
    column_to_numpy,
    flat_names,
    image_hw,
    read_parquet,
    short_name,
)
from vlaforge.data.lerobot_stats import feature_norm_stats, load_stats
from vlaforge.data.lerobot_video import VideoFrameReader
from vlaforge.data.lerobot_writer import LeRobotWriter
from vlaforge.data.video import VideoError, decode_episodes_into, probe
from vlaforge.types import Embodiment, NormStats


class LeRobotDataset:
    """Reads a LeRobotDataset v3.0 directory (written by vlaforge or by LeRobot itself).

    Implements `vlaforge.data.interface.TrainingDataset` (what training uses); `open_dataset` returns one
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
        self.camera_names = [short_name(k) for k in self.camera_keys]
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
        df = read_parquet(path, "tasks").to_pandas()
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
            table = read_parquet(path, "episode index")
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
            tables.append(read_parquet(self.root / template.format(chunk_index=c, file_index=f), "data"))
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
            cols[key] = column_to_numpy(table[key], list(ft["shape"]), n, f"{where}: column {key!r}")
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
        numeric = {k: v for k, v in self._columns.items() if k not in DEFAULT_FEATURES}
        return load_stats(self.root / STATS_PATH, numeric)

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

    def action_plans(self) -> ActionPlans | None:
        """Every frame's own chunk target (`vlaforge.data.interface.PLAN_COLUMN`), None when the dataset
        has no such column."""
        if PLAN_COLUMN not in self._columns:
            return None
        dim = self.actions().shape[1]
        plans = np.asarray(self._columns[PLAN_COLUMN], np.float32).reshape(self.num_frames, -1, dim)
        if PLAN_PAD_COLUMN in self._columns:
            pad = np.asarray(self._columns[PLAN_PAD_COLUMN], bool).reshape(self.num_frames, -1)
        else:
            pad = np.zeros(plans.shape[:2], bool)
        if pad.shape != plans.shape[:2]:
            raise DatasetError(
                f"{self.root}: {PLAN_PAD_COLUMN!r} has shape {pad.shape[1:]} per frame but {PLAN_COLUMN!r} "
                f"plans {plans.shape[1]} steps; the two columns must agree"
            )
        return ActionPlans(plans, pad, np.ones(self.num_frames, bool))

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
        native = image_hw(self.features[key], key)
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
        return (size, size) if size is not None else image_hw(self.features[key], key)

    def video_frames(self, key: str, size: int | None = None) -> np.ndarray:
        """uint8 (N, h, w, 3) memmap of every frame of camera `key`, decoded once into the cache.

        Args:
            key: the camera's feature key ("observation.images.corner2") or short name.
            size: square side to resize the frames to; None: the dataset's own (h, w).

        The cache (``cache_dir/<key>.<h>x<w>.u8``) is built by the first process that needs it; others
        opening it at the same time wait on its lock file and then read it.
        """
        key = self._camera_key(key)
        native = image_hw(self.features[key], key)
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
        names = flat_names(act.get("names"), dim, "action")
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
            state_names=flat_names(state.get("names"), state_dim, "state") if state else [],
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
        return feature_norm_stats(self.stats, self._columns, self.embodiment().normalize_mask)

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


__all__ = ["DatasetError", "LeRobotDataset", "LeRobotWriter", "VideoFrameReader"]
