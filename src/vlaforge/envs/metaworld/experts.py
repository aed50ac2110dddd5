"""Meta-World's scripted experts (`metaworld.policies`, one class per task), by task name."""

from __future__ import annotations

import numpy as np

from vlaforge.envs.metaworld.tasks import DIFFICULTY
from vlaforge.envs.rendering import configure_rendering
from vlaforge.errors import InputError

# Meta-World's expert classes are named Sawyer<Task in CamelCase>V3Policy, except this one.
_EXPERT_EXCEPTIONS = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}

EXPERT_VARIANTS = ("script", "recovering")

# Tasks whose script can get stuck, with two heights of the hand above the object (m) read from Meta-World's
# SawyerPushV3Policy and SawyerPickPlaceV3Policy: where the script starts closing the fingers on the way down
# (push: 0.10 above; pick-place: within 0.07 of the object), and where it stops descending.
_HEIGHTS = {"push-v3": (0.10, 0.04), "pick-place-v3": (0.07, 0.05)}
RECOVERING_TASKS = tuple(_HEIGHTS)
# How open the fingers must be (observation index 3, 1 = wide open) while the hand is still descending: nearly
# open above the height where closing starts, then down in a line to _SHUT where the descent ends. On the
# script's own descents the opening stayed well above this line (from the initial states of seeds 0-49:
# 0.78 or more on push, 0.94 on pick-place, at the end of the descent); fingers closed on the puck read
# about 0.4, resting on its top 0.3.
_OPEN = 0.97
_SHUT = 0.6
_AIM = np.array([-0.005, 0.0, 0.0])  # both scripts aim 5 mm behind the object's centre along x
_LIFT = 0.1  # m above the object the recovery lifts the hand to, the script's own approach height
_GAIN = 10.0  # the script's proportional gain on the position error


def expert_class_name(task: str) -> str:
    """The name of the scripted expert class of `task` in `metaworld.policies`."""
    if task not in DIFFICULTY and f"{task}-v3" in DIFFICULTY:
        task = f"{task}-v3"
    if task not in DIFFICULTY:
        raise InputError(f"unknown Meta-World task {task!r}; use v3 task names such as 'reach-v3'")
    if task in _EXPERT_EXCEPTIONS:
        return _EXPERT_EXCEPTIONS[task]
    camel = "".join(part.capitalize() for part in task.removesuffix("-v3").split("-"))
    return f"Sawyer{camel}V3Policy"


def make_expert(task: str, variant: str = "script"):
    """A fresh instance of the task's scripted expert (`get_action(raw_obs_39) -> (4,)`): Meta-World's
    script, or with ``variant="recovering"`` the `RecoveringExpert` for the tasks it knows
    (`RECOVERING_TASKS`; the script itself for every other task)."""
    if variant not in EXPERT_VARIANTS:
        raise InputError(f"unknown expert variant {variant!r}; choose one of {list(EXPERT_VARIANTS)}")
    script = _script(task)
    if variant == "recovering" and task in _HEIGHTS:
        return RecoveringExpert(task, script)
    return script


def _script(task: str):
    configure_rendering()  # importing metaworld imports mujoco, which fixes its GL backend
    import metaworld.policies as policies

    name = expert_class_name(task)
    cls = getattr(policies, name, None)
    if cls is None:
        raise InputError(f"metaworld.policies has no {name} for {task}; is metaworld >= 3.0 installed?")
    return cls()


class RecoveringExpert:
    """A scripted expert that gets itself out of the state its script cannot leave.

    Meta-World's push and pick-place scripts bring the hand over the puck, descend onto it and close the
    fingers on the way down; they open the fingers only far from the puck. From a state a policy leaves
    behind (the hand over the puck with its fingers already shut, resting on the puck's top) the script
    keeps commanding "down, closed" to the end of the episode. Here, whenever the script would still be
    descending onto the object (hand aligned over it, above the height where the script stops descending,
    object not lifted) while the fingers are more closed than the script's own descent has them at that
    height, the expert lifts the hand towards the approach height and opens the fingers, until they are
    open enough for the script's descent to close them in time; everywhere else it is the script, action
    for action, so from the task's own initial states it does exactly what the script does
    (tests/envs/test_recovering_expert.py).
    """

    def __init__(self, task: str, script) -> None:
        if task not in _HEIGHTS:
            raise InputError(f"the recovering expert knows only {sorted(_HEIGHTS)}; {task} uses its script")
        self.task, self.script = task, script
        self.closes_from, self.descends_until = _HEIGHTS[task]

    def least_opening(self, height: float) -> float:
        """How open the fingers must be with the hand `height` m above the object, still descending."""
        if height >= self.closes_from:
            return _OPEN
        share = (height - self.descends_until) / (self.closes_from - self.descends_until)
        return _SHUT + (_OPEN - _SHUT) * share

    def recovering(self, obs: np.ndarray) -> bool:
        """Whether in the state `obs` (Meta-World's 39 values) the expert backs off: the script would
        still be descending onto the object, and the fingers are more closed than its own descent has them
        at that height (they would shut before the hand is low enough to grasp)."""
        hand, opening, obj = obs[:3], obs[3], obs[4:7]
        aligned = np.linalg.norm(hand[:2] - (obj + _AIM)[:2]) <= 0.02
        height = abs(hand[2] - obj[2])
        descending = height > self.descends_until
        if self.task == "pick-place-v3":
            descending = descending and obj[2] < 0.04  # the script's own test for "not lifted yet"
        return bool(aligned and descending and opening < self.least_opening(height))

    def get_action(self, obs: np.ndarray) -> np.ndarray:
        if not self.recovering(obs):
            return self.script.get_action(obs)
        target = obs[4:7] + _AIM + np.array([0.0, 0.0, _LIFT])
        move = np.clip(_GAIN * (target - obs[:3]), -1.0, 1.0)
        return np.concatenate([move, [-1.0]]).astype(np.float32)  # -1: open the fingers
