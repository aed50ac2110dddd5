"""Meta-World's scripted experts (`metaworld.policies`, one class per task), by task name."""

from __future__ import annotations

from vlaforge.envs.metaworld.tasks import DIFFICULTY
from vlaforge.envs.rendering import configure_rendering
from vlaforge.errors import InputError

# Meta-World's expert classes are named Sawyer<Task in CamelCase>V3Policy, except this one.
_EXPERT_EXCEPTIONS = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}


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


def make_expert(task: str):
    """A fresh instance of the task's scripted expert (`get_action(raw_obs_39) -> (4,)`)."""
    configure_rendering()  # importing metaworld imports mujoco, which fixes its GL backend
    import metaworld.policies as policies

    name = expert_class_name(task)
    cls = getattr(policies, name, None)
    if cls is None:
        raise InputError(f"metaworld.policies has no {name} for {task}; is metaworld >= 3.0 installed?")
    return cls()
