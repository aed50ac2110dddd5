"""`vlaforge dataset convert`: LeRobot v3.0 <-> RLDS / TFDS, streaming, in parallel, nothing silently lost.

LeRobot -> RLDS is parallel over output shards, RLDS -> LeRobot over episodes; memory stays bounded (one
episode per worker, at most 2 x workers in flight) and the output is staged and put in place whole
(`vlaforge.atomic`). How features map between the formats, and what is reported as not carried:
docs/datasets.md, "Conversion".
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import re
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vlaforge.atomic import atomic_dir
from vlaforge.data.interface import IMAGE_PREFIX
from vlaforge.data.rlds import (
    RLDSFeature,
    decode_episode,
    encode_episode,
    encode_image,
    is_rlds,
    shard_name,
    write_metadata,
)
from vlaforge.data.tfrecord import parse_example, read_record, write_records
from vlaforge.errors import InputError

_LEROBOT_DEFAULTS = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
_STRUCTURAL = {"steps/is_first", "steps/is_last"}  # implied by the episode boundaries in LeRobot
_STANDARD = {"steps/language_instruction", "steps/is_first", "steps/is_last", "steps/is_terminal"}
_SHARD_TARGET_BYTES = 200 << 20  # aim for shards of about this size (TFDS writes 100-300 MB shards)


@dataclasses.dataclass
class ConvertReport:
    """What a conversion did.

    Attributes:
        out: the written dataset.
        episodes, frames: how many were written.
        seconds: wall time.
        not_carried: source features with no equivalent in the target format (named, not silently lost).
    """

    out: Path
    episodes: int
    frames: int
    seconds: float
    not_carried: list[str]

    def __str__(self) -> str:
        rate = self.frames / max(self.seconds, 1e-9)
        line = f"wrote {self.out}: {self.episodes} episodes, {self.frames} frames in {self.seconds:.1f} s ({rate:.0f} frames/s)"
        if self.not_carried:
            line += f"\n  not carried (no equivalent in the target format): {', '.join(self.not_carried)}"
        return line


def convert(
    src: str | Path,
    to: str,
    out: str | Path,
    *,
    workers: int = 2,
    overwrite: bool = False,
    image_format: str = "jpeg",
    episodes_per_shard: int | None = None,
    oxe: str | None = None,
    video_gop: int | None = None,
) -> ConvertReport:
    """Converts the dataset at `src` to `to` ("lerobot" or "rlds") in `out`.

    Args:
        src: a LeRobot v3.0 or an RLDS / TFDS directory.
        to: the target format, "rlds" or "lerobot".
        out: the directory to write (for RLDS, TFDS's `<name>/`: the shards go in `out/1.0.0/`, unless
            `out` already ends in a version number).
        workers: worker processes.
        overwrite: replace an existing `out`.
        image_format: RLDS images, "jpeg" (quality 95, as most Open X-Embodiment datasets) or "png" (lossless).
        episodes_per_shard: RLDS shard size in episodes (default: shards of about 200 MB, at least one per
            worker).
        oxe: reading RLDS: the Open X-Embodiment standardisation (None: by name; "": none).
        video_gop: writing LeRobot: keyframe interval of the videos (None: the encoder's default).
    """
    import time

    src, out = Path(src), Path(out)
    if to not in ("rlds", "lerobot"):
        raise InputError(f"--to {to!r}: choose 'rlds' or 'lerobot'")
    if workers < 1:
        raise InputError(f"workers={workers}: must be >= 1")
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it")
    if out.resolve() == src.resolve():
        raise InputError(f"{out} is the source dataset; choose another output directory")
    t0 = time.perf_counter()
    if to == "rlds":
        if is_rlds(src):
            raise InputError(f"{src} is already an RLDS dataset")
        report = _lerobot_to_rlds(src, out, workers, image_format, episodes_per_shard)
    else:
        if not is_rlds(src):
            raise InputError(
                f"{src} is not an RLDS dataset (no dataset_info.json); converting to lerobot reads RLDS"
            )
        report = _rlds_to_lerobot(src, out, workers, oxe, video_gop, overwrite)
    report.seconds = time.perf_counter() - t0
    return report


# ------------------------------------------------------------------ LeRobot -> RLDS


def _tfds_name(path: Path) -> str:
    name = re.sub(r"[^a-z0-9_]", "_", path.resolve().name.lower()).strip("_")
    return name if name and name[0].isalpha() else f"ds_{name}"


def _lerobot_features(ds: Any, image_format: str) -> tuple[list[RLDSFeature], dict[str, str]]:
    """RLDS features of a LeRobot dataset, and LeRobot column -> RLDS key for its numeric columns."""
    feats: list[RLDSFeature] = []
    for key in ds.camera_keys:
        h, w = ds.features[key]["shape"][:2]
        cam = key[len(IMAGE_PREFIX) :]
        feats.append(RLDSFeature(f"steps/observation/{cam}", "image", "uint8", (h, w, 3), True, image_format))
    columns: dict[str, str] = {}
    for key, ft in ds.features.items():
        if key in _LEROBOT_DEFAULTS or ft.get("dtype") == "video":
            continue
        rkey = "steps/" + key.replace(".", "/")
        shape = tuple(int(d) for d in ft["shape"])
        shape = () if shape == (1,) else shape
        dtype = str(np.dtype(ft["dtype"]))
        if rkey == "steps/is_terminal" and dtype == "bool" and shape == ():
            columns[key] = rkey  # a column that came from RLDS: its values replace the default
            continue
        if rkey in _STANDARD:
            rkey = "steps/lerobot/" + key.replace(".", "/")
        feats.append(RLDSFeature(rkey, "tensor", dtype, shape, True, "none", f"LeRobot feature {key!r}"))
        columns[key] = rkey
    feats += [
        RLDSFeature("steps/language_instruction", "text", "string", (), True),
        RLDSFeature("steps/is_first", "tensor", "bool", (), True),
        RLDSFeature("steps/is_last", "tensor", "bool", (), True),
        RLDSFeature("steps/is_terminal", "tensor", "bool", (), True),
        RLDSFeature("episode_metadata/episode_index", "tensor", "int64", (), False),
        RLDSFeature("episode_metadata/file_path", "text", "string", (), False),
    ]
    return feats, columns


def _lerobot_shard_job(
    src: str, path: str, episodes: list[int], feats: list[RLDSFeature], columns: dict[str, str], fmt: str
) -> tuple[int, int]:
    """Writes the RLDS shard `path` holding `episodes` of the LeRobot dataset `src` (a worker process)."""
    from vlaforge.data.lerobot import LeRobotDataset

    ds = LeRobotDataset(src)
    readers = {key: ds.frame_reader(key) for key in ds.camera_keys}
    by_key = {f.key: f for f in feats}
    task_index = ds.column("task_index")
    frames = 0

    def records():
        nonlocal frames
        for e in episodes:
            r = ds.episode_frames(e)
            idx = np.arange(r.start, r.stop)
            T = len(idx)
            first = np.zeros(T, bool)
            first[0] = True
            values: dict[str, Any] = {
                "steps/is_first": first,
                "steps/is_last": first[::-1].copy(),
                "steps/is_terminal": first[::-1].copy(),
            }
            for key, reader in readers.items():
                values[f"steps/observation/{key[len(IMAGE_PREFIX) :]}"] = [
                    encode_image(img, fmt) for img in reader.read(idx)
                ]
            for col, rkey in columns.items():
                values[rkey] = ds.column(col)[r.start : r.stop].reshape(T, *by_key[rkey].shape)
            values["steps/language_instruction"] = [ds.tasks[int(t)] for t in task_index[r.start : r.stop]]
            values["episode_metadata/episode_index"] = np.int64(e)
            values["episode_metadata/file_path"] = f"{src}#episode={e}"
            frames += T
            yield encode_episode(values, by_key, f"{src} episode {e}")

    write_records(path, records())
    return len(episodes), frames


def _lerobot_to_rlds(
    src: Path, out: Path, workers: int, fmt: str, episodes_per_shard: int | None
) -> ConvertReport:
    from vlaforge.data.lerobot import LeRobotDataset

    ds = LeRobotDataset(src)
    name = _tfds_name(src)
    version_dir = out if re.fullmatch(r"\d+\.\d+\.\d+", out.name) else out / "1.0.0"
    feats, columns = _lerobot_features(ds, fmt)
    E = ds.num_episodes
    if episodes_per_shard is None:
        est = ds.size_bytes() * (
            3 if fmt == "png" else 1
        )  # encoded images take about what the videos do, or more
        shards = max(min(E, workers), -(-est // _SHARD_TARGET_BYTES))
        episodes_per_shard = -(-E // max(1, min(E, shards)))
    if episodes_per_shard < 1:
        raise InputError(f"episodes_per_shard={episodes_per_shard}: must be >= 1")
    groups = [list(range(a, min(a + episodes_per_shard, E))) for a in range(0, E, episodes_per_shard)]
    with atomic_dir(out, overwrite=True) as staging:  # `convert` refused an existing `out` unless overwrite
        tmp = staging / version_dir.relative_to(out) if version_dir != out else staging
        tmp.mkdir(parents=True, exist_ok=True)
        n = len(groups)
        jobs = [
            (str(src), str(tmp / shard_name(name, "train", i, n)), g, feats, columns, fmt)
            for i, g in enumerate(groups)
        ]
        lengths = [0] * n
        frames = 0
        with tqdm(total=E, desc=f"{src.name} -> RLDS", unit="episode", delay=1.0) as bar:
            for i, (count, f) in _run_jobs(_lerobot_shard_job, jobs, workers):
                lengths[i] = count
                frames += f
                bar.update(count)
        info = ds.info.get("vlaforge") or {}
        meta = {
            "source": {
                "format": "lerobot",
                "path": str(src.resolve()),
                "codebase_version": ds.info.get("codebase_version"),
            },
            "embodiment": ds.embodiment().to_dict(),
            "env": info.get("env"),
            "episodes": info.get("episodes") or [],
            "mapping": {
                "cameras": {
                    k[len(IMAGE_PREFIX) :]: f"steps/observation/{k[len(IMAGE_PREFIX) :]}"
                    for k in ds.camera_keys
                },
                "action": "steps/action",
                "state": "steps/observation/state" if "observation.state" in columns else None,
                "instruction": "steps/language_instruction",
                "control_hz": ds.fps,
            },
        }
        write_metadata(tmp, name, "1.0.0", "train", feats, lengths, f"Converted by vlaforge from {src}", meta)
    return ConvertReport(version_dir, E, frames, 0.0, [])


# ------------------------------------------------------------------ RLDS -> LeRobot


def _rlds_episode_job(
    path: str, offset: int, features: dict[str, RLDSFeature], mapping: Any, extra: dict[str, str]
) -> dict[str, Any]:
    """Decodes one RLDS episode into LeRobot frames (a worker process)."""
    from vlaforge.data.rlds import decode_image
    from vlaforge.data.rlds_dataset import map_episode

    data = read_record(path, offset)
    source = f"{path} record at byte offset {offset}"
    steps, values = decode_episode(parse_example(data, source=source), features, source, data)
    action, state, texts, _ = map_episode(values, steps, mapping, source, keep_all=True)
    frames: dict[str, np.ndarray] = {"action": action}
    if state is not None:
        frames["observation.state"] = state
    for cam, key in mapping.cameras.items():
        frames[IMAGE_PREFIX + cam] = np.stack([decode_image(b, f"{source} {key}") for b in values[key]])
    for rkey, col in extra.items():
        frames[col] = np.asarray(values[rkey]).reshape(steps, -1)
    return {"task": texts[0] if texts else "", "frames": frames, "steps": steps}


def _rlds_to_lerobot(
    src: Path, out: Path, workers: int, oxe: str | None, video_gop: int | None, overwrite: bool
) -> ConvertReport:
    from vlaforge.data.lerobot_writer import LeRobotWriter
    from vlaforge.data.rlds_dataset import RLDSDataset

    ds = RLDSDataset(src, oxe=oxe, keep_all_steps=True)  # a conversion keeps every step
    emb = ds.embodiment()
    feats = ds.tfds.features
    m = ds.mapping
    used = set(m.cameras.values()) | {m.action, m.state, m.instruction} | _STRUCTURAL
    extra: dict[str, str] = {}
    not_carried: list[str] = []
    lerobot_features: dict[str, dict] = {}
    for cam in ds.camera_names:
        h, w = ds.native_hw(cam)
        lerobot_features[IMAGE_PREFIX + cam] = {"dtype": "video", "shape": [h, w, 3]}
    lerobot_features["action"] = {"dtype": "float32", "shape": [emb.action_dim], "names": emb.action_names}
    if ds.states().shape[1]:
        lerobot_features["observation.state"] = {
            "dtype": "float32",
            "shape": [emb.state_dim],
            "names": emb.state_names,
        }
    for key, f in feats.items():
        if key in used:
            continue
        if f.per_step and f.kind == "tensor" and f.dtype not in ("string", "bfloat16") and f.size > 0:
            col = key[len("steps/") :].replace("/", ".")
            if col in lerobot_features:
                col = f"rlds.{col}"
            extra[key] = col
            lerobot_features[col] = {"dtype": f.dtype, "shape": [f.size]}
        else:
            not_carried.append(key)
    meta = ds.tfds.vlaforge or {}
    info = {"embodiment": emb.to_dict(), "env": meta.get("env"), "episodes": meta.get("episodes") or []}
    info["source"] = {
        "format": "rlds",
        "path": str(ds.root.resolve()),
        "name": ds.name,
        "version": ds.tfds.version,
    }
    jobs = []
    for e in range(ds.num_episodes):
        if len(ds.episode_frames(e)):
            path, offset = ds.episode_record(e)
            jobs.append((str(path), offset, feats, m, extra))
    skipped = ds.num_episodes - len(jobs)
    if skipped:
        not_carried.append(f"{skipped} empty episode(s) (LeRobot episodes need a frame)")
    frames = 0
    with LeRobotWriter(
        out, fps=emb.control_hz, features=lerobot_features, robot_type=emb.robot_type, overwrite=overwrite,
        extra_info={"vlaforge": info}, video_gop=video_gop,
    ) as writer, tqdm(total=len(jobs), desc=f"{ds.name} -> LeRobot", unit="episode", delay=1.0) as bar:  # fmt: skip
        for _, ep in _run_jobs(_rlds_episode_job, jobs, workers):
            writer.add_episode(ep["task"], ep["frames"])
            frames += ep["steps"]
            bar.update()
    return ConvertReport(out, len(jobs), frames, 0.0, not_carried)


# ------------------------------------------------------------------ shared


def _run_jobs(fn: Any, jobs: list[tuple], workers: int):
    """Yields (i, fn(*jobs[i])) in order, with at most 2 x workers jobs in flight (bounded memory)."""
    if workers == 1 or len(jobs) == 1:
        for i, job in enumerate(jobs):
            yield i, fn(*job)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending: deque[tuple[int, Future]] = deque()
        it = iter(enumerate(jobs))
        try:
            for i, job in it:
                pending.append((i, pool.submit(fn, *job)))
                if len(pending) >= 2 * workers:
                    j, fut = pending.popleft()
                    yield j, fut.result()
            while pending:
                j, fut = pending.popleft()
                yield j, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()


__all__ = ["ConvertReport", "convert"]
