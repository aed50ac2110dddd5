"""The environments vlaforge knows, by name (`--env`). Registering one is one line in `ENVS`.

An entry is the "module:attribute" of its `EnvSpec` (`vlaforge.envs.base`), loaded on first use, so
naming an env imports nothing heavy and a simulator that is not installed costs nothing until asked for.
"""

from __future__ import annotations

import difflib
import importlib

from vlaforge.envs.base import EnvSpec
from vlaforge.errors import InputError

ENVS: dict[str, str] = {
    "metaworld": "vlaforge.envs.metaworld:SPEC",
    "robosuite": "vlaforge.envs.robosuite:SPEC",
}
DEFAULT_ENV = "metaworld"


def get_env(name: str | None = None) -> EnvSpec:
    """The `EnvSpec` registered as `name` (None: `DEFAULT_ENV`).

    `worldmodel:RUN` is the world model trained in RUN (`vlaforge.worldmodel.env`).

    Raises:
        InputError: an unknown name (with the closest registered ones), or an env whose simulator is not
            installed.
    """
    if name is not None and str(name).strip().startswith("worldmodel:"):  # a trained world model's run
        from vlaforge.worldmodel.env import world_model_spec

        return world_model_spec(str(name).strip().removeprefix("worldmodel:"))
    name = DEFAULT_ENV if name is None else str(name).strip().lower()
    if name not in ENVS:
        close = difflib.get_close_matches(name, list(ENVS), n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise InputError(f"unknown --env {name!r}{hint} Registered environments: {', '.join(ENVS)}.")
    module, _, attr = ENVS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
