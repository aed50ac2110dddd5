"""Teleoperation, independent of any interface: operator commands -> env actions, a session that steps the
env and records every episode to a LeRobot v3.0 dataset, and interventions (a policy drives, the operator
takes over and hands back).

Commands. An operator command is a `Command`: a translation (x, y, z) in [-1, 1] per axis (keys give -1, 0
or +1; a gamepad's sticks give anything in between) and a gripper command in [-1, 1] (+1 closes, as
Meta-World's fourth action dim). `action_from_command` scales the translation by the session's speed
(0 < speed <= 1) and lays it out in the env's action space (`Embodiment.action_names`: delta_x, delta_y,
delta_z, gripper), clipped to the action limits.

Recording. Every step's frame holds the observation the action was taken from, the action, ``next.success``
and the intervention flag `INTERVENTION_KEY` (True when the operator produced the action, False when the
policy did; an episode without a policy is all True). The column is named as LeRobot's human-in-the-loop
tools name it (``complementary_info.is_intervention``), so a LeRobot user reads it as is. At the end of an
episode the operator keeps it (`keep`) or drops it (`discard`); `meta/info.json` records under
``"vlaforge"`` each kept episode's task, seed, instruction, success and intervention count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.envs.base import Env
from vlaforge.envs.collect import episode_features
from vlaforge.envs.registry import get_env
from vlaforge.errors import InputError
from vlaforge.types import Observation

INTERVENTION_KEY = "complementary_info.is_intervention"
SPEEDS = (0.25, 0.5, 0.75, 1.0)  # the speed steps `faster` / `slower` move through
SUCCESS_TAIL = 10  # steps an episode runs on after its first success before it stops


@dataclass
class Command:
    """One operator command: translation per axis in [-1, 1] and gripper in [-1, 1] (+1 closes)."""

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    gripper: float = -1.0

    def clipped(self) -> Command:
        c = np.clip([self.x, self.y, self.z, self.gripper], -1.0, 1.0)
        return Command(float(c[0]), float(c[1]), float(c[2]), float(c[3]))


def action_from_command(cmd: Command, speed: float, names: list[str], low=None, high=None) -> np.ndarray:
    """The env action (D,) float32 for `cmd` at `speed`: delta_x/y/z get speed * axis, gripper the gripper
    command; any other dim 0. Clipped to [low, high] when given (else [-1, 1])."""
    if not 0.0 < speed <= 1.0:
        raise InputError(f"speed must be in (0, 1]; got {speed}")
    cmd = cmd.clipped()
    values = {"delta_x": speed * cmd.x, "delta_y": speed * cmd.y, "delta_z": speed * cmd.z}
    values["gripper"] = cmd.gripper
    action = np.array([values.get(n, 0.0) for n in names], np.float32)
    lo = -1.0 if low is None else np.asarray(low, np.float32)
    hi = 1.0 if high is None else np.asarray(high, np.float32)
    return np.clip(action, lo, hi).astype(np.float32)


class TeleopSession:
    """One env task driven by an operator (and optionally a policy), recording kept episodes.

    Args:
        env: the environment's registry name.
        task: a task of that env.
        out: the dataset directory written by `close()` (None: record nothing).
        seed: the seed of the first episode; each new episode uses the next one.
        policy: an object with `predict_action(obs) -> (H, D)` (a vlaforge `Policy`), or None (operator only).
        speed: the initial speed, in (0, 1].
        max_steps: the step cap of an episode (None: the env's episode length).
        image_size, cameras: what is rendered and recorded (None: the env's defaults).
        overwrite: replace an existing dataset at `out`.
    """

    def __init__(
        self,
        env: str,
        task: str,
        out: str | Path | None = None,
        seed: int = 0,
        policy: Any = None,
        speed: float = 1.0,
        max_steps: int | None = None,
        image_size: int | None = None,
        cameras: list[str] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.spec = get_env(env)
        self.task = self.spec.check_task(task)
        self.instruction = self.spec.instructions[self.task]
        self.cameras = list(cameras or self.spec.cameras)
        self.image_size = int(image_size or self.spec.image_size)
        self.max_steps = int(max_steps or self.spec.max_steps)
        self.out = None if out is None else Path(out)
        if self.out is not None and self.out.exists() and not overwrite:
            raise InputError(f"{self.out} already exists; choose another --out or pass --overwrite")
        self.overwrite = overwrite
        self.env: Env = self.spec.make(
            self.task, cameras=self.cameras, image_size=self.image_size, max_steps=self.max_steps, render=True
        )
        self.emb = self.env.embodiment
        self.policy = policy
        self.set_speed(speed)
        self.next_seed = int(seed)
        self.period = 1.0 / float(self.spec.control_hz)
        self.kept: list[dict[str, Any]] = []
        self._writer = None
        self.human = policy is None  # who drives: the operator (True) or the policy
        self.reset()

    # -- settings -----------------------------------------------------------------------------------
    def set_speed(self, speed: float) -> None:
        if not 0.0 < float(speed) <= 1.0:
            raise InputError(f"speed must be in (0, 1]; got {speed}")
        self.speed = float(speed)

    def faster(self) -> None:
        self.speed = next((s for s in SPEEDS if s > self.speed + 1e-9), SPEEDS[-1])

    def slower(self) -> None:
        self.speed = next((s for s in reversed(SPEEDS) if s < self.speed - 1e-9), SPEEDS[0])

    def take_over(self) -> None:
        """The operator drives from the next step on, from the gripper the last step left (`gripper_command`:
        a keyboard's toggle or a default of "open" would drop what the policy was holding)."""
        self.human = True
        self._queue = None

    @property
    def gripper_command(self) -> float:
        """The gripper as the last executed action left it, as an operator's command: +1 closed, -1 open
        (-1 before the episode's first step, or for an action space without a gripper)."""
        names = list(self.emb.action_names)
        if self.steps == 0 or "gripper" not in names:
            return -1.0
        return 1.0 if float(self._last_action[names.index("gripper")]) > 0 else -1.0

    def hand_back(self) -> None:
        """The policy drives from the next step on (refused without a policy)."""
        if self.policy is None:
            raise InputError("there is no policy to hand back to; start the session with a policy")
        self.human = False

    # -- episodes -----------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> Observation:
        """Starts a new episode (the unfinished one, if any, is dropped)."""
        self.seed = self.next_seed if seed is None else int(seed)
        self.next_seed = self.seed + 1
        self.obs = self.env.reset(self.seed)
        self.human = self.policy is None  # each episode starts with the policy driving, if there is one
        self._frames: dict[str, list] = {k: [] for k in self._keys()}
        self.steps = 0
        self.first_success: int | None = None
        self.success = False
        self.done = False
        self.chunk: np.ndarray | None = None  # the policy's last action chunk, for display
        self._queue = None
        self._last_action = np.zeros(self.emb.action_dim, np.float32)
        return self.obs

    def _keys(self) -> list[str]:
        return [f"observation.images.{c}" for c in self.cameras] + [
            "observation.state",
            "action",
            "next.success",
            INTERVENTION_KEY,
        ]

    def _policy_action(self) -> np.ndarray:
        from vlaforge.client import ActionQueue

        if self._queue is None:
            self._queue = ActionQueue("open_loop", int(getattr(self.policy, "execute_steps", 1) or 1))
        action = self._queue.pop(self.steps)
        if action is None:
            obs = {"images": dict(self.obs.images), "state": self.obs.state, "instruction": self.instruction}
            self.chunk = np.asarray(self.policy.predict_action(obs), np.float32).reshape(
                -1, self.emb.action_dim
            )
            self._queue.add(self.chunk, self.steps, self.steps)
            action = self._queue.pop(self.steps)
        return np.asarray(action, np.float32)

    def step(self, cmd: Command | None = None) -> dict[str, Any]:
        """One control step: the operator's `cmd` when the operator drives, else the policy's action.

        Returns the step's info (success, done, steps, human). A finished episode refuses further steps."""
        if self.done:
            raise InputError("the episode is over; keep or discard it, then start the next one")
        if self.human:
            action = action_from_command(
                cmd or Command(gripper=float(self._last_action[-1]) if self.emb.action_dim else -1.0),
                self.speed,
                list(self.emb.action_names),
                self.emb.action_low,
                self.emb.action_high,
            )
        else:
            action = self._policy_action()
        f = self._frames
        for c in self.cameras:
            f[f"observation.images.{c}"].append(self.obs.images[c])
        f["observation.state"].append(np.asarray(self.obs.state, np.float32))
        f["action"].append(action)
        f[INTERVENTION_KEY].append(bool(self.human))
        self.obs, _, env_done, info = self.env.step(action)
        self._last_action = action
        success = bool(info["success"])
        f["next.success"].append(success)
        self.steps += 1
        if success and self.first_success is None:
            self.first_success = self.steps - 1
        self.success = self.success or success
        tail_over = self.first_success is not None and self.steps >= self.first_success + 1 + SUCCESS_TAIL
        self.done = bool(env_done or tail_over or self.steps >= self.max_steps)
        return {"success": self.success, "done": self.done, "steps": self.steps, "human": self.human}

    def keep(self) -> int | None:
        """Writes the current episode to the dataset (nothing when it has no steps); returns its index."""
        if self.steps == 0:
            return None
        if self.out is None:
            raise InputError("this session records nothing (no out directory was given)")
        writer = self._writer or self._open_writer()
        frames = {k: np.stack(v) for k, v in self._frames.items()}
        index = writer.add_episode(task=self.instruction, frames=frames)
        self.kept.append(
            {
                "episode_index": index,
                "task": self.task,
                "seed": self.seed,
                "instruction": self.instruction,
                "success": self.success,
                "frames": self.steps,
                "intervention_frames": int(frames[INTERVENTION_KEY].sum()),
            }
        )
        self.reset()
        return index

    def discard(self) -> None:
        """Drops the current episode and starts the next one."""
        self.reset()

    def _open_writer(self):
        from vlaforge.data.lerobot import LeRobotWriter

        features = episode_features(self.spec, self.cameras, self.image_size)
        features[INTERVENTION_KEY] = {"dtype": "bool", "shape": [1], "names": None}
        info = {
            "embodiment": self.emb.to_dict(),
            "env": self.spec.name,
            "teleop": {
                "max_steps": self.max_steps,
                "tail": SUCCESS_TAIL,
                "intervention_key": INTERVENTION_KEY,
            },
            "episodes": self.kept,
        }
        self._writer = LeRobotWriter(
            self.out,
            fps=self.spec.control_hz,
            features=features,
            robot_type=self.spec.robot_type,
            overwrite=self.overwrite,
            extra_info={"vlaforge": info},
        )
        return self._writer

    def close(self) -> Path | None:
        """Finalises the dataset (None when no episode was kept) and closes the env."""
        try:
            return self._writer.finalize() if self._writer is not None else None
        finally:
            self.env.close()

    def wait_tick(self, started: float) -> None:
        """Sleeps until one control period after `started` (time.monotonic())."""
        left = self.period - (time.monotonic() - started)
        if left > 0:
            time.sleep(left)
