"""Meta-World v3 behind vlaforge's `Env` protocol: tasks and instructions (`tasks`), scripted experts
(`experts`), upright camera images (`render`), the env and its `SPEC` (`env`)."""

from vlaforge.envs.base import episode_seed
from vlaforge.envs.metaworld.env import CONTROL_HZ, SPEC, MetaWorldEnv, embodiment
from vlaforge.envs.metaworld.experts import expert_class_name, make_expert
from vlaforge.envs.metaworld.tasks import (
    ALL_TASKS,
    DIFFICULTY,
    GROUPS,
    HELDOUT_INSTRUCTIONS,
    INSTRUCTIONS,
    MT10,
)
from vlaforge.envs.rendering import DEFAULT_GL, camera_names_of, configure_rendering

resolve_tasks = SPEC.resolve_tasks
instruction = SPEC.instruction

__all__ = [
    "ALL_TASKS",
    "CONTROL_HZ",
    "DEFAULT_GL",
    "DIFFICULTY",
    "GROUPS",
    "HELDOUT_INSTRUCTIONS",
    "INSTRUCTIONS",
    "MT10",
    "SPEC",
    "MetaWorldEnv",
    "camera_names_of",
    "configure_rendering",
    "embodiment",
    "episode_seed",
    "expert_class_name",
    "instruction",
    "make_expert",
    "resolve_tasks",
]
