"""`vlaforge collect`: scripted-expert demonstrations of any registered environment (`--env`), written as
a LeRobot v3.0 dataset.

Attempt k of a task runs the env's scripted expert from the seed `episode_seed(seed, task, k)`. Only
successful episodes are kept, and seeds are tried in order until every task has `episodes` of them (at
most `max_attempts` per task): the kept episodes are a function of (env, tasks, episodes, seed) alone, and
they are written in task order, then attempt order, whatever order the worker processes finish in.

Design choices (docs/envs.md#collection): each attempt runs twice, first without rendering (failures cost
only physics), then, if it succeeded, replayed from the same seed with the actions it applied and rendered,
checking that the replay reproduces the success flags; an episode ends `SUCCESS_TAIL` steps after its
first success; workers are spawned processes keeping one env per task; the dataset is built in a hidden
sibling directory and moved into place at the end, so a failed collection leaves nothing at `out`.
`meta/info.json` records, under `"vlaforge"`, the env, the embodiment and every episode's task, attempt
and seed.
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

from vlaforge.envs.base import Env, EnvSpec, episode_seed
from vlaforge.envs.registry import DEFAULT_ENV, get_env
from vlaforge.envs.rendering import configure_rendering
from vlaforge.errors import InputError
from vlaforge.types import as_list

SUCCESS_TAIL = 10  # steps recorded after the first success

# One env per (env, task, cameras, image size, max steps) in each process; lives as long as the process.
_ENVS: dict[tuple, Env] = {}


def _init_worker() -> None:
    configure_rendering()  # before this fresh process imports mujoco
    os.environ["OMP_NUM_THREADS"] = "1"  # one core per worker: MuJoCo and numpy need no more


@dataclass(kw_only=True)
class CollectConfig:
    """What `vlaforge collect` records (one field per flag).

    Attributes:
        env: the environment, a name in `vlaforge.envs.registry.ENVS`.
        tasks: a task set of the env (e.g. mt10, easy), task names, or a comma list of these (None: the
            env's default set).
        episodes: successful expert episodes kept per task.
        out: the dataset directory to create.
        image_size: side of the square camera images in pixels (None: the env's default).
        cameras: the env's camera names, a comma list (None: the env's default; an unknown name is
            refused with the list of valid ones).
        workers: worker processes (0 runs everything in this process).
        seed: the run seed; attempt k of a task resets with `episode_seed(seed, task, k)`. Evaluate with
            another seed (`vlaforge eval` refuses episodes the policy was trained on).
        max_attempts: seeds tried per task before giving up (None: 4 x episodes).
        max_steps: truncation of each attempt (None: the env's episode length).
        overwrite: replace an existing dataset at `out`.
        video_pix_fmt: how the camera frames are stored: "yuv444p" (full-resolution colour) or "yuv420p"
            (colour at half resolution, which every player decodes but which greys out one-pixel coloured
            details); None: the dataset default (`vlaforge.data.lerobot_writer.DATASET_PIX_FMT`, yuv444p).
        video_crf: the H.264 quality of the frames, 0 (lossless) to 51 (None: the dataset default, 10).
        action_noise: noise injected into the executed actions, as in DART (Laskey et al., 2017): each
            step applies the expert's action plus Gaussian noise of this standard deviation (in units of
            half the action range, per dimension; clipped to the range), while the dataset's `action` is
            the expert's own action at the state reached. The demonstrations then visit states off the
            expert's path and label them with the way back, which a policy that copies the path (the hand
            moving away from its start) cannot explain. 0: the expert's actions are applied as they are.
            The noise is drawn from the episode's seed, so the executed actions can be recomputed.
    """

    env: str = DEFAULT_ENV
    tasks: str | list[str] | None = None
    episodes: int = 50
    out: str | Path
    image_size: int | None = None
    cameras: str | list[str] | None = None
    workers: int = 2
    seed: int = 0
    max_attempts: int | None = None
    max_steps: int | None = None
    overwrite: bool = False
    video_pix_fmt: str | None = None
    video_crf: int | None = None
    action_noise: float = 0.0

    def __post_init__(self) -> None:
        spec = get_env(self.env)
        self.env = spec.name
        self.out = Path(self.out)
        if self.tasks is None:
            self.tasks = spec.default_tasks
        if self.image_size is None:
            self.image_size = spec.image_size
        if self.cameras is None:
            self.cameras = ",".join(spec.cameras)
        if self.max_steps is None:
            self.max_steps = spec.max_steps
        problems = []
        for name in ("episodes", "image_size", "max_steps"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        if self.workers < 0:
            problems.append(f"workers={self.workers} (must be >= 0)")
        if not 0 <= self.action_noise <= 2:
            problems.append(f"action_noise={self.action_noise} (a standard deviation from 0 to 2)")
        if self.video_pix_fmt is not None or self.video_crf is not None:
            from vlaforge.data.video import PIX_FMTS, max_crf  # PyAV only when the storage is chosen

            if self.video_pix_fmt not in (None, *PIX_FMTS):
                problems.append(f"video_pix_fmt={self.video_pix_fmt!r} ({' or '.join(PIX_FMTS)})")
            if self.video_crf is not None and not 0 <= self.video_crf <= max_crf("h264"):
                problems.append(f"video_crf={self.video_crf} (0 lossless .. {max_crf('h264')})")
        if self.max_attempts is not None and self.max_attempts < self.episodes:
            problems.append(
                f"max_attempts ({self.max_attempts}) must be >= episodes ({self.episodes}): each kept "
                "episode needs a seed"
            )
        if not as_list(self.cameras):
            problems.append(f"cameras is empty (give at least one, e.g. {spec.cameras[0]})")
        if problems:
            raise InputError("invalid collection config: " + "; ".join(problems))
        spec.resolve_tasks(self.tasks)  # an unknown task is named now, with the closest known names

    @property
    def attempts_per_task(self) -> int:
        """Seeds tried per task before giving up."""
        return 4 * self.episodes if self.max_attempts is None else int(self.max_attempts)


def _env_for(
    env: str, task: str, cameras: tuple[str, ...], image_size: int, max_steps: int, expert: str | None = None
) -> Env:
    key = (env, task, cameras, image_size, max_steps, expert)
    if key not in _ENVS:
        kwargs = {} if expert is None else {"expert": expert}
        _ENVS[key] = get_env(env).make(
            task, cameras=cameras, image_size=image_size, max_steps=max_steps, **kwargs
        )
    return _ENVS[key]


# The noise of attempt `seed` comes from default_rng((seed, _NOISE_STREAM)): a stream of its own, so the
# env's draws (which default_rng(seed) makes) and the noise never share numbers.
_NOISE_STREAM = 0xDA127


def action_noise_rng(seed: int) -> np.random.Generator:
    """The generator of an attempt's injected action noise (`CollectConfig.action_noise`)."""
    return np.random.default_rng((int(seed), _NOISE_STREAM))


