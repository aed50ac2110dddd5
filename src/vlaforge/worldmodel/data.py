"""Episodes for the world model and the judge: one or more LeRobot v3.0 datasets read into arrays, the
last N episodes of each held out, and the (context, target) windows of the dynamics model."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlaforge.data.dataset import open_dataset
from vlaforge.errors import InputError

if TYPE_CHECKING:
    from vlaforge.worldmodel.model import WorldModel


SCENE_KEY = "observation.environment_state"  # the scene's state, as `vlaforge eval --record` writes it


@dataclass
class Episodes:
    """Every frame of the chosen datasets, concatenated.

    Attributes:
        frames: uint8 (N, S, S, 3) of the camera.
        actions: float32 (N, A), the action taken at each frame.
        success: bool (N,), whether the scene shown is a success (`observation.success`, else
            `next.success` of the previous frame, else all False).
        bounds: (start, stop) of every episode in the global index.
        heldout: indices into `bounds` of the held-out episodes.
        instructions: the task words of every episode.
        sources: (dataset path, episode index in it) of every episode.
        camera, fps: the camera read and the frame rate.
    """

    frames: np.ndarray
    actions: np.ndarray
    success: np.ndarray
    bounds: list[tuple[int, int]]
    heldout: list[int]
    instructions: list[str]
    sources: list[tuple[str, int]]
    camera: str
    fps: float
    tasks: list[str] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=list)  # each episode's recorded start seed, if any
    states: np.ndarray | None = None  # float32 (N, S) when the datasets have a state
    scene: np.ndarray | None = None  # float32 (N, E) when every dataset has `observation.environment_state`
    embodiment: dict | None = None  # the first dataset's robot, at the camera and size read
    env: str | None = None  # the registered env the first dataset was recorded in

    @property
    def train(self) -> list[int]:
        held = set(self.heldout)
        return [e for e in range(len(self.bounds)) if e not in held]


def slug(text: str) -> str:
    """A task's key made from its words, for episodes recorded without a task name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "task"


def task_key(eps: Episodes, e: int) -> str:
    """The task of episode `e`: its recorded task name, else `slug` of its words (as the world model's
    environment names its tasks)."""
    return (eps.tasks[e] if e < len(eps.tasks) else "") or slug(eps.instructions[e])


def _success(ds, n: int, bounds: list[tuple[int, int]]) -> np.ndarray:
    cols = ds._columns
    if "observation.success" in cols:
        return np.asarray(cols["observation.success"]).reshape(n).astype(bool)
    out = np.zeros(n, bool)
    if "next.success" in cols:
        nxt = np.asarray(cols["next.success"]).reshape(n).astype(bool)
        for a, b in bounds:
            out[a + 1 : b] = nxt[a : b - 1]
    return out


def _scene(ds) -> np.ndarray | None:
    cols = getattr(ds, "_columns", {})
    if SCENE_KEY not in cols:
        return None
    return np.ascontiguousarray(cols[SCENE_KEY], np.float32).reshape(ds.num_frames, -1)


