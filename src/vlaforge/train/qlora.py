"""QLoRA (Dettmers et al., 2023): LoRA adapters trained over a frozen, quantised base.

The base is quantised on the training device, layer by layer (`vlaforge.models.quantize`): bitsandbytes'
`Linear8bitLt` / `Linear4bit` (NF4) on CUDA, vlaforge's portable `Int8Linear` / `Int4Linear` elsewhere. peft
puts its own LoRA layers around the bitsandbytes ones (its `dispatch_bnb_8bit` / `dispatch_bnb_4bit`, which
it selects when the model says `is_loaded_in_8bit` / `is_loaded_in_4bit`); around the portable ones it puts
`QuantLoraLinear`, registered as a custom module (peft's `LoraConfig._register_custom_module`). Either way
the LLM's attention and MLP projections get adapters (`finetune.check_llm_adapted`), and a checkpoint holds
the adapters merged into the dequantised base, so the saved policy is plain and full precision.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from vlaforge.errors import InputError
from vlaforge.models.quantize import Int4Linear, Int8Linear, is_quantized_layer, quantize_policy

# The parts of a policy QLoRA quantises: the pretrained backbone. The state projection and the head are
# new for every fine-tune and train in full precision.
BASE_PARTS = ("vision", "projector", "llm")


class QuantLoraLinear(LoraLinear):
    """peft's LoRA Linear around a portable quantised layer: ``base(x) + B(A(x)) * alpha / r``.

    The forward, the adapters and their names are peft's; only merging in place is refused (the base holds
    integer codes), so a QLoRA policy is merged into a new full-precision layer instead
    (`finetune.merged_lora`).
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs: Any):
        with warnings.catch_warnings():  # peft warns for every layer type it does not know by name
            warnings.filterwarnings("ignore", message="Unsupported layer type")
            super().__init__(base_layer, adapter_name, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise InputError(
            "a LoRA adapter over a quantised layer cannot be merged in place; save the policy "
            "(adapters merged into the dequantised weights) or use vlaforge.train.finetune.merged_lora"
        )

    def unmerge(self) -> None:
        self.merge()


# peft's custom-module table: target layer type -> the LoRA layer that wraps it.
PORTABLE_LORA: dict[type[nn.Module], type[nn.Module]] = {
    Int8Linear: QuantLoraLinear,
    Int4Linear: QuantLoraLinear,
}


def quantize_base(policy: nn.Module, mode: str, device: torch.device) -> dict[str, Any]:
    """Quantises the policy's pretrained backbone (vision, projector, LLM) on `device`, in place.

    Returns `quantize_policy`'s summary. Raises InputError when no layer of the LLM was quantised (a
    group size that divides none of its widths, say): QLoRA would then be plain LoRA.
    """
    summary = quantize_policy(policy, mode, device=device, parts=BASE_PARTS)
    llm = [n for n, m in policy.backbone.llm.named_modules() if is_quantized_layer(m)]
    if not llm:
        raise InputError(
            f"--quantize {mode}: no Linear layer of the language model could be quantised "
            f"(skipped: {list(summary['skip_reasons'].items())[:3]})"
        )
    return summary


def prepare_lora(policy: nn.Module, config: Any, targets: list[str]) -> None:
    """Prepares `config` (a peft LoraConfig) and `policy` for adapters over quantised `targets`: registers
    `QuantLoraLinear` for the portable layers and flags the bitsandbytes ones, as peft's dispatch asks."""
    modules = dict(policy.named_modules())
    kinds = {type(modules[t]).__name__ for t in targets}
    if kinds & {"Int8Linear", "Int4Linear"}:
        config._register_custom_module(PORTABLE_LORA)
    if "Linear8bitLt" in kinds:
        policy.is_loaded_in_8bit = True
    if "Linear4bit" in kinds:
        policy.is_loaded_in_4bit = True


def upcast_adapters(policy: nn.Module) -> None:
    """Trainable parameters in float32 (peft gives adapters the base's compute dtype, bfloat16 for a
    bitsandbytes base): AdamW's small updates would round away in bfloat16. Autocast runs the matmuls."""
    for p in policy.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
