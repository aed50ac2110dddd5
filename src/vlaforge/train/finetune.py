"""Which parameters train: the freezing strategies and LoRA of the OpenVLA paper.

OpenVLA (Kim et al., 2024, "OpenVLA: An Open-Source Vision-Language-Action Model", Table 3 and its
appendix) compares five ways of adapting the 7B model to a new robot:

- ``full``: every parameter trains.
- ``frozen-vision``: the vision encoder is frozen; projector + language model train.
- ``last-layer``: only the last LLM block, the input embeddings, ``lm_head`` and the final norm train.
- ``sandwich``: vision + projector + the last LLM block + embeddings + ``lm_head`` + final norm train.
- LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") on all linear layers,
  rank 32, alpha 16, no dropout: the best trade-off in the paper and what its fine-tuning script uses.

vlaforge adds ``frozen-vlm``: vision, projector and LLM frozen, only the new modules train (for a pi0 /
SmolVLA policy, `vlaforge.models.family`, whose parts are named the same way: its action expert and
state / action / time projections; SmolVLA's default, LeRobot's ``train_expert_only``).

vlaforge adds modules OpenVLA does not have: an action head (the token head reuses ``lm_head``) and,
when the robot reports its joint state, a state projection. They are new for every fine-tune, so
they always train fully, and their parameters are counted apart ("new") so the backbone counts
(vision + projector + LLM) compare one to one with the paper's table.

LoRA goes through ``peft`` (``inject_adapter_in_model``, adapters injected in place, so the policy
keeps its own class). Targets follow peft's ``"all-linear"`` rule applied to the backbone: every
``nn.Linear`` under ``backbone.vision``, ``backbone.projector`` and ``backbone.llm``, except the
language model's output layer (peft drops a ``PreTrainedModel``'s output embeddings, which is what
OpenVLA's ``finetune.py`` gets, since its model is one) and the output projection inside an
``nn.MultiheadAttention`` (SigLIP's pooling head), whose forward reads the weight directly so an
adapter there would never run. Over a quantised base (QLoRA) the targets are the quantised
layers themselves (`vlaforge.train.qlora`), and `apply_lora` checks that every projection of the LLM
got an adapter. A LoRA checkpoint must load with the one
``Policy.from_pretrained``: `merged_lora` swaps every adapted layer for a plain layer holding
``W + (alpha / r) B A`` while the policy is saved, leaving the training weights untouched (merging
in place and un-merging later would not give back the same bits, which exact resume needs).

Counts on the ``openvla-7b-siglip`` preset (vision + projector + LLM; tests/train/test_finetune.py):
the four freezing strategies give the paper's 7,188.1 / 6,760.4 / 465.1 / 914.2 M exactly. LoRA r=32
gives 98.1 M (98,123,776) against the paper's 97.6 M. The rule is the same; the layouts differ:
transformers' SigLIP splits timm's fused ``qkv`` into q, k and v (three adapters where timm has one,
+2.0 M) and pools with ``nn.MultiheadAttention``. The paper's figure matches, at both ranks it
reports, timm's layout with ``lm_head`` and the patch-embedding convolution adapted as well:
97,603,968 at r=32 and 195,207,936 at r=64 (97.6 M and 195.2 M), so its count evidently included
those two layers.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vlaforge.errors import InputError
from vlaforge.models.quantize import dequantize_layer, is_quantized_layer
from vlaforge.train.config import FREEZE_STRATEGIES

LORA_ADAPTER = "default"


def _unique_params(modules: list[nn.Module]) -> dict[int, nn.Parameter]:
    """All parameters of `modules`, each counted once (tied weights share one id)."""
    out: dict[int, nn.Parameter] = {}
    for m in modules:
        for p in m.parameters():
            out[id(p)] = p
    return out


def _count(params: dict[int, nn.Parameter], trainable_only: bool = False) -> int:
    return sum(p.numel() for p in params.values() if p.requires_grad or not trainable_only)


def _backbone_parts(policy: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(vision, projector, llm) of a policy, with an error naming what is missing."""
    bb = getattr(policy, "backbone", None)
    missing = [n for n in ("vision", "projector", "llm") if bb is None or not hasattr(bb, n)]
    if missing:
        raise InputError(
            f"freezing needs policy.backbone.vision/.projector/.llm; {type(policy).__name__} lacks {missing}"
        )
    return bb.vision, bb.projector, bb.llm


