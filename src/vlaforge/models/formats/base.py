"""What a checkpoint format reads and writes: a `Bundle`, and the `CheckpointFormat` row of the table.

A bundle is everything a `Policy` is rebuilt from, independent of any file layout: the preset, the head's
config, the embodiment, the statistics, the weights (in `Policy.state_dict()` names) and the tokenizer's
directory. Formats turn directories into bundles and back; `Policy.from_bundle` / `to_bundle` do the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlaforge.errors import InputError
from vlaforge.models.presets import Preset
from vlaforge.types import Embodiment, NormStats

# A reader's weights: given the policy's expected state dict (shapes, maybe on the meta device), the
# tensors to load into it, every key checked (missing, unexpected and wrong shapes are InputErrors).
StateLoader = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass
class Bundle:
    """A policy as data, between a checkpoint directory and a `Policy`.

    Attributes:
        preset: every size of the model (`tokenizer_path` names `tokenizer_dir` for the Llama tokenizer).
        head: the head's config (`kind`, `chunk_size` and its options; `ActionHead.config()`).
        embodiment: the robot.
        norm_stats: the statistics actions and state are normalised with.
        state: the weights: a state dict (written bundles) or a `StateLoader` (read ones, lazily mapped).
        dataset_stats: per training dataset of a mixture (or per OpenVLA `unnorm_key`), its statistics,
            whose action mask is that dataset's own.
        norm_mode: "q99", "min_max" or "mean_std".
        training_data: where the weights were trained (config.json's `training_data`).
        text: the text tokenizer's description (`to_dict()` of the policy's tokenizer).
        tokenizer_dir: the directory holding the text tokenizer's files, if any.
        extras: what one format carries for itself, e.g. "openvla": an imported checkpoint's config.json,
            dataset_statistics.json and source directory, written back on export.
        build_on_meta: build the model's parameters on the meta device and assign the loaded tensors
            (large, memory-mapped checkpoints: one copy of the weights in memory).
        keep_alive: an object the policy must hold while it lives (the memory maps of its tensors).
    """

    preset: Preset
    head: dict[str, Any]
    embodiment: Embodiment
    norm_stats: NormStats
    state: Mapping[str, torch.Tensor] | StateLoader
    dataset_stats: dict[str, NormStats] = field(default_factory=dict)
    norm_mode: str = "q99"
    training_data: dict[str, Any] | None = None
    text: dict[str, Any] = field(default_factory=dict)
    tokenizer_dir: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    build_on_meta: bool = False
    keep_alive: Any = None

    def tensors(self, expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weights for a policy whose state dict is `expected`."""
        return self.state(expected) if callable(self.state) else dict(self.state)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (of a written bundle)."""
        if callable(self.state):
            raise TypeError("a read bundle's dtype is known once its tensors are loaded")
        floats = [
            (not k.startswith("backbone."), t.dtype) for k, t in self.state.items() if t.is_floating_point()
        ]
        return min(floats, key=lambda f: f[0])[1] if floats else torch.float32  # the backbone's, first


@dataclass(frozen=True)
class CheckpointFormat:
    """One row of `FORMATS`.

    Attributes:
        name: what `save_pretrained(format=...)` and `vlaforge export --format` call it.
        doc: one line for `--help`.
        detect: True for a path (directory or hub id) in this format.
        read: `read(path, dtype=None) -> Bundle`; `dtype` casts floating weights as they load.
        write: `write(bundle, directory, **options) -> Path`, atomically: the directory is staged beside
            its final name and swapped in whole, so a crash leaves the old checkpoint or the new one.
        write_options: the keyword options `write` takes (what `vlaforge export` passes on).
    """

    name: str
    doc: str
    detect: Callable[[str | Path], bool]
    read: Callable[..., Bundle]
    write: Callable[..., Path]
    write_options: tuple[str, ...] = ()


DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def as_dtype(d: torch.dtype | str) -> torch.dtype:
    """A torch dtype from a dtype or its name ("bfloat16", "bf16", "float32", ...)."""
    if isinstance(d, torch.dtype):
        return d
    if d not in DTYPES:
        raise InputError(f"unknown dtype {d!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[d]


def cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """`t` in `dtype` when it is floating point and `dtype` is given; otherwise `t` itself."""
    return t if dtype is None or not t.is_floating_point() or t.dtype == dtype else t.to(dtype)


def check_keys(where: str, present: set[str], expected: set[str], what: str) -> None:
    """Raises an InputError listing the missing and unexpected tensors, if any."""
    missing, unexpected = sorted(expected - present), sorted(present - expected)
    if missing or unexpected:

        def show(keys: list[str], label: str) -> str:
            return f"{len(keys)} {label} {keys[:8]}{' ...' if len(keys) > 8 else ''}"

        raise InputError(
            f"{where}: the tensors do not match {what}: {show(missing, 'missing')}, "
            f"{show(unexpected, 'unexpected')}"
        )


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to the meta device as soon as it is created (its CPU
    allocation is never touched, so never resident); buffers stay real, so rotary frequencies and pixel
    statistics keep their values. Load the weights with `load_state_dict(..., assign=True)`."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        p = module._parameters.get(name)
        if p is not None and p.device.type != "meta":
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def tied_groups(module: nn.Module) -> list[list[str]]:
    """Names of parameters that are one tensor (tied embeddings), grouped, each group's first name first."""
    groups: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def retie(module: nn.Module, groups: list[list[str]]) -> None:
    """Makes every name of each group hold its first name's parameter again (`load_state_dict(assign=True)`
    gives each name its own parameter object, which would untie them)."""
    for names in groups:
        first = module.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            module.get_submodule(owner)._parameters[attr] = first


__all__ = [
    "Bundle",
    "CheckpointFormat",
    "StateLoader",
    "as_dtype",
    "cast",
    "check_keys",
    "parameters_on_meta",
    "retie",
    "tied_groups",
]
