"""The action heads vlaforge knows: the table (`vlaforge.head_specs.HEADS`) and building a head from it.

The CLI's `--head` choices and help, `TrainConfig` validation, `Policy` construction and checkpoint loading
all read `HEADS`. The table itself is torch-free (`vlaforge.head_specs`), so the CLI reads it without torch;
adding a head is one module (an `ActionHead` subclass) plus one entry there.
"""

from __future__ import annotations

from typing import Any

from vlaforge.errors import InputError, did_you_mean
from vlaforge.head_specs import HEADS, HeadSpec, describe_heads
from vlaforge.models import fast_head
from vlaforge.models.diffusion import DiffusionHead
from vlaforge.models.flow import FlowHead
from vlaforge.models.heads import ActionHead, ChunkHead, HeadDims, TokenHead

# Each head's class; `HEADS` (torch-free) holds its name, doc and options.
HEAD_CLASSES: dict[str, type[ActionHead]] = {
    "tokens": TokenHead,
    "chunk": ChunkHead,
    "diffusion": DiffusionHead,
    "fast": fast_head.FastTokenHead,
    "flow": FlowHead,
}
# `fit(preset, options) -> preset`, run by `Policy.from_preset` on a new model: the preset adjusted to what
# the head needs (the FAST head grows a vocabulary too small for its tokenizer). Other heads keep it.
_FIT_PRESET = {"fast": fast_head.fit_preset}
assert set(HEAD_CLASSES) == set(HEADS), "every head in vlaforge.head_specs.HEADS needs its class here"


def get_head_spec(name: str) -> HeadSpec:
    """The registered head called `name`; a typo gets a "did you mean".

    Raises:
        InputError: no head of that name.
    """
    if name in HEADS:
        return HEADS[name]
    raise InputError(f"unknown action head {name!r}{did_you_mean(name, HEADS)} (known: {', '.join(HEADS)})")


def build_head(name: str, dims: HeadDims, options: dict[str, Any] | None = None) -> ActionHead:
    """Builds the head `name` with `options` (validated and converted against the registry)."""
    spec = get_head_spec(name)
    return HEAD_CLASSES[spec.name](dims, **spec.resolve_options(dict(options or {})))


def fit_preset(name: str, preset: Any, options: dict[str, Any]) -> Any:
    """`preset` adjusted to what head `name` needs with `options` (unchanged for most heads)."""
    fit = _FIT_PRESET.get(get_head_spec(name).name)
    return preset if fit is None else fit(preset, options)


__all__ = ["HEADS", "HEAD_CLASSES", "build_head", "describe_heads", "fit_preset", "get_head_spec"]
