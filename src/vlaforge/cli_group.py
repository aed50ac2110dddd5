"""A CLI command with sub-commands built from config dataclasses (`vlaforge idm`, `vlaforge latent`).

Torch-free: each sub-command names the function it runs as ``"package.module:name"``, imported only when
the command runs, so ``--help`` never loads a model.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlaforge.config import add_config_args, config_from_args


def load(path: str) -> Any:
    """``'package.module:name'`` -> the object."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ConfigCommand:
    """A sub-command whose flags are a config dataclass's fields; running it calls `run` with the config.

    Attributes:
        help: one line for the parent's help.
        config: the dataclass (`vlaforge.config.add_config_args`).
        run: ``"package.module:function"`` taking the config.
        positional: fields taken as positional arguments.
    """

    help: str
    config: type
    run: str
    positional: tuple[str, ...] = ()


def add_group(
    sub: Any, name: str, help_text: str, build: bool, commands: Callable[[], dict[str, ConfigCommand]]
) -> Any | None:
    """Adds `name` to the CLI's subparsers; when `build`, its sub-commands from `commands()` (called only
    then, so the configs are imported only for this command) and returns the group's subparsers, where the
    caller adds commands of its own; else None."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    if not build:
        return None
    gsub = p.add_subparsers(dest=f"{name}_cmd", required=True)
    for cmd, spec in commands().items():
        c = gsub.add_parser(cmd, help=spec.help)
        add_config_args(c, spec.config, positional=spec.positional)
        c.set_defaults(func=lambda a, s=spec: load(s.run)(config_from_args(s.config, a)))
    return gsub


def print_json(run: str, *names: str) -> Callable[[Any], None]:
    """A command's ``func``: prints as JSON what `run` (``"module:function"``) returns for the parsed
    arguments `names`, in that order."""
    return lambda a: print(json.dumps(load(run)(*(getattr(a, n) for n in names)), indent=2))


__all__ = ["ConfigCommand", "add_group", "load", "print_json"]
