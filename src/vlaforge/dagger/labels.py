"""The frames a DAgger round adds: states the policy visited, labelled with an expert's actions.

- `scripted`: the current policy drives the env (its chunks executed open loop, as `vlaforge eval` runs
  them); at every state it visits the env's scripted expert is asked for its action (`Env.expert_action`),
  which becomes the frame's ``action``; what the policy executed is kept as ``policy_action``. Every frame
  is rendered (a frame needs its images), and a roll-out stops `tail` steps after its first success, as
  `vlaforge collect` stops the expert's episodes. With a take-over (``takeover`` N > 0) the expert
  instead takes the controls from a roll-out the policy has not finished in N steps, and only the frames
  it drove are kept, flagged as interventions (HG-DAgger).
  With a mixing weight (``beta`` > 0) the expert drives each chunk with that probability (the paper's
  beta_i), every state is still labelled, and the frames it drove are flagged.
  With plan labels (``plan`` H > 0) every labelled state also gets the expert's own next H actions, run
  open loop from a snapshot of that state (the env's `snapshot`/`restore`), in ``expert_plan``: the chunk
  target training uses for the frame (`vlaforge.data.interface.PLAN_COLUMN`).
- `recorded`: a LeRobot v3.0 dataset recorded while a policy drove and a person could take over; the frames
  flagged in ``complementary_info.is_intervention`` (the column LeRobot's human-in-the-loop recordings
  write) carry the person's actions, and only those are kept, each unbroken run of them an episode.

Both write a LeRobot v3.0 dataset with vlaforge's writer (`vlaforge.envs.collect.episode_writer`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vlaforge.client import ActionQueue
from vlaforge.dagger.config import INTERVENTION_COLUMN
from vlaforge.data.interface import PLAN_COLUMN, PLAN_PAD_COLUMN
from vlaforge.envs.base import Env, EnvSpec, episode_seed
from vlaforge.errors import InputError
from vlaforge.types import Embodiment, Observation

POLICY_ACTION = "policy_action"  # what was executed at the frame (the label is `action`)
# Mixes the roll-out's own generator for beta's draws with its episode seed (the env's initial state uses
# the seed alone, so the two streams differ).
MIXING_STREAM = 0x6D6978


@dataclass
class Rollout:
    """One labelled roll-out.

    Attributes:
        frames: the labelled frames (None: nothing to label, a take-over roll-out the policy finished
            alone): ``observation.images.<camera>`` uint8 (T, S, S, 3), ``observation.state`` float32
            (T, S_state), ``action`` float32 (T, D), the expert's action at that state, ``next.success``
            bool (T,); labelling every state, also ``policy_action`` float32 (T, D), what was executed
            there; with a take-over, ``complementary_info.is_intervention`` bool (T, 1), all true; with
            plan labels, ``expert_plan`` float32 (T, H, D) and ``expert_plan_is_pad`` bool (T, H).
        policy_success: the policy reached success itself (before any take-over; with mixing, the mixed
            roll-out's success).
        takeover: the step the expert took over at (None: it did not).
        steps: steps the roll-out ran.
        expert_steps: steps the expert drove (a take-over's, or the chunks mixing gave it).
    """

    frames: dict[str, np.ndarray] | None
    policy_success: bool
    takeover: int | None
    steps: int
    expert_steps: int = 0


def label_rollout(
    controller: Any,
    env: Env,
    seed: int,
    instruction: str,
    max_steps: int,
    tail: int,
    takeover: int = 0,
    beta: float = 0.0,
    plan: int = 0,
) -> Rollout:
    """One roll-out of `controller` (a `vlaforge.eval.baselines.PolicyController`) from `seed`.

    `takeover` 0: every visited state is labelled with `env.expert_action()` while the policy acts
    (DAgger). `takeover` N > 0: the policy acts alone for N steps; if it has not succeeded by then, the
    expert takes over from the state it left and drives to the end, and only the expert's frames,
    labelled with the actions it executed, are kept (HG-DAgger's interventions, the expert as the person
    watching who takes the controls from a roll-out that is taking too long). Either way the roll-out
    ends `tail` steps after its first success or at `max_steps`.

    `beta` > 0 (with `takeover` 0): at every chunk boundary the expert drives the next
    ``controller.execute_steps`` steps with probability `beta` (drawn from
    ``np.random.default_rng([MIXING_STREAM, seed])``), the policy otherwise; every state is labelled as
    before and the expert's frames are flagged in ``complementary_info.is_intervention``.

    `plan` H > 0 (with `takeover` 0): at every labelled state the expert also drives H - 1 steps ahead
    (unrendered) from a snapshot that is then restored, so each frame carries the H actions the expert
    would run from there (its first is the frame's label); past the env's episode end the plan repeats
    its last action, flagged as padding.
    """
    if (beta or plan) and takeover:
        raise ValueError(
            "label_rollout: beta and plan label plain DAgger's roll-outs; they have no meaning with takeover"
        )
    if plan and not callable(getattr(env, "snapshot", None)):
        raise InputError(
            f"plan labels run the expert ahead from a saved state, and the {type(env).__name__} env has no "
            "snapshot()/restore(); use --labels step"
        )
    mixing = np.random.default_rng([MIXING_STREAM, seed]) if beta else None
    cameras = list(controller.embodiment.camera_names)
    queue = ActionQueue("open_loop", controller.execute_steps)
    controller.reset(seed)
    history = int(getattr(controller, "history", 1))
    obs = env.reset(seed, render=True)
    if history > 1:
        controller.observe(obs)
    images: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
    states, labels, executed, successes, by_expert = [], [], [], [], []
    plans: list[np.ndarray] = []
    plan_pads: list[np.ndarray] = []
    first: int | None = None
    took_over: int | None = None
    expert_until = 0  # mixing: the expert drives until this step
    steps = 0
    while steps < max_steps and (first is None or steps < first + 1 + tail):
        if takeover and took_over is None and first is None and steps >= takeover:
            took_over = steps
        record = not takeover or took_over is not None
        if record:
            for c in cameras:
                images[c].append(obs.images[c])
            states.append(np.asarray(obs.state, np.float32))
            labels.append(np.asarray(env.expert_action(), np.float32))  # the label: the expert, here
            if plan:
                ahead, pad = expert_plan(env, plan, labels[-1])
                plans.append(ahead)
                plan_pads.append(pad)
        # At a chunk boundary (nobody's chunk is running), a draw decides who drives the next one.
        boundary = steps >= expert_until and not queue.remaining(steps)
        if mixing is not None and boundary and mixing.random() < beta:
            expert_until = steps + int(controller.execute_steps)
        expert = took_over is not None or steps < expert_until
        if expert:
            action = labels[-1]
        else:
            if not queue.remaining(steps):
                seen = Observation(images=obs.images, state=obs.state, instruction=instruction)
                queue.add(np.asarray(controller.act(seen, env), np.float32), steps, steps)
            action = queue.pop(steps)
        obs, _reward, done, info = env.step(action, render=True)
        steps += 1
        if history > 1:
            controller.observe(obs)
        success = bool(info.get("success"))
        if record:
            executed.append(np.asarray(action, np.float32))
            successes.append(success)
            by_expert.append(expert)
        if first is None and success:
            first = steps - 1
        if done:
            break
    policy_success = first is not None and (took_over is None or first < took_over)
    expert_steps = (steps - took_over) if took_over is not None else int(sum(by_expert))
    if not states:
        return Rollout(None, policy_success, took_over, steps, expert_steps)
    frames = {f"observation.images.{c}": np.stack(images[c]) for c in cameras}
    frames["observation.state"] = np.stack(states)
    frames["action"] = np.stack(labels)
    if takeover:
        frames[INTERVENTION_COLUMN] = np.ones((len(states), 1), bool)
    else:
        frames[POLICY_ACTION] = np.stack(executed)
        if beta:
            frames[INTERVENTION_COLUMN] = np.asarray(by_expert, bool).reshape(-1, 1)
        if plan:
            frames[PLAN_COLUMN] = np.stack(plans)
            frames[PLAN_PAD_COLUMN] = np.stack(plan_pads)
    frames["next.success"] = np.asarray(successes, bool)
    return Rollout(frames, policy_success, took_over, steps, expert_steps)


def expert_plan(env: Env, horizon: int, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The expert's next `horizon` actions from the env's current state, `first` (its action here)
    included: float32 (H, D) and the padding bool (H,), True where the env's episode ended first (the
    last action repeats there). The env is stepped ahead unrendered and restored, so the episode goes on
    exactly as if this had not run."""
    actions, pad = [np.asarray(first, np.float32)], np.zeros(horizon, bool)
    snapshot = env.snapshot()
    try:
        for k in range(1, horizon):
            _obs, _reward, done, _info = env.step(actions[-1], render=False)
            if done:  # the episode's last step: nothing after it
                pad[k:] = True
                actions += [actions[-1]] * (horizon - k)
                break
            actions.append(np.asarray(env.expert_action(), np.float32))
    finally:
        env.restore(snapshot)
    return np.stack(actions), pad


def scripted_round(
    policy_dir: str | Path,
    out: Path,
    spec: EnvSpec,
    tasks: list[str],
    episodes: int,
    seed: int,
    first_index: int,
    max_steps: int,
    tail: int,
    device: str = "cpu",
    info: dict[str, Any] | None = None,
    takeover: int = 0,
    beta: float = 0.0,
    plan: bool = False,
    expert_variant: str | None = None,
) -> list[dict[str, Any]]:
    """Rolls `policy_dir` out `episodes` times per task and writes the labelled frames to `out`
    (`label_rollout`; `takeover` > 0: the expert takes over a roll-out not finished in that many steps and
    only its frames are kept; `beta` > 0: the expert drives that share of the chunks, flagged; `plan`: each
    frame also carries the expert's own next H actions, H the policy's chunk; `expert_variant`: which of the
    env's scripted experts labels, None: its only one).

    Roll-out i of a task starts from ``episode_seed(seed, task, first_index + i)``. Returns one record per
    roll-out (episode_index, task, seed, success: the policy's own, frames; with a take-over also
    takeover, the step, and expert_success; with mixing, expert_steps), also kept in info.json's
    ``"vlaforge"``; a roll-out that added no frame (finished by the policy, or a take-over the expert did
    not finish) has episode_index None. When no roll-out added a frame, `out` is not written.
    """
    from vlaforge.envs.collect import _env_for, episode_writer
    from vlaforge.eval.baselines import PolicyController
    from vlaforge.models.policy import Policy

    policy = Policy.from_pretrained(policy_dir, device=device)
    controller = PolicyController(policy)
    emb = policy.embodiment
    horizon = int(policy.chunk_size) if plan else 0
    cameras, size = tuple(emb.camera_names), int(emb.image_size)
    kept: list[dict[str, Any]] = []
    action_names = list(spec.embodiment(list(cameras), size).action_names)
    if takeover:
        extra = {INTERVENTION_COLUMN: {"dtype": "bool", "shape": [1], "names": None}}
    else:
        extra = {POLICY_ACTION: {"dtype": "float32", "shape": [emb.action_dim], "names": action_names}}
        if beta:
            extra[INTERVENTION_COLUMN] = {"dtype": "bool", "shape": [1], "names": None}
        if plan:
            extra[PLAN_COLUMN] = {"dtype": "float32", "shape": [horizon, emb.action_dim], "names": None}
            extra[PLAN_PAD_COLUMN] = {"dtype": "bool", "shape": [horizon], "names": None}
    writer = episode_writer(out, spec, cameras, size, {**(info or {}), "episodes": kept}, extra)
    bar = tqdm(total=episodes * len(tasks), desc="dagger roll-outs", unit="episode")
    try:
        for task in tasks:
            env = _env_for(spec.name, task, cameras, size, max_steps, expert_variant)
            for i in range(episodes):
                s = episode_seed(seed, task, first_index + i)
                ro = label_rollout(
                    controller, env, s, spec.instructions[task], max_steps, tail, takeover, beta, horizon
                )
                expert_won = ro.frames is not None and bool(ro.frames["next.success"].any())
                # A take-over the expert did not finish is no demonstration: dropped, as `vlaforge collect`
                # drops the expert's failed episodes (and as an operator discards a failed recording).
                keep = ro.frames is not None and (not takeover or expert_won)
                index = writer.add_episode(task=spec.instructions[task], frames=ro.frames) if keep else None
                n = len(ro.frames["action"]) if keep else 0
                entry = {"episode_index": index, "task": task, "seed": s, "success": ro.policy_success,
                         "frames": n}  # fmt: skip
                if takeover:
                    entry.update(takeover=ro.takeover, expert_success=expert_won)
                if beta:
                    entry["expert_steps"] = ro.expert_steps
                kept.append(entry)
                bar.update(1)
        if writer.episodes:
            writer.finalize()
        else:
            writer.abort()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return kept


def intervention_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of every unbroken run of True in `flags`."""
    f = np.concatenate([[False], np.asarray(flags, bool).reshape(-1), [False]])
    edges = np.flatnonzero(f[1:] != f[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _check_matches(ds: Any, embodiment: Embodiment, src: str | Path) -> None:
    """Refuses a recorded dataset that does not show the policy's robot (cameras, image size, dims)."""
    have = {
        "cameras": sorted(ds.camera_names),
        "image size": sorted({int(ds.features[k]["shape"][0]) for k in ds.camera_keys}),
        "action dim": int(np.prod(ds.features["action"]["shape"])),
        "state dim": int(np.prod(ds.features["observation.state"]["shape"])),
    }
    want = {
        "cameras": sorted(embodiment.camera_names),
        "image size": [int(embodiment.image_size)],
        "action dim": int(embodiment.action_dim),
        "state dim": int(embodiment.state_dim),
    }
    wrong = [f"{k} {have[k]} (the policy's: {want[k]})" for k in want if have[k] != want[k]]
    if wrong:
        raise InputError(
            f"--dataset {src}: not the policy's robot: {'; '.join(wrong)}. Record with the policy's cameras, "
            "image size, state and actions"
        )


def recorded_round(
    src: str | Path, out: Path, embodiment: Embodiment, info: dict[str, Any] | None = None
) -> list[dict]:
    """Writes the frames of `src` a person drove (``complementary_info.is_intervention`` set) to `out`, each
    unbroken run of them an episode; returns the episodes' records (episode_index, source episode, source
    frames [from, to), task).

    Raises:
        InputError: `src` is not a LeRobot v3.0 dataset, has no flag column, or flags no frame.
    """
    # The decoded frames are needed only while the runs are copied out: decode into a scratch folder
    # next to `out` (same disk) that goes when this returns, however it returns.
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.decoded-", dir=out.parent) as scratch:
        return _copy_interventions(src, out, embodiment, info, Path(scratch))


def _copy_interventions(
    src: str | Path, out: Path, embodiment: Embodiment, info: dict[str, Any] | None, scratch: Path
) -> list[dict]:
    from vlaforge.data.lerobot import LeRobotDataset, LeRobotWriter

    ds = LeRobotDataset(src, cache_dir=scratch)  # a bad dataset: InputError
    if INTERVENTION_COLUMN not in ds.features:
        columns = [k for k in ds.features if k not in ds.camera_keys]
        raise InputError(
            f"--dataset {src}: no column {INTERVENTION_COLUMN!r} (the frames a person drove; have {columns}). "
            "Record interventions with that column (1 where a person drove), as LeRobot's "
            "human-in-the-loop recordings do"
        )
    flags = ds.column(INTERVENTION_COLUMN).reshape(-1).astype(bool)
    if not flags.any():
        raise InputError(f"--dataset {src}: no frame is flagged in {INTERVENTION_COLUMN!r}; nothing to learn")
    keys = [*ds.camera_keys, "observation.state", "action"]
    missing = [k for k in keys[len(ds.camera_keys) :] if k not in ds.features]
    if missing:
        raise InputError(f"--dataset {src}: no {missing} column; a label needs the state and the action")
    _check_matches(ds, embodiment, src)
    features = {k: ds.features[k] for k in keys}
    features[INTERVENTION_COLUMN] = {"dtype": "bool", "shape": [1], "names": None}
    kept: list[dict[str, Any]] = []
    vlaforge = {"embodiment": embodiment.to_dict(), "recorded_from": str(Path(src).resolve()), **(info or {})}
    vlaforge["episodes"] = kept
    writer = LeRobotWriter(out, fps=ds.fps, features=features, robot_type=str(ds.info.get("robot_type") or "unknown"),
                           extra_info={"vlaforge": vlaforge})  # fmt: skip
    try:
        for ep in range(ds.num_episodes):
            frames = ds.episode_frames(ep)
            for a, b in intervention_runs(flags[frames.start : frames.stop]):
                idx = np.arange(frames.start + a, frames.start + b)
                cols = {k: np.asarray(ds.video_frames(k)[idx]) for k in ds.camera_keys}
                for k in ("observation.state", "action"):
                    cols[k] = np.asarray(ds.column(k)[idx], np.float32)
                cols[INTERVENTION_COLUMN] = np.ones(len(idx), bool)
                task = ds.tasks[int(ds.column("task_index")[idx[0]])]
                index = writer.add_episode(task=task, frames=cols)
                kept.append({"episode_index": index, "source_episode": ep, "source_frames": [int(idx[0]), int(idx[-1]) + 1], "task_words": task})  # fmt: skip
        writer.finalize()
    except BaseException:
        writer.abort()
        raise
    return kept