def load_episodes(
    paths: list[str],
    camera: str | None,
    image_size: int | None,
    heldout: int,
    starts: list[str] = (),
    by_task: bool = False,
) -> Episodes:
    """Reads `paths` (LeRobot v3.0 datasets) into one `Episodes`; the last `heldout` of each are held out
    (with `by_task`, the last `heldout` of each task in each: recordings are in task order, so otherwise
    every held-out episode is of the last task), and every episode of the datasets in `starts` (read
    after `paths`; never trained on). At least one episode of each dataset (or task) stays in training.

    Raises:
        InputError: a path that is not a LeRobot dataset, a missing camera, or datasets that disagree.
    """
    if not paths:
        raise InputError("--dataset: give at least one LeRobot v3.0 dataset")
    frames, actions, success, bounds, held, words, sources, tasks, seeds = [], [], [], [], [], [], [], [], []
    states, scenes, emb, env = [], [], None, None
    offset, cam, fps, size = 0, camera, None, image_size
    every = set(range(len(paths), len(paths) + len(starts)))
    for k, path in enumerate([*paths, *starts]):
        if not (Path(path) / "meta" / "info.json").is_file():
            raise InputError(f"{path}: no meta/info.json; the world model reads LeRobot v3.0 datasets")
        ds = open_dataset(path, image_size=size)
        names = list(ds.camera_names)
        cam = cam or names[0]
        if cam not in names:
            raise InputError(f"{path}: no camera {cam!r} (cameras: {names}); choose one with --camera")
        f = np.asarray(ds.frames(cam))
        size = size or f.shape[1]
        if f.shape[1:] != (size, size, 3):
            raise InputError(f"{path}: frames are {f.shape[1:]}, the first dataset's {(size, size, 3)}")
        a = ds.actions()
        if actions and a.shape[1] != actions[0].shape[1]:
            raise InputError(f"{path}: action dim {a.shape[1]}, the first dataset's {actions[0].shape[1]}")
        local = [(r.start, r.stop) for r in (ds.episode_frames(e) for e in range(ds.num_episodes))]
        task_idx = ds.task_indices()
        groups: dict[int, list[int]] = {}  # the episodes of each task (or all of them in one group)
        for e, (s, _) in enumerate(local):
            groups.setdefault(int(task_idx[s]) if by_task else 0, []).append(e)
        if k in every:
            held_here = set(range(len(local)))
        else:  # the last `heldout` of each group, one at least left to train on
            held_here = {e for g in groups.values() for e in g[len(g) - min(heldout, len(g) - 1) :]}
        for e, (s, t) in enumerate(local):
            if e in held_here:
                held.append(len(bounds))
            bounds.append((s + offset, t + offset))
            words.append(ds.tasks[int(task_idx[s])])
            sources.append((str(path), e))
        frames.append(f)
        actions.append(a)
        states.append(ds.states())
        scenes.append(_scene(ds))
        if emb is None:
            emb = {**ds.embodiment().to_dict(), "camera_names": [cam], "image_size": int(size)}
            env = (ds.info.get("vlaforge") or {}).get("env")
        success.append(_success(ds, ds.num_frames, local))
        offset += ds.num_frames
        fps = fps or ds.fps
        info_eps = (getattr(ds, "info", {}).get("vlaforge") or {}).get("episodes") or []
        tasks.extend(str(x.get("task", "")) for x in info_eps[: len(local)])
        tasks.extend("" for _ in range(len(local) - len(info_eps[: len(local)])))
        seeds.extend(x.get("seed") for x in info_eps[: len(local)])
        seeds.extend(None for _ in range(len(local) - len(info_eps[: len(local)])))
    return Episodes(
        frames=np.concatenate(frames), actions=np.concatenate(actions), success=np.concatenate(success),
        bounds=bounds, heldout=held, instructions=words, sources=sources, camera=cam, fps=float(fps),
        tasks=tasks, seeds=seeds, embodiment=emb, env=env,
        states=np.concatenate(states) if len({x.shape[1] for x in states}) == 1 else None,
        scene=np.concatenate(scenes) if all(x is not None for x in scenes)
        and len({x.shape[1] for x in scenes}) == 1 else None,
    )  # fmt: skip


def training_episodes(cfg: dict) -> Episodes:
    """The episodes a world model was trained from, held-out ones marked as in training, from its
    ``worldmodel.json`` (`cfg`: datasets, camera, image size, held-out count and start recordings)."""
    return load_episodes(
        cfg["datasets"],
        cfg["camera"],
        cfg["image_size"],
        int(cfg["heldout_per_dataset"]),
        cfg.get("starts") or [],
    )


def episodes_to_test(cfg: dict, dataset: str | None) -> tuple[Episodes, list[int]]:
    """The episodes a world model (`cfg`, its ``worldmodel.json``) is tested on, and their indices: every
    episode of `dataset` (a comma list, read at the model's camera and size) when given, else its own
    held-out ones."""
    if dataset:
        eps = load_episodes([d.strip() for d in dataset.split(",")], cfg["camera"], cfg["image_size"], 0)
        return eps, list(range(len(eps.bounds)))
    eps = training_episodes(cfg)
    return eps, list(eps.heldout)