def _llm_last_layer_parts(llm: nn.Module) -> list[nn.Module]:
    """The last decoder block, input embeddings, output layer and final norm of a HF causal LM."""
    decoder = llm.get_decoder() if hasattr(llm, "get_decoder") else getattr(llm, "model", llm)
    layers = getattr(decoder, "layers", None)
    norm = getattr(decoder, "norm", None)
    if layers is None or len(layers) == 0 or norm is None:
        raise InputError(
            f"last-layer/sandwich freezing needs a decoder with .layers and .norm (Llama-style); "
            f"{type(llm).__name__} has decoder {type(decoder).__name__}"
        )
    in_emb = llm.get_input_embeddings() if hasattr(llm, "get_input_embeddings") else None
    parts = [layers[-1], norm] + ([in_emb] if in_emb is not None else [])
    out_emb = llm.get_output_embeddings() if hasattr(llm, "get_output_embeddings") else None
    if out_emb is not None:
        parts.append(out_emb)
    return parts


def _new_params(policy: nn.Module) -> dict[int, nn.Parameter]:
    """Parameters outside vision, projector and LLM: the head, a state projection (new per fine-tune)."""
    vision, projector, llm = _backbone_parts(policy)
    backbone = _unique_params([vision, projector, llm])
    return {k: v for k, v in _unique_params([policy]).items() if k not in backbone}


