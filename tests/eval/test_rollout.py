"""Rollouts render only where the images are used, with the same outcomes as rendering every step."""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.envs.metaworld import MetaWorldEnv, embodiment, episode_seed
from vlaforge.eval.baselines import RandomController
from vlaforge.eval.rollout import EpisodeRunner, Job, WorkerSpec, run_episode
from vlaforge.types import Observation

pytestmark = pytest.mark.sim

TASK = "button-press-topdown-v3"
SIZE = 32


class LookingExpert:
    """A chunking controller whose actions depend on the image it is given: the scripted expert's action
    for the current state, repeated `execute_steps` times, nudged by the image's brightness. It records
    every image it saw, so two runs can be compared image by image."""

    needs_images = True

    def __init__(self, execute_steps: int):
        self.embodiment = embodiment(("corner2",), SIZE)
        self.execute_steps = execute_steps
        self.seen: list[np.ndarray] = []

    def reset(self, seed: int) -> None:
        self.seen = []

    def act(self, obs: Observation, env) -> np.ndarray:
        image = obs.images["corner2"]  # a KeyError here means the controller was given no image
        self.seen.append(image.copy())
        nudge = 0.05 * (image.mean() / 255.0 - 0.5)
        action = env.expert_action() + np.float32(nudge)
        return np.repeat(action[None], self.execute_steps, 0)  # (H, 4)


def _run(controller, seed: int, render_every_step: bool, video: str | None = None, max_steps: int = 200):
    with MetaWorldEnv(TASK, image_size=SIZE, max_steps=max_steps, render=False) as env:
        job = Job(TASK, 0, seed, "press", video)
        rec = run_episode(controller, env, job, max_steps, render_every_step=render_every_step)
        return rec, env.frames_rendered


@pytest.mark.parametrize("seed", [episode_seed(0, TASK, 7), episode_seed(1, TASK, 3)])
def test_images_only_at_replans_and_outcomes_unchanged(seed):
    fast, ref = LookingExpert(4), LookingExpert(4)
    rec, renders = _run(fast, seed, render_every_step=False)
    ref_rec, ref_renders = _run(ref, seed, render_every_step=True)
    assert rec["success"], rec  # the nudged open-loop expert still solves the task
    assert rec == ref_rec  # same success, same steps
    plans = len(fast.seen)
    assert plans == -(-rec["steps"] // 4)  # one plan per started chunk of 4
    # One image (one camera) per plan: at reset, then after each chunk the episode went on from.
    assert renders == plans
    assert ref_renders == 1 + rec["steps"]
    # The controller saw exactly the same images, so the images at re-plans are the current state's.
    assert len(ref.seen) == plans
    for a, b in zip(fast.seen, ref.seen):
        np.testing.assert_array_equal(a, b)


def test_a_kept_video_still_has_every_frame(tmp_path):
    from vlaforge.data.video import read_video

    ctl = LookingExpert(4)
    seed = episode_seed(0, TASK, 7)
    rec, renders = _run(ctl, seed, render_every_step=False, video=str(tmp_path / "ep.mp4"))
    assert renders == 1 + rec["steps"]  # every step is a frame; the re-plans reuse them
    _, frames = read_video(rec["video"])
    assert len(frames) == 1 + rec["steps"]
    ref, _ = _run(LookingExpert(4), seed, render_every_step=True)
    assert {k: v for k, v in rec.items() if k != "video"} == {k: v for k, v in ref.items() if k != "video"}


def test_lossless_videos_keep_each_frame_whatever_follows(tmp_path):
    """`--video-crf 0`: a frame decodes to its pixels (within one level: RGB to YUV and back) in any
    video, so two runs' videos can be compared frame by frame."""
    from vlaforge.data.video import read_video
    from vlaforge.eval.rollout import write_mp4

    rng = np.random.default_rng(0)
    grey = lambda: np.repeat(rng.integers(0, 256, (32, 32, 1), dtype=np.uint8), 3, axis=2)  # noqa: E731
    first = grey()
    decoded = []
    for k in range(2):  # the same first frame, then two different continuations
        frames = [first] + [grey() for _ in range(6)]
        _, video = read_video(write_mp4(frames, tmp_path / f"{k}.mp4", fps=10.0, crf=0))
        assert video.shape == (7, 32, 32, 3)
        assert np.abs(video.astype(int) - np.stack(frames).astype(int)).max() <= 1
        decoded.append(video[0])
    np.testing.assert_array_equal(decoded[0], decoded[1])


def test_controllers_without_eyes_render_nothing():
    ctl = RandomController(embodiment(("corner2",), SIZE))
    rec, renders = _run(ctl, 11, render_every_step=False, max_steps=30)
    assert rec["steps"] == 30 and renders == 0


def test_policy_runner_renders_once_per_chunk(tmp_path, tiny_policy):
    """A real (untrained) tiny chunk-head policy through `EpisodeRunner`, both paths, same episodes."""
    ckpt = tiny_policy(tmp_path / "ckpt", embodiment(("corner2",), SIZE))
    jobs = [Job(TASK, i, episode_seed(5, TASK, i), "press the button from above") for i in range(2)]
    out = {}
    for reference in (False, True):
        spec = WorkerSpec(
            policy=str(ckpt), cameras=["corner2"], image_size=SIZE, max_steps=20, execute_steps=8,
            render_every_step=reference,
        )  # fmt: skip
        runner = EpisodeRunner(spec)
        try:
            out[reference] = ([runner(j) for j in jobs], runner.frames_rendered)
        finally:
            runner.close()
    (recs, renders), (ref_recs, ref_renders) = out[False], out[True]
    assert recs == ref_recs and [r["steps"] for r in recs] == [20, 20]
    assert renders == 2 * 3  # plans at steps 0, 8, 16 of each episode
    assert ref_renders == 2 * 21


def test_a_job_pool_keeps_its_workers_across_runs(tmp_path, tiny_policy):
    """An evaluation's instruction suites share one `JobPool`: the second run reuses the workers the first
    started (the policy loaded once per worker) and gives what a pool of its own gives."""
    from vlaforge.eval.rollout import JobPool, run_jobs

    ckpt = tiny_policy(tmp_path / "ckpt", embodiment(("corner2",), SIZE))
    spec = WorkerSpec(policy=str(ckpt), cameras=["corner2"], image_size=SIZE, max_steps=12, execute_steps=4)
    jobs = [Job(TASK, i, episode_seed(5, TASK, i), words) for i, words in enumerate(["press it", "push it"])]
    with JobPool(spec, 1) as pool:
        first = list(pool.run(jobs[:1]))
        workers = set(pool._pool._processes)
        second = list(pool.run(jobs[1:]))
        assert set(pool._pool._processes) == workers and len(workers) == 1
    assert pool._pool is None  # closed with the block
    alone = list(run_jobs(spec, jobs[1:], 1))
    assert second == alone and first[0]["seed"] != second[0]["seed"]
