"""The action heads vlaforge knows, in one table.

The CLI's `--head` choices and help, `TrainConfig` validation, `Policy` construction and checkpoint loading
all read `HEADS`. Adding a head is one module (an `ActionHead` subclass with its `spec`) plus one entry
below.
"""

from __future__ import annotations

import difflib
from typing import Any

from vlaforge.errors import InputError
from vlaforge.models.diffusion import DiffusionHead
from vlaforge.models.fast_head import FastTokenHead
from vlaforge.models.flow import FlowHead
from vlaforge.models.heads import ActionHead, ChunkHead, HeadDims, HeadSpec, TokenHead

HEADS: dict[str, HeadSpec] = {
    spec.name: spec
    for spec in (
        TokenHead.spec,
        ChunkHead.spec,
        DiffusionHead.spec,
        FastTokenHead.spec,
        FlowHead.spec,
    )
}


def get_head_spec(name: str) -> HeadSpec:
    """The registered head called `name`; a typo gets a "did you mean".

    Raises:
        InputError: no head of that name.
    """
    if name in HEADS:
        return HEADS[name]
    close = difflib.get_close_matches(str(name), HEADS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise InputError(f"unknown action head {name!r}{hint} (known: {', '.join(HEADS)})")


def build_head(name: str, dims: HeadDims, options: dict[str, Any] | None = None) -> ActionHead:
    """Builds the head `name` with `options` (validated and converted against the registry)."""
    spec = get_head_spec(name)
    return spec.cls(dims, **spec.resolve_options(dict(options or {})))


def describe_heads() -> str:
    """One paragraph per head with its options, for `--help`."""
    lines = []
    for spec in HEADS.values():
        lines.append(f"{spec.name}: {spec.doc}")
        lines += [f"  {o.name}={o.default!r}: {o.doc}" for o in spec.options]
    return "\n".join(lines)


__all__ = ["HEADS", "build_head", "describe_heads", "get_head_spec"]