def param_counts(policy: nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts, with the new modules (head, state projection) apart.

    Returns:
        ``{"trainable", "total"}`` over the whole policy, ``{"backbone_trainable", "backbone_total"}``
        over vision + projector + LLM (LoRA adapters included when injected: they live inside those
        modules), and ``{"new_trainable", "new_total"}`` over everything else (the head's own
        parameters and the state projection; a token head reusing ``lm_head`` adds nothing here).
    """
    vision, projector, llm = _backbone_parts(policy)
    backbone = _unique_params([vision, projector, llm])
    every = _unique_params([policy])
    new = _new_params(policy)
    return {
        "trainable": _count(every, True),
        "total": _count(every),
        "backbone_trainable": _count(backbone, True),
        "backbone_total": _count(backbone),
        "new_trainable": _count(new, True),
        "new_total": _count(new),
    }


def apply_freeze(policy: nn.Module, strategy: str) -> dict[str, int]:
    """Sets ``requires_grad`` for one of OpenVLA's fine-tuning strategies; new modules always train.

    Args:
        policy: a `vlaforge.models.policy.Policy` (anything with ``backbone.vision``,
            ``backbone.projector``, ``backbone.llm`` and ``head``); may live on the meta device.
        strategy: one of ``full``, ``frozen-vision``, ``last-layer``, ``sandwich``.

    Returns:
        The counts of `param_counts` after freezing.
    """
    train_modules = [policy] if strategy == "full" else _strategy_modules(policy, strategy)
    keep = {**_unique_params(train_modules), **_new_params(policy)}
    for p in policy.parameters():
        p.requires_grad_(id(p) in keep)
    return param_counts(policy)


def _strategy_modules(policy: nn.Module, strategy: str) -> list[nn.Module]:
    """The backbone modules a freezing strategy trains."""
    if strategy not in FREEZE_STRATEGIES:
        raise InputError(f"unknown freeze strategy {strategy!r}; choose one of {list(FREEZE_STRATEGIES)}")
    vision, projector, llm = _backbone_parts(policy)
    if strategy == "full":
        return [vision, projector, llm]
    if strategy == "frozen-vision":
        return [projector, llm]
    if strategy == "frozen-vlm":
        return []
    if strategy == "last-layer":
        return _llm_last_layer_parts(llm)
    return [vision, projector, *_llm_last_layer_parts(llm)]  # sandwich


def _linear_like(m: nn.Module) -> bool:
    """An ``nn.Linear`` or a quantised one (vlaforge's portable layers, bitsandbytes')."""
    return isinstance(m, nn.Linear) or is_quantized_layer(m)


def _lora_candidates(policy: nn.Module, strategy: str, within: nn.Module | None = None) -> list[str]:
    """Names of the Linear (or quantised Linear) layers LoRA adapts under `strategy`, inside `within`."""
    vision, projector, llm = _backbone_parts(policy)
    out_emb = getattr(llm, "get_output_embeddings", None)
    skip = {id(out_emb())} if out_emb is not None else set()
    for part in (vision, projector, llm):
        for m in part.modules():
            if isinstance(m, nn.MultiheadAttention):
                skip.add(id(m.out_proj))
    allowed = {id(m) for part in _strategy_modules(policy, strategy) for m in part.modules()}
    if within is not None:
        allowed &= {id(m) for m in within.modules()}
    return [
        name
        for name, m in policy.named_modules()
        if _linear_like(m) and id(m) in allowed and id(m) not in skip and ".lora_" not in name
    ]


def lora_target_names(policy: nn.Module, strategy: str = "full") -> list[str]:
    """Full names of the layers LoRA adapts: peft's "all-linear" over the parts `strategy` trains.

    Every ``nn.Linear`` there, quantised or not (vision, projector and LLM for ``full``; projector and LLM
    for ``frozen-vision``; ...), except the LLM's output layer and the output projection of an
    ``nn.MultiheadAttention`` (whose forward bypasses the submodule).
    """
    names = _lora_candidates(policy, strategy)
    if not names:
        raise InputError(
            f"no nn.Linear layers found in {type(policy).__name__}'s backbone to adapt with LoRA"
        )
    return names


def lora_param_count(policy: nn.Module, rank: int) -> int:
    """LoRA's added parameter count, computed from Linear shapes alone: ``sum r * (in + out)``.

    This is what peft adds (``lora_A``: (r, in), ``lora_B``: (out, r), no biases) and works on models
    too large to inject into; a test checks it equals peft's count on a small model.
    """
    mods = dict(policy.named_modules())
    return sum(rank * (mods[n].in_features + mods[n].out_features) for n in lora_target_names(policy))


def apply_lora(
    policy: nn.Module, rank: int, alpha: int, dropout: float = 0.0, strategy: str = "full"
) -> dict[str, int]:
    """Injects LoRA adapters into the backbone's Linears (in place); freezes all but adapters and new modules.

    Args:
        policy: the policy to adapt (any device, meta included).
        rank: LoRA rank r (> 0).
        alpha: LoRA alpha; the update is scaled by ``alpha / r``.
        dropout: dropout on the adapter input (OpenVLA uses 0.0; keep it 0 for exact resume tests).
        strategy: which parts get adapters, named like the freezing strategies: ``full`` (vision,
            projector and LLM, OpenVLA's LoRA), ``frozen-vision`` (projector and LLM; the vision encoder
            stays exactly as it was), ``last-layer``, ``sandwich``.

    Returns:
        The counts of `param_counts` after injection (adapter parameters count as backbone).
    """
    from peft import LoraConfig, inject_adapter_in_model

    from vlaforge.train.qlora import prepare_lora

    if rank <= 0:
        raise InputError(f"LoRA rank must be > 0; got {rank}")
    targets = lora_target_names(policy, strategy)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    prepare_lora(policy, config, targets)  # quantised targets (QLoRA): which LoRA layer wraps them
    on_meta = any(p.is_meta for p in policy.parameters())
    inject_adapter_in_model(config, policy, adapter_name=LORA_ADAPTER, low_cpu_mem_usage=on_meta)
    # peft leaves only adapters trainable; the head and state projection are new and train fully.
    new = _new_params(policy)
    for name, p in policy.named_parameters():
        p.requires_grad_("lora_" in name or id(p) in new)
    check_llm_adapted(policy, strategy)
    return param_counts(policy)


def check_llm_adapted(policy: nn.Module, strategy: str = "full") -> None:
    """Raises InputError unless every attention and MLP projection of the LLM that `strategy` covers
    carries a LoRA adapter (quantised or not): otherwise LoRA would leave the language model as it was."""
    from peft.tuners.lora import LoraLayer

    llm = _backbone_parts(policy)[2]
    modules = dict(policy.named_modules())
    names = _lora_candidates(policy, strategy, within=llm)  # an adapted layer is now `NAME.base_layer`
    adapted = [
        n
        for n in names
        if n.endswith(".base_layer") and isinstance(modules[n[: -len(".base_layer")]], LoraLayer)
    ]
    missing = [n for n in names if n not in adapted]
    if not adapted or missing:
        raise InputError(
            f"LoRA left {len(missing) or 'all'} of the language model's projections without an adapter "
            f"(e.g. {missing[:3]}, {type(modules[missing[0]]).__name__ if missing else 'none found'}): "
            "fine-tuning would not adapt the LLM. peft wraps nn.Linear, bitsandbytes' Linear8bitLt / "
            "Linear4bit and vlaforge's Int8Linear / Int4Linear (vlaforge.train.qlora)"
        )


def has_lora(policy: nn.Module) -> bool:
    """True when peft LoRA layers are injected in `policy`."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in policy.modules())


def _plain_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding `weight` and `bias` (frozen)."""
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    out.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias.detach().to(weight.dtype), requires_grad=False)
    return out


def _merged_copy(layer: nn.Module) -> nn.Module:
    """A plain copy of a LoRA layer's base layer whose weight is ``W + scale * B A`` (new tensors); over a
    quantised base, an ``nn.Linear`` whose W is the dequantised weight."""
    base = layer.get_base_layer()
    if is_quantized_layer(base):
        with torch.no_grad():
            w = dequantize_layer(base)
            merged_w = w + layer.get_delta_weight(LORA_ADAPTER).to(w.device, w.dtype)
        return _plain_linear(merged_w, base.bias)
    merged = copy.copy(base)  # shares buffers/submodules; only the parameter dict is replaced below
    merged._parameters = dict(base._parameters)
    with torch.no_grad():
        delta = layer.get_delta_weight(LORA_ADAPTER).to(base.weight.dtype)
        merged._parameters["weight"] = nn.Parameter(base.weight.detach() + delta, requires_grad=False)
    return merged


@contextmanager
def merged_lora(policy: nn.Module) -> Iterator[nn.Module]:
    """While open, every LoRA layer of `policy` is replaced by a plain merged layer, and every quantised
    layer left without an adapter by a plain dequantised one; restored after.

    Used to save a LoRA or QLoRA run as an ordinary full-precision policy dir that
    ``Policy.from_pretrained`` loads with no peft at all. The training weights (base + adapters) are not
    modified.
    """
    from peft.tuners.lora import LoraLayer

    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    modules = dict(policy.named_modules())
    inside_lora = {id(sub) for m in modules.values() if isinstance(m, LoraLayer) for sub in m.modules()}
    try:
        for name, m in list(modules.items()):
            if isinstance(m, LoraLayer):
                new = _merged_copy(m)
            elif is_quantized_layer(m) and id(m) not in inside_lora:
                with torch.no_grad():
                    new = _plain_linear(dequantize_layer(m), m.bias)
            else:
                continue
            parent_name, _, attr = name.rpartition(".")
            parent = modules[parent_name] if parent_name else policy
            setattr(parent, attr, new)
            swaps.append((parent, attr, m))
        yield policy
    finally:
        for parent, attr, m in reversed(swaps):
            setattr(parent, attr, m)


def trainable_state_dict(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of every trainable parameter, by name (a LoRA run's adapters + head)."""
    return {n: p.detach() for n, p in policy.named_parameters() if p.requires_grad}


def describe_counts(counts: dict[str, Any]) -> str:
    """One line for the log: trainable / total, backbone and head apart, in millions."""

    def m(x: int) -> str:
        return f"{x / 1e6:,.1f} M" if x >= 1e5 else f"{x:,}"

    return (
        f"trainable {m(counts['trainable'])} of {m(counts['total'])} "
        f"(backbone {m(counts['backbone_trainable'])} of {m(counts['backbone_total'])}, "
        f"head and other new modules {m(counts['new_trainable'])})"
        + (
            f"; {m(counts['never_used'])} never reach the loss and stay frozen"
            if counts.get("never_used")
            else ""
        )
    )


def freeze_unused(policy: nn.Module) -> int:
    """Freezes the parameters whose outputs never reach the loss (`Policy.unused_parameter_names`).

    Applied after a freezing strategy or LoRA, so the strategies' counts stay the paper's: they select
    modules, and this only removes what could never receive a gradient. Returns how many parameters
    (elements) it froze among those that were trainable.
    """
    names = set(policy.unused_parameter_names())
    frozen = 0
    for n, p in policy.named_parameters():
        if n in names and p.requires_grad:
            frozen += p.numel()
            p.requires_grad_(False)
    return frozen
