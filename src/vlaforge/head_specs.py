"""The action heads' declarations, in one torch-free table: name, doc, default chunk, options.

`vlaforge.models.registry.HEADS` is this table; it lives outside `vlaforge.models` so that the CLI's
`--head` choices, `vlaforge train --help` and `TrainConfig` validation read it without importing torch or
transformers. The registry pairs each name with its `ActionHead` class. Adding a head is one module, one
entry below and one in `vlaforge.models.registry.HEAD_CLASSES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlaforge.errors import InputError


@dataclass(frozen=True)
class HeadOption:
    """One option of a head, as the registry declares it.

    Attributes:
        name: keyword argument of the head's constructor (and key in its saved config).
        type: bool, int, float or str; values from the command line are converted to it.
        default: the value when none is given.
        doc: one line for `--help`.
    """

    name: str
    type: type
    default: Any
    doc: str

    def convert(self, value: Any) -> Any:
        """Converts a value (possibly a command-line string) to the option's type."""
        if self.type is bool and isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise InputError(f"head option {self.name!r} takes true/false; got {value!r}")
        try:
            return self.type(value)
        except (TypeError, ValueError) as e:
            raise InputError(f"head option {self.name!r} takes a {self.type.__name__}; got {value!r}") from e


@dataclass(frozen=True)
class HeadSpec:
    """A head in the registry.

    Attributes:
        name: what `--head` and config.json call it.
        doc: one line for `--help`.
        default_chunk: the chunk H when none is given; None takes the preset's `chunk_size`.
        options: the head's own options.
    """

    name: str
    doc: str
    default_chunk: int | None = None
    options: tuple[HeadOption, ...] = field(default_factory=tuple)

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Every option with its value (given, converted, or the default); unknown names are an error."""
        known = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise InputError(
                f"head {self.name!r} has no option(s) {unknown}; its options are "
                + (", ".join(f"{o.name} ({o.doc})" for o in self.options) or "none")
            )
        return {n: (o.convert(given[n]) if n in given else o.default) for n, o in known.items()}


HEADS: dict[str, HeadSpec] = {
    spec.name: spec
    for spec in (
        HeadSpec(
            "tokens",
            "RT-2 / OpenVLA: 256-bin action tokens, greedy autoregressive decoding with a KV cache",
            default_chunk=1,
        ),
        HeadSpec(
            "chunk",
            "OpenVLA-OFT: H x D placeholders decoded in one parallel pass, L1 regression",
            default_chunk=None,
            options=(
                HeadOption(
                    "bidirectional",
                    bool,
                    True,
                    "placeholders attend to each other both ways (OFT's parallel decoding); false: causal",
                ),
            ),
        ),
        HeadSpec(
            "diffusion",
            "Diffusion Policy: DDPM (squared-cosine, eps) training, DDIM sampling, a DiT (adaLN-Zero) that "
            "cross-attends to the VLM's hidden states",
            default_chunk=None,
            options=(
                HeadOption("num_steps", int, 10, "DDIM denoising steps at inference"),
                HeadOption("train_steps", int, 100, "DDPM training steps T (the noise schedule's length)"),
                HeadOption("depth", int, 3, "DiT blocks"),
                HeadOption("width", int, 0, "DiT width; 0: min(LLM width, 256)"),
                HeadOption(
                    "clip_sample", bool, True, "clip the predicted x0 to [-1, 1] (off for mean_std norm)"
                ),
            ),
        ),
        HeadSpec(
            "fast",
            "pi0-FAST: the chunk as DCT + BPE tokens (variable length, then </s>), greedy decoding with a KV cache",
            default_chunk=None,
            options=(
                HeadOption("tokenizer", str, "", "a FAST tokenizer directory (`vlaforge tokenizer train`)"),
                HeadOption(
                    "tokenizer_json", str, "", "the tokenizer inline (written into saved checkpoints)"
                ),
                HeadOption(
                    "on_invalid",
                    str,
                    "hold",
                    "a predicted token sequence that does not decode: 'hold' (the row's last valid chunk) or "
                    "'raise'",
                ),
            ),
        ),
        HeadSpec(
            "flow",
            "pi0: an action expert attending to the LLM's keys/values, flow matching, Euler sampling",
            default_chunk=None,
            options=(
                HeadOption("num_steps", int, 10, "Euler integration steps at inference (pi0: 10)"),
                HeadOption(
                    "expert_width",
                    int,
                    0,
                    "the action expert's width; 0: half the LLM's, a multiple of head_dim",
                ),
                HeadOption(
                    "noise_policy",
                    bool,
                    False,
                    "start the integration from a learned, state-dependent Gaussian instead of N(0, I) "
                    "(DSRL; `vlaforge rl --flow-rl latent` adds and trains it)",
                ),
                HeadOption(
                    "noise_bound",
                    float,
                    0.0,
                    "with a noise policy: its draw squashed to (-b, b) by b * tanh (DSRL's off-policy "
                    "learner, `vlaforge rl --algo sac`); 0: unbounded",
                ),
            ),
        ),
    )
}


def describe_heads() -> str:
    """One paragraph per head with its options, for `--help`."""
    lines = []
    for spec in HEADS.values():
        lines.append(f"{spec.name}: {spec.doc}")
        lines += [f"  {o.name}={o.default!r}: {o.doc}" for o in spec.options]
    return "\n".join(lines)


__all__ = ["HEADS", "HeadOption", "HeadSpec", "describe_heads"]
