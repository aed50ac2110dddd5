"""Command-line flags derived from config dataclasses: every option is declared once, as a documented field.

A config (`TrainConfig`, `EvalConfig`, `CollectConfig`, `DemoConfig`, ...) is a dataclass whose docstring has
a Google-style "Attributes:" section with one entry per field. `add_config_args` turns each field into a
flag (`batch_size` -> `--batch-size`) whose help is that entry and whose default is the field's, and
`config_from_args` builds the dataclass back from the parsed namespace, so the dataclass's own validation
(`__post_init__`) is the only validation. Adding an option is one edit: a field and its doc line.

Types understood: `bool` (`--x` / `--no-x`), `int`, `float`, `str`, `Path`, `X | None` of those (the
flag's value is X; leaving it out keeps None), `Literal[...]` (choices), `list[str]` and `list[str] | str`
(a comma list), `dict[str, ...]` (`key=value,key=value`). Choices may also come from a field's metadata:
`field(default=..., metadata={"choices": callable_or_sequence})`.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Literal

from vlaforge.errors import InputError

_ENTRY = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*(?:\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*)\s*:\s?(.*)$")


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its doc, parsed from the "Attributes:" section of `cls`'s docstring.

    An entry is `name: text` (or `a, b: text` for several fields), continued on more-indented lines.
    """
    doc = inspect.cleandoc(cls.__doc__ or "")
    lines = doc.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Attributes:")
    except StopIteration:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    indent = None
    for ln in lines[start + 1 :]:
        if not ln.strip():
            continue
        width = len(ln) - len(ln.lstrip())
        if width == 0:  # the next section
            break
        m = _ENTRY.match(ln)
        if m and (indent is None or width == indent):
            indent = width
            names = [n.strip() for n in m.group(2).split(",")]
            for n in names:
                out[n] = m.group(3).strip()
        elif names:
            for n in names:
                out[n] = (out[n] + " " + ln.strip()).strip()
    return out


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True  # noqa: UP007
    return tp, False


def _is_str_list(tp: Any) -> bool:
    """list[str], or list[str] | str."""
    if typing.get_origin(tp) is list:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(typing.get_origin(a) is list for a in typing.get_args(tp))
    return False


def parse_key_values(text: str) -> dict[str, str]:
    """'a=1,b=x' -> {'a': '1', 'b': 'x'} (values stay strings; the config converts them)."""
    out: dict[str, str] = {}
    for item in (s.strip() for s in str(text).split(",")):
        if not item:
            continue
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected key=value pairs separated by commas; got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def add_config_args(
    parser: argparse.ArgumentParser,
    cls: type,
    exclude: tuple[str, ...] = (),
    positional: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
) -> None:
    """Adds one flag per field of the dataclass `cls` (see the module docstring).

    Args:
        parser: the (sub)parser.
        cls: the config dataclass.
        exclude: fields that get no flag (set by the caller).
        positional: fields taken as positional arguments instead of flags.
        defaults: defaults shown and used instead of the dataclass's (a command's own defaults).
    """
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        default = defaults.get(f.name, _default(f))
        required = default is dataclasses.MISSING
        doc = docs.get(f.name)
        if doc is None:
            raise RuntimeError(f"{cls.__name__}.{f.name} has no entry in the class's Attributes: docstring")
        doc = doc.replace("%", "%%")  # argparse formats help strings with %
        kwargs: dict[str, Any] = {"help": doc, "dest": f.name}
        choices = f.metadata.get("choices")
        if callable(choices):
            choices = list(choices())
        if typing.get_origin(tp) is Literal:
            choices = list(typing.get_args(tp))
            tp = type(choices[0])
        if tp is bool and not optional:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _is_str_list(tp):
            kwargs["type"] = str  # the config splits the comma list
            kwargs["metavar"] = "A,B,..."
        elif typing.get_origin(tp) is dict or tp is dict:
            kwargs["type"] = parse_key_values
            kwargs["metavar"] = "KEY=VALUE,..."
        elif tp in (int, float):
            kwargs["type"] = tp
        else:  # str, Path, str | Path
            kwargs["type"] = str
        if choices is not None:
            kwargs["choices"] = choices
        if f.name in positional:
            kwargs.pop("dest")
            kwargs["metavar"] = f.name.upper()
            parser.add_argument(f.name, **kwargs)
            continue
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            kwargs["help"] = f"{doc} (default: {_shown(default).replace('%', '%%')})"
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_from_args(cls: type, ns: argparse.Namespace, **fixed: Any) -> Any:
    """Builds `cls` from the parsed flags (fields without a flag keep their defaults or take `fixed`)."""
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(ns, f.name)}
    values.update(fixed)
    return cls(**values)


def check_fields(cls: type, given: dict[str, Any], where: str) -> None:
    """Raises InputError naming unknown keys (e.g. in a config file) with the valid ones."""
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(given) - known)
    if unknown:
        raise InputError(f"{where}: unknown option(s) {unknown}; valid options are {sorted(known)}")


__all__ = ["add_config_args", "check_fields", "config_from_args", "field_docs", "parse_key_values"]


# ------------------------------------------------------------------------------ what run configs share
DEVICES = ("auto", "cpu", "cuda")
# Learning-rate schedules of a training run (`vlaforge.train.config.lr_at`).
SCHEDULES = ("constant", "cosine")


def changed_settings(
    saved: dict[str, Any], now: dict[str, Any], may_change: typing.Iterable[str]
) -> list[str]:
    """``"key: saved -> now"`` for every setting of `now` outside `may_change` that differs from `saved`
    (a key `saved` lacks counts as None): what a resumed run refuses to continue under."""
    allowed = set(may_change)
    return [
        f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if k not in allowed and saved.get(k) != v
    ]


class JsonConfig:
    """For a config dataclass saved beside its run: `to_dict` gives the JSON object written to the run's
    config file, and `from_dict` reads one back, leaving out keys the dataclass does not have (a file
    written by another vlaforge version; a field the file lacks keeps its default)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> typing.Self:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def field_defaults(cls) -> dict[str, Any]:
        """Every field's default (fields without one left out): what a run whose saved config lacks a field,
        added to vlaforge after the run started, effectively used."""
        out = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    def changed_since(self, saved: dict[str, Any], may_change: typing.Iterable[str]) -> list[str]:
        """`changed_settings` of this config against the `saved` one of the run it continues, a field the
        saved file lacks (added to vlaforge since the run started) counting as its default."""
        return changed_settings({**self.field_defaults(), **saved}, self.to_dict(), may_change)


def device_problems(device: str) -> list[str]:
    """The problem with a ``--device`` value, as a list for a config's problem list (empty when fine)."""
    return [] if device in DEVICES else [f"device {device!r} (choose 'auto', 'cpu' or 'cuda')"]


def run_problems(lr: float, device: str, threads: int | None) -> list[str]:
    """The checks every training run's config makes of its learning rate, device and thread count."""
    problems = [] if lr > 0 else [f"lr={lr} (must be > 0)"]
    problems += device_problems(device)
    if threads is not None and threads < 1:
        problems.append(f"threads={threads} (must be >= 1)")
    return problems
