"""`RLDSDataset`: an RLDS / TFDS dataset as a training dataset, served from an index of its shards.

The on-disk format and the episode decoding live in `vlaforge.data.rlds`; this module maps features to
training columns (`RLDSMapping`: Open X-Embodiment's table for a dataset it knows, `vlaforge.data.oxe`, else
the RLDS conventions), builds and caches the index (every record's CRCs checked; numeric columns and each
frame's byte span in its shard), and implements `vlaforge.data.interface.TrainingDataset`: any frame is one
`pread` and one decode. Why an index rather than a shuffle buffer: docs/datasets.md, "RLDS index".
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from vlaforge.atomic import atomic_write, write_json
from vlaforge.data import oxe
from vlaforge.data.frame_cache import BuildLock, cached_frames, file_fingerprint
from vlaforge.data.interface import normalize_mask, parse_unnormalized
from vlaforge.data.rlds import RLDSError, RLDSFeature, TFDSDirectory, decode_image, iter_episodes, open_tfds
from vlaforge.data.stats import norm_stats_of
from vlaforge.data.video import resize_frames
from vlaforge.types import Embodiment, NormStats

INDEX_VERSION = 2  # bump when the index layout changes: old caches are then rebuilt
_PARALLEL_SCAN_BYTES = 64 << 20  # shards scanned in worker processes above this total size

# ---------------------------------------------------------------------------------------------------------
# Mapping features to training columns
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RLDSMapping:
    """Which RLDS features a policy trains on.

    Attributes:
        cameras: camera name -> image feature key ("steps/observation/image").
        action: the numeric per-step feature holding the action (used when `oxe` is None).
        state: the numeric per-step feature holding the proprioceptive state, or None.
        instruction: the per-step (or per-episode) text feature holding the instruction, or None.
        oxe: an Open X-Embodiment dataset name: its `vlaforge.data.oxe` transform makes the action (and
            state) from the step features instead of `action` / `state`.
        action_names: names of the action dims (None: "action_0", ...).
        normalize_mask: default per-dim normalisation (None: every dim).
        control_hz: the dataset's control rate when known.
    """

    cameras: dict[str, str]
    action: str | None = "steps/action"
    state: str | None = None
    instruction: str | None = None
    oxe: str | None = None
    action_names: tuple[str, ...] | None = None
    normalize_mask: tuple[bool, ...] | None = None
    control_hz: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_rgb(f: RLDSFeature) -> bool:
    return f.kind == "image" and f.dtype == "uint8" and (len(f.shape) < 3 or f.shape[-1] in (3, -1))


def default_mapping(tfds: TFDSDirectory, oxe_name: str | None = None) -> RLDSMapping:
    """The mapping for `tfds`: Open X-Embodiment's table for a dataset it knows, else the RLDS conventions.

    Args:
        oxe_name: the table row to use ("" never uses the table); None looks the dataset's name up.
    """
    feats = tfds.features
    stored = (tfds.vlaforge or {}).get("mapping")
    if stored and oxe_name is None:  # a dataset vlaforge wrote says what its features are
        return RLDSMapping(**{**stored, "cameras": dict(stored["cameras"])})
    if oxe_name != "":
        row = oxe.find_dataset(oxe_name or tfds.name, required=oxe_name is not None)
        if row is not None:
            return oxe_mapping(row, feats, str(tfds.root))
    cameras = {
        key.rsplit("/", 1)[-1]: key
        for key, f in feats.items()
        if f.per_step and key.startswith("steps/observation/") and _is_rgb(f)
    }
    if not cameras:
        raise RLDSError(
            f"{tfds.root}: no RGB image feature under steps/observation (images: "
            f"{[k for k, f in feats.items() if f.kind == 'image']}); a VLA needs a camera"
        )
    act = feats.get("steps/action")
    if act is None or act.kind != "tensor" or act.dtype == "string":
        nested = sorted(k for k in feats if k.startswith("steps/action/"))
        hint = (
            f'its action is a dict ({nested}): name its Open X-Embodiment standardisation (the "oxe" of its '
            "mixture entry, or `dataset convert --oxe NAME`)"
            if nested
            else f"it has {sorted(k for k in feats if k.startswith('steps/'))}"
        )
        raise RLDSError(f"{tfds.root}: no numeric 'steps/action' feature; {hint}")
    state = feats.get("steps/observation/state")
    instruction = next(
        (k for k in ("steps/language_instruction", "episode_metadata/language_instruction") if k in feats),
        None,
    )
    if instruction is None:
        texts = [k for k, f in feats.items() if f.kind == "text" and "instruction" in k]
        instruction = texts[0] if texts else None
    return RLDSMapping(
        cameras=cameras,
        action="steps/action",
        state="steps/observation/state" if state is not None and state.kind == "tensor" else None,
        instruction=instruction,
    )


def oxe_mapping(
    row: oxe.OXEDataset, features: Mapping[str, Any], root: str = "", cameras: tuple[str, ...] | None = None
) -> RLDSMapping:
    """The `RLDSMapping` that reads a dataset through Open X-Embodiment table row `row`.

    Args:
        row: the table row.
        features: the dataset's features by flat key (`vlaforge.data.rlds.parse_features`).
        root: the dataset directory, for messages.
        cameras: roles to read; None: "primary" as OpenVLA, or every role the row has when it has no primary.
            A camera is named by its role, so the datasets of a mixture agree on camera names.

    Raises:
        InputError: a feature the row reads is not in `features` (naming it and listing the step features).
    """
    where = f"{root}: " if root else ""
    step_keys = sorted(k[len("steps/") :] for k in features if k.startswith("steps/"))
    missing = [k for k in row.needed_keys() if k not in step_keys]
    if missing:
        raise RLDSError(
            f"{where}the Open X-Embodiment standardisation {row.name!r} reads {missing}, which the dataset "
            f"does not have; its step features are {step_keys}. Name the right row (oxe=NAME), or none (oxe='')"
        )
    roles = cameras or (
        ("primary",) if row.images["primary"] else tuple(r for r in oxe.ROLES if row.images[r])
    )
    cams = {}
    for role in roles:
        key = f"steps/observation/{row.images.get(role)}"
        if row.images.get(role) is None or key not in features:
            have = [k for k in features if getattr(features[k], "kind", "") == "image"]
            raise RLDSError(f"{where}{row.name}: no {role} camera ({key}); image features: {have}")
        cams[role] = key
    instr = features.get(f"steps/{row.instruction}")
    is_text = instr is not None and (
        getattr(instr, "kind", "") == "text" or getattr(instr, "dtype", "") == "string"
    )
    return RLDSMapping(
        cameras=cams,
        action=None,
        state=None,
        instruction=f"steps/{row.instruction}" if is_text else None,
        oxe=row.name,
        action_names=oxe.ACTION_NAMES if row.action_dim == 7 else None,
        normalize_mask=oxe.EEF_NORMALIZE_MASK if row.action_dim == 7 else None,
        control_hz=row.control_hz,
    )


def map_episode(
    values: Mapping[str, Any], steps: int, mapping: RLDSMapping, source: str, keep_all: bool = True
) -> tuple[np.ndarray, np.ndarray | None, list[str], np.ndarray]:
    """The training columns of one decoded episode.

    Args:
        keep_all: keep every step; False keeps the steps the mapping's Open X-Embodiment standardisation
            selects as OpenVLA does (every step for a mapping without one).

    Returns:
        (action float32 (T', D), state float32 (T', S) or None, instruction per kept step, int64 (T',) the
        episode steps kept, in order).
    """
    if mapping.oxe is not None:
        out = oxe.standardize_record(mapping.oxe, values, source, keep_all=keep_all)
        action, state, index = out["action"], out["state"], out["index"]
    else:
        action = np.asarray(values[mapping.action], dtype=np.float32).reshape(steps, -1)
        state = (
            np.asarray(values[mapping.state], dtype=np.float32).reshape(steps, -1) if mapping.state else None
        )
        index = np.arange(steps, dtype=np.int64)
    if mapping.instruction is None:
        texts = [""] * steps
    else:
        v = values[mapping.instruction]
        texts = list(v) if isinstance(v, list) else [str(v)] * steps
    return action, state, [texts[i] for i in index.tolist()], index


# ---------------------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------------------


def _scan_shard(tfds: TFDSDirectory, mapping: RLDSMapping, shard: int, keep_all: bool) -> dict[str, Any]:
    """Everything the index keeps about one shard's kept steps (runs in a worker process)."""
    ep_steps, ep_offset, actions, states, texts = [], [], [], [], []
    spans = {cam: [] for cam in mapping.cameras}
    for offset, _length, steps, values in iter_episodes(tfds, shard, spans=True):
        source = f"{tfds.shards[shard]} record at byte offset {offset}"
        action, state, text, index = map_episode(values, steps, mapping, source, keep_all)
        if len(action) != len(index):
            raise RLDSError(
                f"{source}: the mapped action has {len(action)} steps, the selection {len(index)}"
            )
        base = offset + 12  # the record's data starts after the 8-byte length and its 4-byte CRC
        for cam, key in mapping.cameras.items():
            spans[cam].append(values[key].spans[index] + base)  # (T', 2) absolute file positions
        ep_steps.append(len(index))
        ep_offset.append(offset)
        actions.append(action)
        states.append(state if state is not None else np.zeros((len(index), 0), np.float32))
        texts.extend(text)
    dims = {a.shape[1] for a in actions} | {-1}
    if len(dims) > 2:
        raise RLDSError(f"{tfds.shards[shard]}: episodes have different action dims {sorted(dims - {-1})}")
    return {
        "ep_steps": np.asarray(ep_steps, dtype=np.int64),
        "ep_offset": np.asarray(ep_offset, dtype=np.int64),
        "action": np.concatenate(actions) if actions else np.zeros((0, 0), np.float32),
        "state": np.concatenate(states) if states else np.zeros((0, 0), np.float32),
        "texts": texts,
        "spans": {c: (np.concatenate(s) if s else np.zeros((0, 2), np.int64)) for c, s in spans.items()},
    }


def _scan_job(args: tuple[TFDSDirectory, RLDSMapping, int, bool]) -> dict[str, Any]:
    return _scan_shard(*args)


def build_index(
    tfds: TFDSDirectory, mapping: RLDSMapping, workers: int = 2, keep_all: bool = True
) -> dict[str, Any]:
    """Scans every shard (CRCs, counts, features) into the arrays `RLDSDataset` serves from.

    `keep_all` False indexes only the steps `map_episode` keeps (OpenVLA's selection); ep_steps counts them.

    Returns:
        {"arrays": {name: ndarray}, "tasks": [str]}; arrays: ep_steps (E,), ep_offset (E,), ep_shard (E,),
        action (N, D), state (N, S), task_index (N,), and per camera `span/<name>` (N, 2) file positions.
    """
    jobs = [(tfds, mapping, i, keep_all) for i in range(len(tfds.shards))]
    results: list[dict[str, Any]] = []
    desc = f"indexing {tfds.name} ({len(jobs)} shards)"
    with tqdm(total=len(jobs), desc=desc, unit="shard", delay=2.0) as bar:
        # Spawning workers costs about a second each: worth it only for more than a few MB of shards.
        big = sum(p.stat().st_size for p in tfds.shards) > _PARALLEL_SCAN_BYTES
        if workers > 1 and len(jobs) > 1 and big:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
                for r in pool.map(_scan_job, jobs):
                    results.append(r)
                    bar.update()
        else:
            for j in jobs:
                results.append(_scan_job(j))
                bar.update()
    tasks: dict[str, int] = {}
    task_index = [tasks.setdefault(t, len(tasks)) for r in results for t in r["texts"]]
    action_dims = {r["action"].shape[1] for r in results if len(r["action"])}
    state_dims = {r["state"].shape[1] for r in results if len(r["state"])}
    if len(action_dims) > 1 or len(state_dims) > 1:
        raise RLDSError(
            f"{tfds.root}: shards disagree on action dims {action_dims} / state dims {state_dims}"
        )
    d, s = (action_dims or {0}).pop(), (state_dims or {0}).pop()
    arrays = {
        "ep_steps": np.concatenate([r["ep_steps"] for r in results]),
        "ep_offset": np.concatenate([r["ep_offset"] for r in results]),
        "ep_shard": np.concatenate([np.full(len(r["ep_steps"]), i, np.int64) for i, r in enumerate(results)]),
        "action": np.concatenate([r["action"].reshape(-1, d) for r in results]).astype(np.float32),
        "state": np.concatenate([r["state"].reshape(-1, s) for r in results]).astype(np.float32),
        "task_index": np.asarray(task_index, dtype=np.int64),
    }
    for cam in mapping.cameras:
        arrays[f"span/{cam}"] = np.concatenate([r["spans"][cam] for r in results]).astype(np.int64)
    return {"arrays": arrays, "tasks": list(tasks)}


def _index_fingerprint(tfds: TFDSDirectory, mapping: RLDSMapping, keep_all: bool) -> dict[str, Any]:
    return {
        "index_version": INDEX_VERSION,
        "keep_all_steps": keep_all,
        "split": tfds.split,
        "mapping": mapping.to_dict(),
        "features": hashlib.sha256((tfds.root / "features.json").read_bytes()).hexdigest(),
        "shards": file_fingerprint(tfds.shards, tfds.root),
    }


def load_or_build_index(
    tfds: TFDSDirectory, mapping: RLDSMapping, cache_dir: Path, workers: int = 2, keep_all: bool = True
) -> tuple[dict[str, np.ndarray], list[str], bool]:
    """The index from `cache_dir` when its fingerprint matches, else built and saved (atomically), by one
    process at a time (`BuildLock`): concurrent openers wait for it and load it.

    Returns:
        (arrays, tasks, built): `built` is True when this call scanned the shards.
    """
    fingerprint = _index_fingerprint(tfds, mapping, keep_all)
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    stem = f"rlds-index.{tfds.split}.{digest}"
    meta_path, data_path = cache_dir / f"{stem}.json", cache_dir / f"{stem}.safetensors"

    def load() -> tuple[dict[str, np.ndarray], list[str]] | None:
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("fingerprint") == fingerprint:
                return load_file(str(data_path)), list(meta["tasks"])
        except (OSError, json.JSONDecodeError, KeyError):
            pass
        return None

    if (cached := load()) is not None:
        return (*cached, False)
    try:  # DDP ranks opening the dataset at once: one scans, the others wait and load its index
        lock = BuildLock(cache_dir / f"{stem}.lock", f"the RLDS index of {tfds.root}")
    except OSError as e:  # a read-only dataset directory: build it here, without the cache
        tqdm.write(f"could not save the RLDS index in {cache_dir} ({e.strerror}); pass cache_dir to keep it")
        index = build_index(tfds, mapping, workers, keep_all)
        return index["arrays"], index["tasks"], True
    with lock:
        if (cached := load()) is not None:  # another process built it while we waited
            return (*cached, False)
        index = build_index(tfds, mapping, workers, keep_all)
        with atomic_write(data_path) as tmp:  # the arrays first: the sidecar names a complete file
            save_file({k: np.ascontiguousarray(v) for k, v in index["arrays"].items()}, str(tmp))
        write_json(meta_path, {"fingerprint": fingerprint, "tasks": index["tasks"]}, indent=None)
    return index["arrays"], index["tasks"], True


# ---------------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------------


class RLDSDataset:
    """An RLDS / TFDS dataset as a `vlaforge.data.interface.TrainingDataset` (see the module docstring).

    Args:
        path: the TFDS version directory (or `<name>/`, whose highest version is read).
        split: the split to read.
        image_size: square side frames are served and cached at; None keeps the dataset's size.
        unnormalized_actions: action dims left unnormalised (names or indices); None follows the mapping
            (Open X-Embodiment: the gripper, as OpenVLA) or normalises every dim.
        cache_dir: where the index and decoded-frame caches go (default ``<version dir>/.cache``).
        oxe: Open X-Embodiment table row to standardise with; None looks the dataset's name up, "" never
            uses the table.
        mapping: an explicit `RLDSMapping` (overrides `oxe`).
        keep_all_steps: serve every step; by default a dataset read through Open X-Embodiment's table serves
            the steps OpenVLA trains on (`vlaforge.data.oxe.standardize`: Bridge without its first and last
            step, DROID without its still steps).
        index_workers: processes scanning shards when the index is built.

    Attributes:
        tfds, mapping, name, num_frames, num_episodes, tasks, camera_names, image_size, index_built,
        keep_all_steps.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        split: str = "train",
        image_size: int | None = None,
        unnormalized_actions: Sequence[str | int] | str | None = None,
        cache_dir: str | Path | None = None,
        oxe: str | None = None,
        mapping: RLDSMapping | None = None,
        index_workers: int = 2,
        keep_all_steps: bool = False,
    ) -> None:
        if image_size is not None and int(image_size) < 1:
            raise RLDSError(f"image_size={image_size}: must be a positive number of pixels (or None)")
        self.tfds = open_tfds(path, split)
        self.root = self.tfds.root
        self.name = self.tfds.name
        self.image_size = int(image_size) if image_size is not None else None
        self.unnormalized_actions = parse_unnormalized(unnormalized_actions)
        self.mapping = mapping or default_mapping(self.tfds, oxe)
        for cam, key in self.mapping.cameras.items():
            f = self.tfds.features.get(key)
            if f is None or f.kind != "image" or not f.per_step:
                raise RLDSError(
                    f"{self.root}: camera {cam!r} maps to {key!r}, which is not a per-step image feature"
                )
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root / ".cache"
        self.cache_builds: list[str] = []
        self.keep_all_steps = bool(keep_all_steps)
        arrays, self.tasks, self.index_built = load_or_build_index(
            self.tfds, self.mapping, self.cache_dir, index_workers, self.keep_all_steps
        )
        self._arrays = arrays
        self._ep_start = np.concatenate([[0], np.cumsum(arrays["ep_steps"])]).astype(np.int64)
        self.num_episodes = int(len(arrays["ep_steps"]))
        self.num_frames = int(self._ep_start[-1])
        if self.num_frames == 0:
            raise RLDSError(f"{self.root}: split {split!r} has no steps")
        self.camera_names = list(self.mapping.cameras)
        self._frames: dict[tuple[str, int, int], np.ndarray] = {}
        if self.unnormalized_actions is not None:
            self.embodiment()  # checks the names now

    # ------------------------------------------------------------------ TrainingDataset
    def episode_frames(self, episode: int) -> range:
        """Global frame indices of `episode`."""
        return range(int(self._ep_start[episode]), int(self._ep_start[episode + 1]))

    def episode_record(self, episode: int) -> tuple[Path, int]:
        """(shard file, byte offset of the record) of `episode`: read it with `tfrecord.read_record`."""
        return self.tfds.shards[int(self._arrays["ep_shard"][episode])], int(
            self._arrays["ep_offset"][episode]
        )

    def actions(self) -> np.ndarray:
        """float32 (N, D) actions in robot units (after the mapping's standardisation)."""
        return self._arrays["action"]

    def states(self) -> np.ndarray:
        """float32 (N, S) states; (N, 0) when the mapping has none."""
        return self._arrays["state"]

    def task_indices(self) -> np.ndarray:
        """int64 (N,) index into `tasks` of every frame."""
        return self._arrays["task_index"]

    def native_hw(self, camera: str) -> tuple[int, int]:
        """(H, W) of `camera`'s frames as stored (from features.json, else from its first frame)."""
        f = self.tfds.features[self.mapping.cameras[camera]]
        if len(f.shape) >= 2 and f.shape[0] > 0 and f.shape[1] > 0:
            return int(f.shape[0]), int(f.shape[1])
        first = self.frame_reader(camera, size=None, check_shape=False).read(np.zeros(1, np.int64))
        return int(first.shape[1]), int(first.shape[2])

    def _check_camera(self, camera: str) -> str:
        if camera not in self.mapping.cameras:
            raise RLDSError(f"no camera {camera!r} in {self.root}; cameras are {self.camera_names}")
        return camera

    def frame_reader(
        self, camera: str, size: int | None | str = "default", check_shape: bool = True
    ) -> RLDSFrameReader:
        """A picklable reader decoding chosen frames of `camera` at `image_size` (bitwise = `frames`)."""
        self._check_camera(camera)
        size = self.image_size if size == "default" else size
        native = self.native_hw(camera) if check_shape else None
        return RLDSFrameReader(
            files=[str(p) for p in self.tfds.shards],
            shard_of=np.repeat(self._arrays["ep_shard"], self._arrays["ep_steps"]).astype(np.int32),
            spans=self._arrays[f"span/{camera}"],
            native_hw=native,
            size=size,
            key=self.mapping.cameras[camera],
        )

    def frames(self, camera: str) -> np.ndarray:
        """uint8 (N, s, s, 3) memmap of every frame of `camera` at `image_size`, decoded once into the cache."""
        self._check_camera(camera)
        native = self.native_hw(camera)
        h, w = (self.image_size, self.image_size) if self.image_size is not None else native
        if (camera, h, w) in self._frames:
            return self._frames[(camera, h, w)]
        shape = (self.num_frames, h, w, 3)
        reader = self.frame_reader(camera)
        fingerprint = {
            "shape": list(shape),
            "key": self.mapping.cameras[camera],
            "resize": None if (h, w) == native else "PIL bicubic (antialiased)",
            "files": file_fingerprint(self.tfds.shards, self.root),
        }

        def build(out: np.ndarray) -> None:
            step = 256
            with tqdm(total=shape[0], desc=f"caching {camera} at {h}x{w}", unit="frame", delay=2.0) as bar:
                for a in range(0, shape[0], step):
                    idx = np.arange(a, min(a + step, shape[0]))
                    out[idx] = reader.read(idx)
                    bar.update(len(idx))

        stem = f"{self.tfds.split}.{camera}.{h}x{w}"
        frames = cached_frames(self.cache_dir, stem, shape, fingerprint, build, self.cache_builds)
        self._frames[(camera, h, w)] = frames
        return frames

    def cache_bytes(self, cameras: Sequence[str] | None = None) -> int:
        """Bytes the decoded caches of `cameras` (default: all) take at `image_size`."""
        total = 0
        for cam in cameras if cameras is not None else self.camera_names:
            h, w = (self.image_size,) * 2 if self.image_size is not None else self.native_hw(cam)
            total += self.num_frames * h * w * 3
        return total

    # ------------------------------------------------------------------ derived views
    def embodiment(self) -> Embodiment:
        """The robot: vlaforge's stored embodiment for datasets it wrote, else derived from the mapping."""
        stored = (self.tfds.vlaforge or {}).get("embodiment")
        size = self.image_size or self.native_hw(self.camera_names[0])[0]
        if stored:
            emb = Embodiment.from_dict(stored)
            changes: dict[str, Any] = {"image_size": size}
            if self.unnormalized_actions is not None:
                changes["normalize_mask"] = normalize_mask(
                    emb.action_names, self.unnormalized_actions, f"{self.root}: "
                )
            return dataclasses.replace(emb, **changes)
        action = self.actions()
        d = action.shape[1]
        names = list(self.mapping.action_names or [f"action_{i}" for i in range(d)])
        if len(names) != d:
            raise RLDSError(f"{self.root}: the mapping names {len(names)} action dims; the data has {d}")
        if self.unnormalized_actions is not None:
            mask = normalize_mask(names, self.unnormalized_actions, f"{self.root}: ")
        else:
            mask = list(self.mapping.normalize_mask or [True] * d)
        s = self.states().shape[1]
        return Embodiment(
            action_dim=d,
            action_names=names,
            normalize_mask=mask,
            action_low=action.min(0).tolist(),
            action_high=action.max(0).tolist(),
            control_hz=float(self.mapping.control_hz or 10.0),
            camera_names=list(self.camera_names),
            image_size=int(size),
            state_dim=s,
            state_names=[f"state_{i}" for i in range(s)],
            robot_type=self.name,
        )

    def norm_stats(self) -> NormStats:
        """NormStats of "action" (with the embodiment's mask) and "observation.state" when there is one."""
        return norm_stats_of(self.actions(), self.states(), self.embodiment().normalize_mask)

    def training_data(self) -> dict[str, Any]:
        """Provenance: the path, and vlaforge's per-episode task and seed for datasets it converted."""
        meta = self.tfds.vlaforge or {}
        episodes = [
            {"task": str(e["task"]), "seed": int(e["seed"])}
            for e in meta.get("episodes") or []
            if "task" in e and "seed" in e
        ]
        return {"dataset": str(self.root.resolve()), "env": meta.get("env"), "episodes": episodes}

    def size_bytes(self) -> int:
        """Bytes of the shards on disk."""
        return sum(p.stat().st_size for p in self.tfds.shards)

    def summary(self) -> str:
        """A human-readable summary (what `vlaforge dataset info DIR` prints)."""
        t = self.tfds
        counts = np.bincount(self.task_indices(), minlength=len(self.tasks))
        lines = [
            f"RLDS dataset {t.name} {t.version} (split {t.split}) at {t.root}",
            f"  {len(t.shards)} shards, {self.num_episodes} episodes, {self.num_frames} steps, "
            f"{len(self.tasks)} instructions, {self.size_bytes() / 1e6:.1f} MB on disk",
            "  mapping: " + (f"Open X-Embodiment standardisation {self.mapping.oxe!r}, "
                             + ("every step" if self.keep_all_steps else "the steps OpenVLA trains on")
                             if self.mapping.oxe else
                             f"action {self.mapping.action}, state {self.mapping.state}, "
                             f"instruction {self.mapping.instruction}"),
            "  cameras: " + ", ".join(f"{c} <- {k}" for c, k in self.mapping.cameras.items()),
            "  instructions (steps):",
        ]  # fmt: skip
        order = np.argsort(-counts)[:10]
        lines += [f"    {int(counts[i]):7d}  {self.tasks[i] or '(empty)'}" for i in order]
        if len(self.tasks) > 10:
            lines.append(f"    ... and {len(self.tasks) - 10} more")
        lines.append("  features:")
        for key, f in t.features.items():
            extra = f" ({f.encoding})" if f.kind == "image" or f.encoding != "none" else ""
            lines.append(f"    {key:48s} {f.kind:6s} {f.dtype:8s} {list(f.shape)}{extra}")
        for key, arr in (("action", self.actions()), ("state", self.states())):
            if arr.shape[1]:
                lines.append(f"  {key} min/max:")
                lines.append("    min " + " ".join(f"{v:+.3f}" for v in arr.min(0)))
                lines.append("    max " + " ".join(f"{v:+.3f}" for v in arr.max(0)))
        return "\n".join(lines)


@dataclasses.dataclass
class RLDSFrameReader:
    """Decodes chosen frames of one camera straight from the shards (`RLDSDataset.frame_reader`).

    Picklable (paths and arrays; open files are not pickled). One `os.pread` of the frame's encoded bytes
    and one decode per frame, so streaming training reads only the images it uses.

    Attributes:
        files: the shard paths.
        shard_of: int32 (N,) shard of every global frame.
        spans: int64 (N, 2) [start, end) of every frame's encoded image in its shard.
        native_hw: (H, W) the features declare (checked on every decoded frame), or None to skip the check.
        size: square side to resize to; None keeps the native size.
        key: the image feature (for error messages).
    """

    files: list[str]
    shard_of: np.ndarray
    spans: np.ndarray
    native_hw: tuple[int, int] | None
    size: int | None
    key: str

    def __post_init__(self) -> None:
        self._fds: dict[int, int] = {}

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        if self.size is not None:
            return (int(self.size), int(self.size), 3)
        if self.native_hw is None:
            raise RLDSError(f"{self.key}: the native frame size is unknown; give a size")
        return (*map(int, self.native_hw), 3)

    def read_encoded(self, index: int) -> bytes:
        """The encoded image bytes of global frame `index`."""
        shard = int(self.shard_of[index])
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.files[shard], os.O_RDONLY)
        start, end = (int(x) for x in self.spans[index])
        data = os.pread(fd, end - start, start)
        if len(data) != end - start:
            raise RLDSError(f"{self.files[shard]}: cut short at byte {start} (frame {index} of {self.key!r})")
        return data

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (B, h, w, 3) frames at global indices `indices` (B,), in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        frames = []
        for i in idx.tolist():
            where = f"{self.files[int(self.shard_of[i])]} frame {i} of {self.key!r}"
            img = decode_image(self.read_encoded(i), where)
            if self.native_hw is not None and img.shape[:2] != tuple(self.native_hw):
                raise RLDSError(
                    f"{where}: the image is {img.shape[:2]} but features.json says {tuple(self.native_hw)}"
                )
            frames.append(resize_frames(img, self.size))
        if not frames:
            return np.zeros((0, *self.frame_shape), dtype=np.uint8)
        return np.stack(frames)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown os may be gone
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = {}  # file descriptors stay in the process that opened them
        return state