def _expert_attempt(
    env: Env, seed: int, tail: int, noise: float = 0.0
) -> tuple[list[np.ndarray], list[np.ndarray], list[bool]] | None:
    """Pass 1: the expert from `seed` without pictures; its actions (the labels), the actions applied
    (the labels plus `noise`, see `CollectConfig.action_noise`) and the success flags, or None on failure."""
    env.render_images = False
    env.reset(seed)
    low = np.asarray(env.embodiment.action_low, np.float32)
    high = np.asarray(env.embodiment.action_high, np.float32)
    rng = action_noise_rng(seed) if noise > 0 else None
    labels: list[np.ndarray] = []
    applied: list[np.ndarray] = []
    successes: list[bool] = []
    first = None
    done = False
    while not done and (first is None or len(labels) < first + 1 + tail):
        label = env.expert_action()
        action = label
        if rng is not None:
            jitter = rng.normal(0.0, noise, label.shape).astype(np.float32) * (high - low) / 2
            action = np.clip(label + jitter, low, high)
        _, _, done, info = env.step(action)
        labels.append(label)
        applied.append(action)
        successes.append(info["success"])
        if first is None and info["success"]:
            first = len(labels) - 1
    return None if first is None else (labels, applied, successes)


def _replay(
    env: Env, seed: int, cameras: Sequence[str], labels: list[np.ndarray], applied: list[np.ndarray]
) -> dict[str, np.ndarray]:
    """Pass 2: the applied actions from the same seed, rendering every frame; `labels` are recorded."""
    env.render_images = True
    obs = env.reset(seed)
    n, size = len(applied), env.embodiment.image_size
    images = {c: np.empty((n, size, size, 3), np.uint8) for c in cameras}
    states = np.empty((n, env.embodiment.state_dim), np.float32)
    replayed = np.empty(n, bool)
    for t, action in enumerate(applied):
        for c in cameras:
            images[c][t] = obs.images[c]
        states[t] = obs.state
        obs, _, _, info = env.step(action)
        replayed[t] = info["success"]
    frames: dict[str, np.ndarray] = {f"observation.images.{c}": images[c] for c in cameras}
    frames["observation.state"] = states
    frames["action"] = np.stack(labels).astype(np.float32)
    frames["next.success"] = replayed
    return frames