def clamp_to_episode(idx: np.ndarray, start: int | np.ndarray) -> np.ndarray:
    """Increasing frame indices (..., L) with those before their episode's `start` (a scalar or (...,))
    replaced by the earliest one inside it: the context an episode starting from its first frame alone
    has (at stride 1, that first frame repeated)."""
    inside = idx >= np.asarray(start)[..., None]
    earliest = np.take_along_axis(idx, inside.argmax(-1)[..., None], -1)
    return np.where(inside, idx, earliest)


def windows(
    bounds: list[tuple[int, int]], episodes: list[int], context: int, horizon: int = 1, stride: int = 1
) -> np.ndarray:
    """int64 (W, K + R): per window, K context frame indices then R = `horizon` target frame indices, all
    `stride` frames apart (the model predicts every `stride`-th frame).

    Every frame at least `stride` after an episode's first starts the targets of a window whose R targets
    lie in the episode; context slots before the episode's start hold the earliest slot inside it
    (with stride 1 the first frame), so an episode can start from its first frame alone, as the
    environment does.
    """
    rows = []
    offsets = stride * np.arange(-context, horizon)
    for e in episodes:
        start, stop = bounds[e]
        for j in range(start + stride, stop - (horizon - 1) * stride):
            rows.append(clamp_to_episode(j + offsets, start))
    if not rows:
        if horizon == 1 and stride == 1:
            raise InputError("no training windows: every episode has a single frame")
        raise InputError(
            f"no training windows: no episode has more than {(horizon - 1) * stride + stride} frames "
            "(lower --rollout or --stride)"
        )
    return np.stack(rows).astype(np.int64)


def context_actions(
    actions: np.ndarray,
    win: np.ndarray,
    bounds_start: np.ndarray,
    context: int | None = None,
    stride: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """float32 (W, K + R - 1, stride * A): the `stride` actions taken from each frame of the window but its
    last (the K context frames, then the first R - 1 targets, through which a rollout goes on), flattened
    in time order, and bool (W, K + R - 1): the padding slots (before the episode's start), whose actions
    the model sees as zeros. `context` is K (None: the window's length less one, R = 1)."""
    k = win.shape[1] - 1 if context is None else int(context)
    first = win[:, k : k + 1]  # the first target
    slot_frame = first + stride * (np.arange(win.shape[1] - 1)[None, :] - k)  # the frame each slot starts at
    pad = slot_frame < bounds_start[:, None]
    steps = slot_frame[..., None] + np.arange(stride)  # (W, K + R - 1, stride)
    out = actions[np.maximum(steps, 0)].astype(np.float32)  # (W, K + R - 1, stride, A)
    out[pad] = 0.0
    return out.reshape(*pad.shape, -1), pad


def window_starts(bounds: list[tuple[int, int]], win: np.ndarray) -> np.ndarray:
    """int64 (W,): the start frame of each window's episode."""
    starts = np.array([s for s, _ in bounds])
    stops = np.array([t for _, t in bounds])
    ep = np.searchsorted(stops, win[:, -1], side="right")
    assert np.all(starts[ep] <= win[:, -1])
    return starts[ep]


def imagined_episodes(
    model: WorldModel, eps: Episodes, seed: int = 0, episodes: Sequence[int] | None = None
) -> Episodes:
    """`eps` with the frames of `episodes` (None: all) replaced by the model's open-loop replay of each: its
    first real frame, then what the model imagines under the episode's own recorded actions (the noise
    seeded by `seed` + the episode's index, as `replay.replay` does). Actions and success labels stay the real
    ones, so a judge trained on the result learns what the model draws when the simulator said success."""
    import torch
    from tqdm.auto import tqdm

    from vlaforge.worldmodel.model import imagine

    model.eval()
    frames = eps.frames.copy()
    for e in tqdm(range(len(eps.bounds)) if episodes is None else episodes, desc="imagine", unit="episode"):
        a, b = eps.bounds[e]
        if b - a >= 2:
            frames[a:b] = imagine(
                model, eps.frames[a], eps.actions[a : b - 1], torch.Generator().manual_seed(seed + e)
            )
    return replace(eps, frames=frames)
