"""Rollouts in any registered environment: one episode, and the worker processes that run many of them in parallel.

Protocol (what `vlaforge eval` promises and records in eval_info.json):
- Episode i of task t starts from `episode_seed(seed, t, i)`, so any episode can be replayed alone.
- Chunks become one action per step by one of three execution strategies (`EXECUTIONS`), all through
  `vlaforge.client.ActionQueue`, the chunk -> step logic the robot-side client uses, so a strategy means
  the same thing in evaluation and on a robot:
  - `open-loop`: the controller's (H, D) chunk is executed for `execute_steps` steps (default: the
    controller's own), then it re-plans (action chunking as in ACT, Zhao et al. 2023, and OpenVLA-OFT,
    Kim et al. 2025).
  - `receding`: receding-horizon control, re-plan every K steps and execute the first K actions of each
    new chunk. The rollout is exactly open-loop with `execute_steps` K (same actions, same outcomes); it
    is a name of its own because it is chosen for another reason (react to the scene: K small, often 1)
    and K must fit in every chunk: a policy that returns fewer than K actions is an error here, where
    open loop would re-plan early.
  - `ensemble`: ACT's temporal ensembling. The controller predicts a chunk at every step, and the action
    of step t is the weighted mean of every prediction made for t by the chunks still covering it,
    weights exp(-m i) with i = 0 for the oldest prediction (ACT's m = 0.01 weights the oldest a little
    more: the action changes smoothly).
- Success is the env's `info["success"]` at any step; the episode stops at the first success or at
  `max_steps`.
- The cameras are rendered only where someone looks at the images: at reset, after every step the
  controller re-plans from (the last step of each executed chunk; every step under `ensemble`) and at
  every step of an episode whose video is kept. The steps inside an open-loop chunk are physics only;
  rendering reads the simulation and never changes it, so outcomes are identical to rendering every
  step, which stays available as the reference path (`WorkerSpec.render_every_step`, used by
  `bench/bench_eval.py` and the tests).

Workers are spawned processes (never forked: a forked MuJoCo/OpenGL or torch state is not safe). Each
loads the policy once, with one torch thread, keeps the env of its current task, and encodes the videos
of the episodes it was asked to record (h264 + yuv420p so that browsers play them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.client import ActionQueue
from vlaforge.envs.base import Env
from vlaforge.envs.registry import DEFAULT_ENV, get_env
from vlaforge.envs.rendering import configure_rendering
from vlaforge.errors import InputError
from vlaforge.eval.baselines import BASELINES, Controller, PolicyController, make_baseline
from vlaforge.types import Observation

# Execution strategy -> the `ActionQueue` mode that implements it (`receding` is open loop with K steps).
EXECUTIONS = {"open-loop": "open_loop", "receding": "open_loop", "ensemble": "ensemble"}
# ACT's m: w_i = exp(-m i), w_0 for the oldest prediction (`k = 0.01` in tonyzhaozh/act imitate_episodes.py).
ENSEMBLE_DECAY = 0.01
# H.264 quality of the evaluation videos (`write_mp4`): small files, lossy at these image sizes.
VIDEO_CRF = 23


@dataclass
class Job:
    """One episode to run.

    Attributes:
        task: the task's name in the env.
        episode: episode index within the task.
        seed: the env seed (`episode_seed(seed, task, episode)`).
        instruction: the words given to the policy.
        video: where to write the episode's mp4, or None to record nothing.
    """

    task: str
    episode: int
    seed: int
    instruction: str
    video: str | None = None


class VideoGate:
    """Decides, as each episode starts, whether its video is still worth recording.

    An evaluation keeps per task the video of the first success, of the first failure and then of the
    first episodes, `keep` in all (`vlaforge.eval.run`'s choice). Recording renders every step, which
    costs more than the episode's physics, so an episode whose task already has a finished success and
    a finished failure before it, and whose index is `keep` or more, cannot be chosen and runs without
    a video. The videos kept are exactly those of recording every episode, whatever order the episodes
    of a task finish in, as long as they start in index order (every runner starts them so). `keep`
    None records every video asked for.
    """

    def __init__(self, keep: int | None):
        self.keep = keep
        self._outcomes: dict[str, dict[int, bool]] = {}

    def admit(self, job: Job) -> Job:
        """`job` as it should run: with its video path if the video may be kept, else without."""
        if not job.video or self.keep is None or job.episode < self.keep:
            return job
        before = {ok for e, ok in self._outcomes.get(job.task, {}).items() if e < job.episode}
        return job if len(before) < 2 else replace(job, video=None)

    def finished(self, record: dict) -> None:
        self._outcomes.setdefault(record["task"], {})[int(record["episode"])] = bool(record["success"])


@dataclass
class WorkerSpec:
    """Everything a worker needs to build its controller and envs (plain data: it crosses processes).

    Attributes:
        policy: a checkpoint directory, a baseline name ("expert", "random") or a served policy (ws://).
        cameras: cameras the env renders (the policy's).
        image_size: square image side in pixels (the policy's).
        max_steps: episode truncation.
        execute_steps: steps executed from each chunk before re-planning (`open-loop`: None -> the
            controller's own; `receding`: its K); unused by `ensemble`, which re-plans every step.
        device: torch device for the policy.
        fps: frame rate of the written videos.
        threads: torch threads per worker.
        render_every_step: the reference path: render the cameras after every physics step, as
            evaluation did before it rendered only where the images are used. Same outcomes, slower;
            kept to measure the difference (`bench/bench_eval.py`) and to test that the two agree.
        execution: the execution strategy, one of `EXECUTIONS` (see the module docstring).
        ensemble_decay: `ensemble`'s weight m: the i-th oldest prediction of a step weighs exp(-m i).
        env: the environment's registry name (`vlaforge.envs.base.ENVS`).
        record_dir: where each episode's full trace is saved (`vlaforge.eval.record`), None: nowhere.
        record_tail: steps recorded after an episode's first success (`run_episode`'s `tail`).
        unnorm_key: a mixture's checkpoint: the training dataset whose statistics un-normalise (None: its
            only set).
        video_crf: the videos' H.264 quality (`write_mp4`; 0: lossless).
    """

    policy: str
    cameras: list[str]
    image_size: int
    max_steps: int
    execute_steps: int | None
    device: str = "cpu"
    fps: float = 30.0
    threads: int = 1
    render_every_step: bool = False
    execution: str = "open-loop"
    ensemble_decay: float = ENSEMBLE_DECAY
    env: str = DEFAULT_ENV
    record_dir: str | None = None
    record_tail: int = 0
    unnorm_key: str | None = None
    video_crf: int = VIDEO_CRF


def connect_remote(uri: str, cameras: list[str], image_size: int, env: str = DEFAULT_ENV) -> Any:
    """A `vlaforge.client.RemotePolicy` for a served policy (token: the VLAFORGE_TOKEN environment variable).
    A server that does not describe its robot is taken to drive `env`'s with these cameras."""
    import os

    from vlaforge.client import RemotePolicy, ServerError, ServerUnavailable

    emb = get_env(env).embodiment(tuple(cameras), image_size)
    try:
        return RemotePolicy(uri, os.environ.get("VLAFORGE_TOKEN"), embodiment=emb)
    except (ServerUnavailable, ServerError) as e:
        raise InputError(f"--policy {uri}: {e} (is `vlaforge serve` running there, with this token?)") from e


def build_controller(spec: WorkerSpec) -> Controller:
    """The controller a spec names: a baseline, a checkpoint loaded with `Policy.from_pretrained`, or a
    served policy (`ws://HOST:PORT`) driven through `vlaforge.client`."""
    if spec.policy in BASELINES:
        return make_baseline(spec.policy, get_env(spec.env).embodiment(tuple(spec.cameras), spec.image_size))
    if spec.policy.startswith(("ws://", "wss://")):
        return PolicyController(
            connect_remote(spec.policy, spec.cameras, spec.image_size, spec.env), spec.execute_steps
        )
    from vlaforge.models.policy import Policy

    policy = Policy.from_pretrained(spec.policy, device=spec.device)
    return PolicyController(policy, spec.execute_steps, spec.unnorm_key)


def write_mp4(frames: list[np.ndarray], path: str | Path, fps: float, crf: int = VIDEO_CRF) -> Path:
    """Encodes uint8 (H, W, 3) frames as an mp4 browsers can play (h264, yuv420p) through
    `vlaforge.data.video.write_video` (MPEG-4 part 2 where this PyAV build has no h264 encoder).

    `crf` is H.264's quality (0: lossless, 51: worst). The default keeps videos small; at 32-64 px it
    moves about 15% of the pixels by more than 8 levels, and x264 sets a frame's quantiser from the
    frames after it, so the same frame can decode differently in two videos. 0 keeps every frame exact
    (up to yuv420p's half-resolution colour).

    Odd sides are padded by one pixel: yuv420p needs even dimensions, and the writer would otherwise
    switch to yuv444p, which browsers do not play.
    """
    from vlaforge.data.video import write_video

    video = np.stack(frames)  # (T, H, W, 3)
    _, h, w, _ = video.shape
    if h % 2 or w % 2:
        video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return write_video(path, video, fps, codec="h264", crf=crf)


def run_episode(
    controller: Controller,
    env: Any,
    job: Job,
    max_steps: int,
    fps: float = 30.0,
    render_every_step: bool = False,
    execution: str = "open-loop",
    ensemble_decay: float = ENSEMBLE_DECAY,
    tail: int = 0,
    video_crf: int = VIDEO_CRF,
) -> dict:
    """Runs one episode and returns its record (task, episode, instruction, seed, success, steps, video).

    The instruction in each observation is replaced by `job.instruction` (train or held-out words). When
    `job.video` is set, the first camera's frames are kept and written there as an mp4.

    Args:
        controller: what acts (see `vlaforge.eval.baselines.Controller`); its `execute_steps` is the K of
            `open-loop` and `receding`.
        env: the task's env (`vlaforge.envs.base.Env`: `reset(seed, render)`, `step(action, render)`,
            `observe`).
        job: the episode.
        max_steps: truncation.
        fps: frame rate of the video.
        render_every_step: the reference path: render after every step even where no one looks at the
            images (inside an open-loop chunk). The outcome is the same; only the time differs.
        execution: "open-loop", "receding" or "ensemble" (see the module docstring).
        ensemble_decay: `ensemble`'s weight m.
        tail: steps the controller keeps acting after the first success, for a recording env to see what
            follows success (`vlaforge eval --record`); the outcome, `steps` and the video end at the
            success as without it. With a tail, the record's ``tail_steps`` counts the steps taken.
        video_crf: the video's H.264 quality (`write_mp4`).
    """
    if execution not in EXECUTIONS:
        raise InputError(f"execution must be one of {list(EXECUTIONS)}; got {execution!r}")
    ensemble = execution == "ensemble"
    queue = ActionQueue(EXECUTIONS[execution], controller.execute_steps, ensemble_decay)
    action_dim = controller.embodiment.action_dim
    controller.reset(job.seed)
    keep_frames = bool(job.video)
    needs_images = bool(controller.needs_images)
    history = int(getattr(controller, "history", 1))  # a policy reading the last T observations
    # Images at every step only for a kept video, a history policy (or the reference path); otherwise at
    # re-plans only.
    render_steps = keep_frames or (needs_images and (render_every_step or history > 1))
    obs = env.reset(job.seed, render=needs_images or keep_frames)
    if history > 1:
        controller.observe(obs)
    camera = controller.embodiment.camera_names[0]
    frames = [obs.images[camera]] if keep_frames else None
    success, steps, done, at_success = False, 0, False, 0

    def going() -> bool:  # the step cap, the env's end, or the first success (and its tail)
        return steps < max_steps and not done and (not success or steps < at_success + tail)

    while going():
        if ensemble or not queue.remaining(steps):  # re-plan from the current observation
            obs = Observation(images=obs.images, state=obs.state, instruction=job.instruction)
            chunk = np.asarray(controller.act(obs, env), dtype=np.float32)
            if chunk.ndim != 2 or chunk.shape[1] != action_dim or not len(chunk):
                raise InputError(
                    f"the policy returned actions of shape {chunk.shape}; expected (H, {action_dim})"
                )
            if execution == "receding" and len(chunk) < controller.execute_steps:
                raise InputError(
                    f"receding execution re-plans every {controller.execute_steps} steps, but the policy "
                    f"returned a chunk of {len(chunk)} actions; use replan_every <= {len(chunk)}"
                )
            queue.add(chunk, steps, steps)  # predicted from this step's observation, for this step on
        action = queue.pop(steps)  # open loop: the chunk's next row as it is; ensemble: the weighted mean
        obs, _reward, done, info = env.step(action, render=render_steps)
        steps += 1
        if history > 1:
            controller.observe(obs)
        if frames is not None and not success:
            frames.append(obs.images[camera])
        if info.get("success") and not success:
            success, at_success = True, steps
        replans = ensemble or not queue.remaining(steps)
        if replans and needs_images and going() and not obs.images:
            obs = env.observe(render=True)  # the state the controller re-plans from
    video = None
    if frames is not None:
        video = str(write_mp4(frames, job.video, fps, video_crf))
    return {
        "task": job.task,
        "episode": job.episode,
        "instruction": job.instruction,
        "seed": job.seed,
        "success": bool(success),
        "steps": at_success if success else steps,
        "video": video,
        # Steps executed per plan (ensemble: a plan every step); popped by the caller into the protocol.
        "execute_steps": 1 if ensemble else controller.execute_steps,
        **({"tail_steps": steps - at_success if success else 0} if tail else {}),
    }


class EpisodeRunner:
    """Holds one controller and the env of the current task; runs jobs one after another.

    `run_episode` asks the env for images only where they are used (a controller that does not look at
    images, like the baselines, gets none unless the episode's video is kept): rendering is almost all
    of a simulated step's cost.

    Attributes:
        frames_rendered: camera images rendered so far by this runner's envs (all tasks).
    """

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.controller = build_controller(spec)
        self._task: str | None = None
        self._env: Env | None = None
        self.frames_rendered = 0

    def env_for(self, task: str) -> Env:
        """The env of `task`, made on first use (the previous task's env is closed)."""
        if task != self._task:
            self.close()
            self._env = get_env(self.spec.env).make(
                task,
                cameras=tuple(self.spec.cameras),
                image_size=self.spec.image_size,
                max_steps=self.spec.max_steps,
                render=False,  # run_episode says when to render
            )
            if self.spec.record_dir:
                from vlaforge.eval.record import RecordingEnv

                self._env = RecordingEnv(self._env)
            self._task = task
        return self._env

    def __call__(self, job: Job) -> dict:
        env = self.env_for(job.task)
        before = env.frames_rendered
        try:
            spec = self.spec
            record = run_episode(
                self.controller, env, job, spec.max_steps, spec.fps, spec.render_every_step,
                spec.execution, spec.ensemble_decay, spec.record_tail if spec.record_dir else 0, spec.video_crf,
            )  # fmt: skip
            if spec.record_dir:
                from vlaforge.eval.record import trace_path

                env.save(trace_path(spec.record_dir, job.task, job.episode))
            return record
        finally:
            self.frames_rendered += env.frames_rendered - before

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env, self._task = None, None


# One runner per worker process, built by the pool's initializer.
_RUNNER: EpisodeRunner | None = None


def _init_worker(spec_dict: dict) -> None:
    global _RUNNER
    configure_rendering()  # before anything in this fresh process imports mujoco
    spec = WorkerSpec(**spec_dict)
    import torch

    torch.set_num_threads(spec.threads)
    _RUNNER = EpisodeRunner(spec)


def _run_job(job_dict: dict) -> dict:
    assert _RUNNER is not None, "worker used before its initializer ran"
    return _RUNNER(Job(**job_dict))


class JobPool:
    """Worker processes that each build `spec`'s runner (its policy loaded) once and then run episodes for
    every `run` call until closed: an evaluation's instruction suites share one pool, where each suite would
    start the processes and load the policy again.

    Args:
        spec: what every worker builds.
        workers: number of spawned worker processes; 0 runs everything in this process (useful for
            debugging and for very small evaluations, where starting processes costs more than it saves).
    """

    def __init__(self, spec: WorkerSpec, workers: int):
        self.spec, self.workers = spec, workers
        self._pool: Any = None  # a ProcessPoolExecutor, started by the first run
        self._runner: EpisodeRunner | None = None  # workers == 0

    def run(self, jobs: list[Job], progress: Any = None, gate: VideoGate | None = None) -> Iterator[dict]:
        """Runs the jobs and yields each episode record as it finishes (in completion order); `progress`, an
        optional tqdm bar, advances by one per episode; `gate` decides as each job starts whether its
        video is recorded."""
        if not jobs:
            return
        gate = gate or VideoGate(None)
        if self.workers <= 0:
            if self._runner is None:
                self._runner = EpisodeRunner(self.spec)
            for job in jobs:
                rec = self._runner(gate.admit(job))
                gate.finished(rec)
                if progress is not None:
                    progress.update(1)
                yield rec
            return
        from concurrent.futures import FIRST_COMPLETED, wait

        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # An executor (not multiprocessing.Pool): a worker that fails to start or dies breaks the executor
            # and the error reaches the caller, where a Pool would silently respawn it forever.
            n = min(self.workers, len(jobs))
            self._pool = ProcessPoolExecutor(
                n, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(asdict(self.spec),)
            )
        # Two jobs per worker in flight: every worker stays busy, and each job is admitted by the gate as
        # late as that allows, knowing the outcomes of the episodes before it.
        todo, running = deque(jobs), set()
        try:
            while todo or running:
                while todo and len(running) < 2 * self.workers:
                    running.add(self._pool.submit(_run_job, asdict(gate.admit(todo.popleft()))))
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    rec = fut.result()
                    gate.finished(rec)
                    if progress is not None:
                        progress.update(1)
                    yield rec
        finally:
            for fut in running:
                fut.cancel()

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> JobPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_jobs(
    spec: WorkerSpec, jobs: list[Job], workers: int, progress: Any = None, gate: VideoGate | None = None
) -> Iterator[dict]:
    """Runs the jobs on a `JobPool` of their own and yields each episode record as it finishes (in
    completion order); `progress`, an optional tqdm bar, advances by one per episode; `gate` as in
    `JobPool.run`."""
    with JobPool(spec, workers) as pool:
        yield from pool.run(jobs, progress, gate)