def run_expert_episode(
    task: str,
    seed: int,
    cameras: Sequence[str] | None = None,
    image_size: int | None = None,
    max_steps: int | None = None,
    tail: int = SUCCESS_TAIL,
    env: str = DEFAULT_ENV,
    action_noise: float = 0.0,
) -> dict[str, np.ndarray] | None:
    """Runs the scripted expert of `task` from `seed` and records it if it succeeds.

    Args:
        task: a task name of `env`.
        seed: the reset seed.
        cameras, image_size: what to render (None: the env's defaults).
        max_steps: truncation of the expert's attempt (None: the env's episode length).
        tail: steps kept after the first success.
        env: the environment's registry name.
        action_noise: see `CollectConfig.action_noise`.

    Returns:
        None when the expert did not succeed within `max_steps`; otherwise the episode's frames, T of them:
        ``observation.images.<camera>`` uint8 (T, S, S, 3), ``observation.state`` float32 (T, S_state),
        ``action`` float32 (T, D) (the expert's action at that frame: the one applied unless
        `action_noise` is set) and ``next.success`` bool (T,) (success after the applied action).
    """
    spec = get_env(env)
    cameras = tuple(as_list(cameras)) if cameras is not None else spec.cameras
    size = int(image_size or spec.image_size)
    sim = _env_for(spec.name, task, cameras, size, int(max_steps or spec.max_steps))
    attempt = _expert_attempt(sim, seed, tail, float(action_noise))
    if attempt is None:
        return None
    labels, applied, successes = attempt
    frames = _replay(sim, seed, cameras, labels, applied)
    if frames["next.success"].tolist() != successes:
        raise RuntimeError(
            f"{task} seed {seed}: replaying the expert's actions did not reproduce its success flags; "
            "the simulation is not deterministic on this machine, so episodes cannot be recorded faithfully"
        )
    return frames


def _attempt(job: tuple) -> tuple[int, int, int, dict[str, np.ndarray] | None]:
    env, task_index, attempt, task, seed, cameras, image_size, max_steps, noise = job
    frames = run_expert_episode(task, seed, cameras, image_size, max_steps, env=env, action_noise=noise)
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


