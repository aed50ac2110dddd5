"""`vlaforge collect`: Meta-World scripted-expert demonstrations written as a LeRobot v3.0 dataset.

Each attempt of a task runs its scripted expert (`metaworld.policies`) from the seed
`episode_seed(seed, task, attempt)`. Only successful episodes are kept, and seeds are tried in order until
every task has `episodes` of them (at most `max_attempts` per task). The set of kept episodes is therefore a
function of (tasks, episodes, seed) alone: for each task, the successes among its first K attempts, with K
the smallest count that holds `episodes` successes. Episodes are written in task order, then attempt
order, whatever order the worker processes finish in.

Design choices:

- **Two passes per attempt.** The expert first runs without rendering (MuJoCo physics is ~0.6 ms a step;
  an OSMesa render ~20 ms), so failed attempts cost almost nothing; a success is then replayed from the
  same seed with the recorded actions and rendered. Resets are exact (see `MetaWorldEnv.reset`) and the
  replay checks that it reproduces the success flags step for step.
- **Short tails.** An episode ends `SUCCESS_TAIL` steps after its first success, so the policy sees the
  finished state without hundreds of idle frames.
- **Worker processes** use the spawn start method (MuJoCo GL contexts and forked state do not mix); each
  keeps one env per task. Episodes come back to the parent, which writes them with `LeRobotWriter`; the
  writer builds the dataset in a hidden sibling directory and moves it into place at the end, so a failed
  or interrupted collection leaves nothing at `out`.
- **Reproducibility.** `meta/info.json` records, under `"vlaforge"`, the embodiment and for every episode
  its task, attempt index and the seed that reproduces it (`MetaWorldEnv(task).reset(seed)` + the expert).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vlaforge.envs.metaworld import (
    CONTROL_HZ,
    INSTRUCTIONS,
    MetaWorldEnv,
    configure_rendering,
    embodiment,
    episode_seed,
    resolve_tasks,
)
from vlaforge.errors import InputError
from vlaforge.types import as_list

SUCCESS_TAIL = 10  # steps recorded after the first success

# One env per (task, cameras, image size, max steps) in each process; lives as long as the process.
_ENVS: dict[tuple, MetaWorldEnv] = {}


def _init_worker() -> None:
    configure_rendering()  # before this fresh process imports mujoco
    os.environ["OMP_NUM_THREADS"] = "1"  # one core per worker: MuJoCo and numpy need no more


@dataclass(kw_only=True)
class CollectConfig:
    """What `vlaforge collect` records (one field per flag).

    Attributes:
        tasks: "mt10", "mt50", a difficulty group ("easy", "medium", "hard", "very_hard"), or a comma
            list of Meta-World task names (see `resolve_tasks`).
        episodes: successful expert episodes kept per task.
        out: the dataset directory to create.
        image_size: side of the square camera images in pixels.
        cameras: Meta-World camera names, a comma list (corner, corner2, corner3, corner4, topview,
            behindGripper, gripperPOV).
        workers: worker processes (0 runs everything in this process).
        seed: the run seed; attempt k of a task resets with `episode_seed(seed, task, k)`. Evaluate with
            another seed (`vlaforge eval` refuses episodes the policy was trained on).
        max_attempts: seeds tried per task before giving up (None: 4 x episodes).
        max_steps: truncation of each attempt.
        overwrite: replace an existing dataset at `out`.
    """

    tasks: str | list[str] = "mt10"
    episodes: int = 50
    out: str | Path
    image_size: int = 128
    cameras: str | list[str] = "corner2"
    workers: int = 2
    seed: int = 0
    max_attempts: int | None = None
    max_steps: int = 500
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        problems = []
        for name in ("episodes", "image_size", "max_steps"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        if self.workers < 0:
            problems.append(f"workers={self.workers} (must be >= 0)")
        if self.max_attempts is not None and self.max_attempts < self.episodes:
            problems.append(
                f"max_attempts ({self.max_attempts}) must be >= episodes ({self.episodes}): each kept "
                "episode needs a seed"
            )
        if not as_list(self.cameras):
            problems.append("cameras is empty (give at least one, e.g. corner2)")
        if problems:
            raise InputError("invalid collection config: " + "; ".join(problems))
        resolve_tasks(self.tasks)  # an unknown task is named now, with the closest known names

    @property
    def attempts_per_task(self) -> int:
        """Seeds tried per task before giving up."""
        return 4 * self.episodes if self.max_attempts is None else int(self.max_attempts)


def _env_for(task: str, cameras: tuple[str, ...], image_size: int, max_steps: int) -> MetaWorldEnv:
    key = (task, cameras, image_size, max_steps)
    if key not in _ENVS:
        _ENVS[key] = MetaWorldEnv(task, cameras=cameras, image_size=image_size, max_steps=max_steps)
    return _ENVS[key]


def run_expert_episode(
    task: str,
    seed: int,
    cameras: Sequence[str] = ("corner2",),
    image_size: int = 128,
    max_steps: int = 500,
    tail: int = SUCCESS_TAIL,
) -> dict[str, np.ndarray] | None:
    """Runs the scripted expert of `task` from `seed` and records it if it succeeds.

    Args:
        task: a v3 task name.
        seed: the reset seed.
        cameras, image_size: what to render.
        max_steps: truncation of the expert's attempt.
        tail: steps kept after the first success.

    Returns:
        None when the expert did not succeed within `max_steps`; otherwise the episode's frames, T of them:
        ``observation.images.<camera>`` uint8 (T, S, S, 3), ``observation.state`` float32 (T, 4),
        ``action`` float32 (T, 4) (the action applied at that frame) and ``next.success`` bool (T,)
        (success after that action).
    """
    cameras = tuple(as_list(cameras))
    env = _env_for(task, cameras, int(image_size), int(max_steps))
    # Pass 1: no pictures, just find out whether (and when) the expert succeeds.
    env.render_images = False
    env.reset(seed)
    actions: list[np.ndarray] = []
    successes: list[bool] = []
    first = None
    done = False
    while not done and (first is None or len(actions) < first + 1 + tail):
        action = env.expert_action()
        _, _, done, info = env.step(action)
        actions.append(action)
        successes.append(info["success"])
        if first is None and info["success"]:
            first = len(actions) - 1
    if first is None:
        return None
    # Pass 2: replay the same actions from the same seed, this time rendering every frame.
    env.render_images = True
    obs = env.reset(seed)
    n = len(actions)
    images = {c: np.empty((n, env.image_size, env.image_size, 3), np.uint8) for c in cameras}
    states = np.empty((n, 4), np.float32)
    replayed = np.empty(n, bool)
    for t, action in enumerate(actions):
        for c in cameras:
            images[c][t] = obs.images[c]
        states[t] = obs.state
        obs, _, _, info = env.step(action)
        replayed[t] = info["success"]
    if replayed.tolist() != successes:
        raise RuntimeError(
            f"{task} seed {seed}: replaying the expert's actions did not reproduce its success flags; "
            "the simulation is not deterministic on this machine, so episodes cannot be recorded faithfully"
        )
    frames: dict[str, np.ndarray] = {f"observation.images.{c}": images[c] for c in cameras}
    frames["observation.state"] = states
    frames["action"] = np.stack(actions).astype(np.float32)
    frames["next.success"] = replayed
    return frames


def _attempt(job: tuple) -> tuple[int, int, int, dict[str, np.ndarray] | None]:
    task_index, attempt, task, seed, cameras, image_size, max_steps = job
    frames = run_expert_episode(task, seed, cameras, image_size, max_steps)
    return task_index, attempt, seed, frames


class _InlinePool:
    """Runs jobs in this process (workers=0): same code path, easier to debug."""

    def submit(self, fn, job) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(job))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(e)
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def collect(cfg: CollectConfig | None = None, **fields: Any) -> Path:
    """Collects `cfg.episodes` successful expert episodes per task into a LeRobot v3.0 dataset.

    Args:
        cfg: what to collect.
        **fields: instead of `cfg`, its fields as keywords: `collect(tasks="mt10", episodes=5,
            out="data")` is `collect(CollectConfig(tasks="mt10", episodes=5, out="data"))`.

    Returns:
        The dataset directory.

    Raises:
        InputError: bad settings, or a task whose expert does not reach `episodes` successes within
            `max_attempts` seeds; nothing is written at `out` then.
    """
    from vlaforge.data.lerobot import LeRobotWriter

    if cfg is None:
        cfg = CollectConfig(**fields)
    elif fields or not isinstance(cfg, CollectConfig):
        raise TypeError("collect takes a CollectConfig, or the CollectConfig fields as keywords; not both")
    task_list = resolve_tasks(cfg.tasks)
    cams = as_list(cfg.cameras)
    episodes, out, image_size, workers = cfg.episodes, cfg.out, cfg.image_size, cfg.workers
    seed, max_steps, cap = cfg.seed, cfg.max_steps, cfg.attempts_per_task
    emb = embodiment(cams, image_size)
    # Fail on a bad camera name now, before any process starts.
    MetaWorldEnv(task_list[0], cameras=cams, image_size=image_size, max_steps=max_steps, render=False).close()

    features: dict[str, dict[str, Any]] = {
        f"observation.images.{c}": {
            "dtype": "video",
            "shape": [image_size, image_size, 3],
            "names": ["height", "width", "channels"],
        }
        for c in cams
    }
    features["observation.state"] = {"dtype": "float32", "shape": [4], "names": list(emb.state_names)}
    features["action"] = {"dtype": "float32", "shape": [4], "names": list(emb.action_names)}
    features["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    kept: list[dict[str, Any]] = []
    vlaforge_info = {
        "embodiment": emb.to_dict(),
        "env": "metaworld",
        "collection": {
            "seed": seed,
            "episodes_per_task": episodes,
            "max_steps": max_steps,
            "tail": SUCCESS_TAIL,
        },
        "episodes": kept,  # filled as episodes are written: task, attempt, seed per episode_index
    }
    writer = LeRobotWriter(
        out,
        fps=CONTROL_HZ,
        features=features,
        robot_type="sawyer",
        overwrite=cfg.overwrite,
        extra_info={"vlaforge": vlaforge_info},
    )

    n_tasks = len(task_list)
    next_attempt = [0] * n_tasks  # next attempt index to submit, per task
    inflight = [0] * n_tasks
    succeeded = [0] * n_tasks  # successes received, in any order
    tried = [0] * n_tasks
    results: dict[tuple[int, int], tuple[int, dict | None]] = {}  # finished, not yet written
    write_task, write_attempt = 0, 0
    written = [0] * n_tasks
    window = max(2, 2 * workers)  # jobs in flight
    max_buffered = max(8, 4 * workers)  # finished episodes waiting for an earlier one

    pool = (
        ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker)
        if workers > 0
        else _InlinePool()
    )
    futures: set[Future] = set()
    bar = tqdm(total=episodes * n_tasks, desc="collect", unit="episode")

    def submit_more() -> None:
        while len(futures) < window:
            for ti in range(write_task, n_tasks):
                if succeeded[ti] + inflight[ti] < episodes and next_attempt[ti] < cap:
                    break
            else:
                return
            if ti > write_task and len(results) >= max_buffered:
                return  # run ahead only while few finished episodes wait for the one being written
            a = next_attempt[ti]
            next_attempt[ti] += 1
            inflight[ti] += 1
            task = task_list[ti]
            job = (ti, a, task, episode_seed(seed, task, a), tuple(cams), int(image_size), int(max_steps))
            futures.add(pool.submit(_attempt, job))

    def flush() -> None:
        nonlocal write_task, write_attempt
        while write_task < n_tasks and written[write_task] < episodes:
            key = (write_task, write_attempt)
            if key not in results:
                return
            ep_seed, frames = results.pop(key)
            if frames is not None:
                task = task_list[write_task]
                index = writer.add_episode(task=INSTRUCTIONS[task], frames=frames)
                kept.append({"episode_index": index, "task": task, "attempt": write_attempt, "seed": ep_seed})
                written[write_task] += 1
                bar.update(1)
            write_attempt += 1
            if written[write_task] == episodes:
                write_task, write_attempt = write_task + 1, 0

    try:
        submit_more()
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for fut in done:
                futures.discard(fut)
                ti, attempt, ep_seed, frames = fut.result()
                inflight[ti] -= 1
                tried[ti] += 1
                succeeded[ti] += frames is not None
                results[(ti, attempt)] = (ep_seed, frames)
            flush()
            bar.set_postfix(attempts=sum(tried), failed=sum(tried) - sum(succeeded))
            short = [
                ti
                for ti in range(n_tasks)
                if succeeded[ti] < episodes and next_attempt[ti] >= cap and inflight[ti] == 0
            ]
            if short:
                detail = ", ".join(
                    f"{task_list[ti]} ({succeeded[ti]}/{episodes} in {tried[ti]} seeds)" for ti in short
                )
                raise InputError(
                    f"the scripted expert did not reach {episodes} successful episodes within {cap} seeds for: "
                    f"{detail}. Raise --max-attempts, ask for fewer --episodes, or leave these tasks out. "
                    f"Nothing was written to {out}."
                )
            submit_more()
        if written != [episodes] * n_tasks:  # cannot happen unless the bookkeeping above is wrong
            raise RuntimeError(f"collection ended with {written} episodes per task instead of {episodes}")
        root = writer.finalize()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        writer.abort()
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)
    return root
