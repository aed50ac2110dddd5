"""Environments: the one protocol collection, evaluation and the demo speak, and the table of them.

An environment is a simulator with tasks (`EnvSpec`: names, task sets, difficulty groups, training and
held-out instructions, default cameras, image size and episode length) and, per task, an `Env` that
resets from a seed, steps, renders the policy's cameras on demand, says when the task is done, and may
offer a scripted expert's action. `vlaforge.envs.registry` names the environments.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vlaforge.errors import InputError
from vlaforge.types import Embodiment, Observation, as_list


class Env(Protocol):
    """One task of an environment, speaking vlaforge's `Observation`.

    Attributes:
        task: the task's name.
        embodiment: the robot as the policy sees it (cameras and image size included).
        render_images: whether observations carry images by default (`reset`, `step` and `observe`
            take a `render` argument that overrides it for one call).
        frames_rendered: camera images rendered since the env was made.
    """

    task: str
    embodiment: Embodiment
    render_images: bool
    frames_rendered: int

    def reset(self, seed: int, render: bool | None = None) -> Observation:
        """Starts an episode whose initial state is a function of `seed` alone."""
        ...

    def step(self, action: np.ndarray, render: bool | None = None) -> tuple[Observation, float, bool, dict]:
        """Applies one action; returns (observation, reward, done, info) with a bool info["success"]."""
        ...

    def observe(self, render: bool | None = None) -> Observation:
        """The observation of the current state, without stepping (rendering never changes the state)."""
        ...

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state (an env without one raises InputError)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EnvSnapshot:
    """An episode's state, taken by an env's `snapshot()` and put back by its `restore(snapshot)`.

    Optional in `Env`: an env that has the two lets an expert be run ahead from a state the policy reached
    and the episode go on as if it had not been (`vlaforge dagger --labels plan`). Opaque to everyone but
    the env that took it.

    Attributes:
        task: the env's task (a snapshot restores into an env of the same task only).
        physics: the simulator's state, as the env packs it.
        python: the rest of the episode's state the env keeps (step count, previous frame, ...).
    """

    task: str
    physics: np.ndarray
    python: dict[str, Any]


@dataclass(frozen=True)
class EnvSpec:
    """An environment: how to build its tasks' envs, and what it knows about those tasks.

    Attributes:
        name: the registry name (`--env`).
        title: the name people know it by, for reports ("Meta-World").
        make: `make(task, cameras=, image_size=, max_steps=, render=) -> Env`.
        embodiment: `embodiment(cameras, image_size) -> Embodiment`.
        tasks: every task, in the benchmark's order.
        task_sets: named sets of tasks ("mt10", "easy", ...), each a list of task names.
        groups: difficulty groups in display order; `difficulty` maps each task to one.
        difficulty: task -> group.
        instructions: task -> the instruction used for training data.
        heldout_instructions: task -> paraphrases kept out of training (instruction-following tests).
        phrasings: task -> patterns of other phrasings of its instruction, drawn in training by instruction
            augmentation (`vlaforge.envs.phrasing`); never a held-out paraphrase.
        default_tasks: what `--tasks` means when it is not given.
        cameras: the default cameras (collection, baselines).
        image_size: the default square image side.
        max_steps: the default episode length.
        control_hz: actions per second (a dataset's fps).
        robot_type: the robot, as a LeRobot dataset's `robot_type`.
        packages: distributions whose versions an evaluation records.
        task_suffix: a suffix that may be left out of task names ("-v3").
        success: how success is decided, in words (recorded with every evaluation).
        expert_variants: the scripted experts `make(..., expert=NAME)` builds, the first the default; empty
            when `make` takes no `expert` (the env has one expert).
    """

    name: str
    title: str
    make: Callable[..., Env]
    embodiment: Callable[..., Embodiment]
    tasks: list[str]
    task_sets: dict[str, list[str]]
    groups: tuple[str, ...]
    difficulty: dict[str, str]
    instructions: dict[str, str]
    heldout_instructions: dict[str, list[str]]
    default_tasks: str
    cameras: tuple[str, ...]
    image_size: int
    max_steps: int
    control_hz: float
    robot_type: str
    packages: tuple[str, ...] = ()
    task_suffix: str = ""
    success: str = "info['success'] at any step; the episode stops at the first success"
    extra: dict[str, Any] = field(default_factory=dict)
    phrasings: dict[str, list[str]] = field(default_factory=dict)
    expert_variants: tuple[str, ...] = ()

    def resolve_tasks(self, spec: str | Sequence[str] | None = None) -> list[str]:
        """Turns a task spec into task names, in order and without duplicates.

        Args:
            spec: a task set name (`task_sets`; "all" is every task), a group, a task name (its
                `task_suffix` may be left out), or a comma list / list of these. None: `default_tasks`.

        Raises:
            InputError: for an unknown name, with the closest known names.
        """
        out: list[str] = []
        sets = {"all": self.tasks, **{g: self._group(g) for g in self.groups}, **self.task_sets}
        for item in as_list(self.default_tasks if spec is None else spec):
            key = item.strip().lower()
            if key in sets:
                names = sets[key]
            elif key in self.difficulty:
                names = [key]
            elif self.task_suffix and f"{key}{self.task_suffix}" in self.difficulty:
                names = [f"{key}{self.task_suffix}"]
            else:
                vocabulary = [*sets, *self.tasks]
                close = difflib.get_close_matches(key, vocabulary, n=3, cutoff=0.5)
                hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise InputError(
                    f"unknown {self.title} task {item!r}{hint} Use {', '.join(sets)} or task names such "
                    f"as {self.tasks[0]!r} (--env {self.name})."
                )
            out.extend(n for n in names if n not in out)
        if not out:
            raise InputError(f"no tasks in {spec!r}; use {', '.join(sets)} or task names (--env {self.name})")
        return out

    def _group(self, group: str) -> list[str]:
        return [t for t in self.tasks if self.difficulty[t] == group]

    def check_task(self, task: str) -> str:
        """`task` as a full task name (an unknown one is an InputError with the closest names)."""
        return task if task in self.difficulty else self.resolve_tasks(task)[0]

    def instruction(self, task: str, split: str = "train", index: int = 0) -> str:
        """The training instruction of `task` ("train"), or its held-out paraphrase `index` (cycled)."""
        task = self.check_task(task)
        if split == "train":
            return self.instructions[task]
        if split == "heldout":
            options = self.heldout_instructions[task]
            return options[index % len(options)]
        raise InputError(f"unknown instruction split {split!r}; use 'train' or 'heldout'")


def episode_seed(seed: int, task: str, index: int) -> int:
    """A stable 31-bit seed for episode `index` of `task` under the run seed `seed`.

    Uses sha256 of the three values, so it is the same in every process and Python version (Python's
    `hash()` of a string is salted per process).
    """
    digest = hashlib.sha256(f"vlaforge/{int(seed)}/{task}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