def episode_features(spec: EnvSpec, cameras: Sequence[str], image_size: int) -> dict[str, dict[str, Any]]:
    """The LeRobot features of an episode of `spec`: one video per camera, the state, the action and
    ``next.success`` (what `vlaforge collect`, `vlaforge teleop` and DAgger's roll-outs record)."""
    emb = spec.embodiment(list(cameras), int(image_size))
    features: dict[str, dict[str, Any]] = {
        f"observation.images.{c}": {
            "dtype": "video",
            "shape": [int(image_size), int(image_size), 3],
            "names": ["height", "width", "channels"],
        }
        for c in cameras
    }
    features["observation.state"] = {
        "dtype": "float32",
        "shape": [emb.state_dim],
        "names": list(emb.state_names),
    }
    features["action"] = {"dtype": "float32", "shape": [emb.action_dim], "names": list(emb.action_names)}
    features["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    return features


def episode_writer(
    out: str | Path,
    spec: EnvSpec,
    cameras: Sequence[str],
    image_size: int,
    vlaforge_info: dict[str, Any],
    extra_features: dict[str, dict[str, Any]] | None = None,
    overwrite: bool = False,
    video_pix_fmt: str | None = None,
    video_crf: int | None = None,
):
    """A LeRobot v3.0 writer for episodes of `spec`'s envs: `episode_features` (plus `extra_features`), the
    env's fps and robot type, and `vlaforge_info` (env and embodiment filled in) under info.json's
    ``"vlaforge"``. `video_pix_fmt`, `video_crf`: the frames' storage (None: the dataset defaults).
    Used by `collect` and by DAgger's roll-outs (`vlaforge.dagger`)."""
    from vlaforge.data.lerobot import LeRobotWriter

    cams, size = list(cameras), int(image_size)
    emb = spec.embodiment(cams, size)
    features = episode_features(spec, cams, size)
    features.update(extra_features or {})
    info = {"embodiment": emb.to_dict(), "env": spec.name, **vlaforge_info}
    video = {"video_pix_fmt": video_pix_fmt, "video_crf": video_crf}
    return LeRobotWriter(
        out,
        fps=spec.control_hz,
        features=features,
        robot_type=spec.robot_type,
        overwrite=overwrite,
        extra_info={"vlaforge": info},
        **{k: v for k, v in video.items() if v is not None},
    )


def _writer(cfg: CollectConfig, spec: EnvSpec, kept: list[dict[str, Any]]):
    """The dataset writer: features, fps, robot type and vlaforge's provenance (`kept` fills as episodes
    are written: task, attempt, seed per episode_index)."""
    collection = {
        "seed": cfg.seed,
        "episodes_per_task": cfg.episodes,
        "max_steps": cfg.max_steps,
        "tail": SUCCESS_TAIL,
        "action_noise": float(cfg.action_noise),
    }
    info = {"collection": collection, "episodes": kept}
    return episode_writer(
        cfg.out,
        spec,
        as_list(cfg.cameras),
        int(cfg.image_size),
        info,
        overwrite=cfg.overwrite,
        video_pix_fmt=cfg.video_pix_fmt,
        video_crf=cfg.video_crf,
    )


class _Schedule:
    """Which attempts run and which finished episodes are written, in task then attempt order.

    Attempts of later tasks run ahead only while few finished episodes wait for the one being written,
    so memory stays bounded however many workers there are.
    """

    def __init__(self, cfg: CollectConfig, tasks: list[str], workers: int):
        self.cfg, self.tasks = cfg, tasks
        n = len(tasks)
        self.next_attempt = [0] * n  # next attempt index to submit, per task
        self.inflight = [0] * n
        self.succeeded = [0] * n  # successes received, in any order
        self.tried = [0] * n
        self.written = [0] * n
        self.results: dict[tuple[int, int], tuple[int, dict | None]] = {}  # finished, not yet written
        self.write_task, self.write_attempt = 0, 0
        self.window = max(2, 2 * workers)  # jobs in flight
        self.max_buffered = max(8, 4 * workers)  # finished episodes waiting for an earlier one

    def next_jobs(self, in_flight: int) -> list[tuple]:
        """The attempts to submit now, given `in_flight` jobs already running."""
        cfg, jobs = self.cfg, []
        while in_flight + len(jobs) < self.window:
            for ti in range(self.write_task, len(self.tasks)):
                if (
                    self.succeeded[ti] + self.inflight[ti] < cfg.episodes
                    and self.next_attempt[ti] < cfg.attempts_per_task
                ):
                    break
            else:
                break
            if ti > self.write_task and len(self.results) >= self.max_buffered:
                break
            a = self.next_attempt[ti]
            self.next_attempt[ti] += 1
            self.inflight[ti] += 1
            task = self.tasks[ti]
            seed = episode_seed(cfg.seed, task, a)
            cams = tuple(as_list(cfg.cameras))
            size, steps, noise = int(cfg.image_size), int(cfg.max_steps), float(cfg.action_noise)
            jobs.append((cfg.env, ti, a, task, seed, cams, size, steps, noise))
        return jobs

    def finished(self, ti: int, attempt: int, seed: int, frames: dict | None) -> None:
        self.inflight[ti] -= 1
        self.tried[ti] += 1
        self.succeeded[ti] += frames is not None
        self.results[(ti, attempt)] = (seed, frames)

    def ready(self):
        """Yields (task, attempt, seed, frames) of the successes that can be written now, in order."""
        episodes = self.cfg.episodes
        while self.write_task < len(self.tasks) and self.written[self.write_task] < episodes:
            key = (self.write_task, self.write_attempt)
            if key not in self.results:
                return
            seed, frames = self.results.pop(key)
            if frames is not None:
                yield self.tasks[self.write_task], self.write_attempt, seed, frames
                self.written[self.write_task] += 1
            self.write_attempt += 1
            if self.written[self.write_task] == episodes:
                self.write_task, self.write_attempt = self.write_task + 1, 0

    def check_short(self) -> None:
        """Raises when a task ran out of seeds before reaching `episodes` successes."""
        cfg = self.cfg
        short = [
            ti
            for ti in range(len(self.tasks))
            if self.succeeded[ti] < cfg.episodes
            and self.next_attempt[ti] >= cfg.attempts_per_task
            and self.inflight[ti] == 0
        ]
        if short:
            detail = ", ".join(
                f"{self.tasks[ti]} ({self.succeeded[ti]}/{cfg.episodes} in {self.tried[ti]} seeds)"
                for ti in short
            )
            raise InputError(
                f"the scripted expert did not reach {cfg.episodes} successful episodes within "
                f"{cfg.attempts_per_task} seeds for: {detail}. Raise --max-attempts, ask for fewer --episodes, "
                f"or leave these tasks out. Nothing was written to {cfg.out}."
            )


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
    if cfg is None:
        cfg = CollectConfig(**fields)
    elif fields or not isinstance(cfg, CollectConfig):
        raise TypeError("collect takes a CollectConfig, or the CollectConfig fields as keywords; not both")
    spec = get_env(cfg.env)
    tasks = spec.resolve_tasks(cfg.tasks)
    # Fail on a bad camera name now, before any process starts.
    spec.make(
        tasks[0],
        cameras=as_list(cfg.cameras),
        image_size=cfg.image_size,
        max_steps=cfg.max_steps,
        render=False,
    ).close()
    kept: list[dict[str, Any]] = []
    writer = _writer(cfg, spec, kept)
    schedule = _Schedule(cfg, tasks, cfg.workers)
    pool = (
        ProcessPoolExecutor(
            max_workers=cfg.workers, mp_context=get_context("spawn"), initializer=_init_worker
        )
        if cfg.workers > 0
        else _InlinePool()
    )
    futures: set[Future] = set()
    bar = tqdm(total=cfg.episodes * len(tasks), desc="collect", unit="episode")
    try:
        futures.update(pool.submit(_attempt, job) for job in schedule.next_jobs(0))
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for fut in done:
                futures.discard(fut)
                schedule.finished(*fut.result())
            for task, attempt, seed, frames in schedule.ready():
                index = writer.add_episode(task=spec.instructions[task], frames=frames)
                kept.append({"episode_index": index, "task": task, "attempt": attempt, "seed": seed})
                bar.update(1)
            bar.set_postfix(
                attempts=sum(schedule.tried), failed=sum(schedule.tried) - sum(schedule.succeeded)
            )
            schedule.check_short()
            futures.update(pool.submit(_attempt, job) for job in schedule.next_jobs(len(futures)))
        if schedule.written != [cfg.episodes] * len(tasks):  # cannot happen unless the bookkeeping is wrong
            raise RuntimeError(
                f"collection ended with {schedule.written} episodes per task, not {cfg.episodes}"
            )
        root = writer.finalize()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        writer.abort()
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)
    return root
