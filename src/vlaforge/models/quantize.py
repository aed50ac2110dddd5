"""Weight-only quantisation of a policy's Linear layers, chosen at load time (int8 or int4).

OpenVLA (Kim et al., 2024) serves its 7B policy in 8 and 4 bits by loading it through bitsandbytes:
LLM.int8() (Dettmers et al., 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale")
and QLoRA's 4-bit NormalFloat (Dettmers et al., 2023, "QLoRA: Efficient Finetuning of Quantized LLMs").
`quantize_policy` does the same to a built `Policy`: every `nn.Linear` of `policy.backbone` (vision towers,
projector, LLM decoder) is replaced in place by a quantised layer. Only the weights are quantised;
activations, biases, norms and embeddings keep the model's dtype.

Two backends:

- ``bitsandbytes`` (CUDA): `bnb.nn.Linear8bitLt` (LLM.int8(), outlier threshold 6.0, transformers'
  default) and `bnb.nn.Linear4bit` (NF4, compute in the weight's dtype, no double quantisation: the
  `BitsAndBytesConfig` of OpenVLA's `vla-scripts/finetune.py`). ``auto`` picks it for CUDA weights.
- ``torch``: our own portable kernels, pure PyTorch on any device (the CPU's only choice).
  `Int8Linear` is symmetric per output channel (scale = absmax / 127 per row, codes in -127..127).
  `Int4Linear` is asymmetric per group of `group_size` input columns (scale = (max - min) / 15, and the
  group's minimum as its zero point: w ~ q * scale + min with q in 0..15, the layout of llama.cpp's Q4_1),
  two codes per byte. Both dequantise in the forward and call `F.linear`; the rounding error of every
  weight is at most scale / 2 (tests/models/test_quantize.py checks it layer by layer).

What stays in full precision, and why:

- the LLM's output layer (`get_output_embeddings()`): bitsandbytes' and transformers' default
  (`llm_int8_skip_modules` keeps `lm_head`), since the action tokens are read from its logits;
- every Linear inside an `nn.MultiheadAttention` (SigLIP's pooling head): its forward reads
  `out_proj.weight` directly instead of calling the layer, so a replacement would never run;
- for int4, layers whose `in_features` is not a multiple of `group_size` (the tiny preset's 6-input
  state projection, say): listed in the summary's "skipped" with the reason;
- LoRA adapters (peft's `lora_A` / `lora_B`) already injected: they are what trains; the base layers
  under them are quantised, which is QLoRA's arrangement;
- everything outside `policy.backbone`: the action head is small and is what a fine-tune trains.

On the CPU the portable kernels save memory, not time: each call dequantises the weight before the
matmul, so a quantised policy is slower than the full-precision one (bench/bench_quantize.py measures
by how much). `torch._weight_int8pack_mm` exists in torch 2.13's CPU build and was measured as a faster
int8 path. It is not used: in float32 it agrees with dequantise + matmul (to ~1e-6 relative) but is a
per-row loop: slower at one row, ~30x slower for a 300-token prefill. In bfloat16, the dtype it is
vectorised for (about 8x faster than dequantising at one row), it returned wrong values for some shapes
(8 or 40 inputs) and crashed the process for others (6, 13, 70 inputs), apparently because its oneDNN
kernel is generated once, for the first shape it sees.

Quantised policies serve, and they fine-tune under LoRA (QLoRA, `vlaforge.train.qlora`): the quantised
weights are buffers (or bitsandbytes parameters with requires_grad False), so nothing trains them, and LoRA
adapters wrap the quantised layers of either backend. Save the full-precision policy and quantise when
loading (`Policy.from_pretrained(dir, quantize="int8")`): a quantised state dict does not match the config;
`dequantize_layer` gives a layer's weight back in full precision (how a QLoRA checkpoint is merged).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlaforge.errors import InputError

QUANT_MODES = ("int8", "int4")
BACKENDS = ("auto", "torch", "bitsandbytes")

# Quantising works on blocks of rows of about this many weights (16 MB of float32 temporaries), so
# quantising a 4096 x 11008 layer needs a few such blocks of memory on top of the layer, not its copies.
_CHUNK_ELEMENTS = 1 << 22


def _rows_per_chunk(n_cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n_cols))


# ---------------------------------------------------------------------------------------------- int8
def quantize_int8(
    weight: torch.Tensor, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (N, K) float -> codes int8 (N, K) in -127..127 and scales (N,) in `dtype`.

    scale = absmax / 127 of each row (1 for an all-zero row, whose codes are then 0); codes are
    round(w / scale) with the scale as stored, so |w - code * scale| <= scale / 2. Computed in float32,
    one block of rows at a time.
    """
    dtype = dtype or weight.dtype
    N, K = weight.shape
    codes = torch.empty(N, K, dtype=torch.int8, device=weight.device)
    scales = torch.empty(N, dtype=dtype, device=weight.device)
    step = _rows_per_chunk(K)
    for r in range(0, N, step):
        w = weight[r : r + step].detach().float()  # (n, K)
        lo, hi = torch.aminmax(w, dim=1)
        absmax = torch.maximum(-lo, hi)
        s = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax)).to(dtype)
        scales[r : r + step] = s
        codes[r : r + step] = w.div(s.float()[:, None]).round_().clamp_(-127, 127)  # one temporary
    return codes, scales


class Int8Linear(nn.Module):
    """A Linear layer with int8 weights, one scale per output channel (portable, pure PyTorch).

    Buffers: `qweight` int8 (out, in) and `scales` (out,) in the layer's dtype; `bias` stays a parameter
    in its own dtype. Forward: `F.linear(x, qweight) * scales + bias`, i.e. the matmul with the dequantised
    weight `qweight * scales[:, None]`, with the per-row scale applied to the output (one pass over the
    weight fewer); float16 inputs dequantise first instead, since x @ codes could overflow float16.

    Args:
        in_features, out_features: the layer's sizes.
        bias: keep a bias.
        dtype: the dtype of the scales and bias (the original weight's).
        device: where the buffers live.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer(
            "qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantises `linear` (its bias parameter is kept as it is, shared with the original)."""
        w = linear.weight
        # built on the meta device: its placeholder buffers take no memory before the real ones replace them
        layer = cls(linear.in_features, linear.out_features, bias=False, dtype=w.dtype, device="meta")
        layer.qweight, layer.scales = quantize_int8(w)
        layer.bias = linear.bias
        return layer

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight the layer multiplies with, (out, in) in `dtype` (default: the scales' dtype)."""
        dtype = dtype or self.scales.dtype
        return self.qweight.to(dtype) * self.scales.to(dtype)[:, None]

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight, rebuilt on every access: for code that reads a Linear's weight (its dtype,
        device or values; `PrismaticBackbone` reads `projector.fc1.weight.dtype`). The forward does not
        use it."""
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if x.dtype == torch.float16:
            return F.linear(x, self.dequantize(x.dtype), bias)
        y = F.linear(x, self.qweight.to(x.dtype)) * self.scales.to(x.dtype)  # (..., out)
        return y if bias is None else y + bias

    def weight_bytes(self) -> int:
        """Bytes of the quantised weight: codes + scales (the bias is not counted)."""
        return _nbytes(self.qweight) + _nbytes(self.scales)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"int8 per output channel, dtype={self.scales.dtype}"
        )


# ---------------------------------------------------------------------------------------------- int4
def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in 0..15, (..., K) with K even -> (..., K / 2) uint8: column 2j in the low nibble of byte
    j, column 2j + 1 in the high one."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int4`: (..., K / 2) uint8 -> (..., K) uint8 codes in 0..15."""
    pairs = torch.stack((packed & 0x0F, packed >> 4), dim=-1)  # (..., K / 2, 2)
    return pairs.flatten(-2)


def quantize_int4(
    weight: torch.Tensor, group_size: int, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-wise asymmetric 4-bit: (N, K) float -> packed uint8 (N, K / 2), scales and zeros (N, K / g).

    Per group of `group_size` consecutive input columns of a row: scale = (max - min) / 15 (1 for a
    constant group), zero = min, code = round((w - zero) / scale) in 0..15 with the scale and zero as
    stored, so |w - (code * scale + zero)| <= scale / 2. Computed in float32, one block of rows at a time.
    """
    _check_group_size(group_size)
    dtype = dtype or weight.dtype
    N, K = weight.shape
    if K % group_size:
        raise InputError(f"a weight with {K} input columns does not split into groups of {group_size}")
    G = K // group_size
    packed = torch.empty(N, K // 2, dtype=torch.uint8, device=weight.device)
    scales = torch.empty(N, G, dtype=dtype, device=weight.device)
    zeros = torch.empty(N, G, dtype=dtype, device=weight.device)
    step = _rows_per_chunk(K)
    for r in range(0, N, step):
        w = weight[r : r + step].detach().float().view(-1, G, group_size)  # (n, G, g)
        lo, hi = torch.aminmax(w, dim=-1)  # (n, G)
        s = torch.where(hi > lo, (hi - lo) / 15.0, torch.ones_like(lo)).to(dtype)
        z = lo.to(dtype)
        q = w.sub(z.float()[..., None]).div_(s.float()[..., None]).round_().clamp_(0, 15).to(torch.uint8)
        scales[r : r + step], zeros[r : r + step] = s, z
        packed[r : r + step] = pack_int4(q.view(-1, K))
    return packed, scales, zeros


class Int4Linear(nn.Module):
    """A Linear layer with 4-bit weights, a scale and a zero point per group of input columns (portable).

    Buffers: `qweight` uint8 (out, in / 2), two codes per byte (`pack_int4`); `scales` and `zeros`
    (out, in / group_size) in the layer's dtype. Forward: unpack, dequantise `code * scale + zero`, then
    `F.linear`; `bias` stays a parameter in its own dtype.

    Args:
        in_features, out_features: the layer's sizes; `in_features` must be a multiple of `group_size`.
        group_size: input columns per group (even).
        bias: keep a bias.
        dtype: the dtype of the scales, zeros and bias (the original weight's).
        device: where the buffers live.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group_size: int = 128,
        bias: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        _check_group_size(group_size)
        if in_features % group_size:
            raise InputError(
                f"Int4Linear: in_features {in_features} is not a multiple of group_size {group_size}; "
                "pick a group size that divides it (or keep the layer in full precision)"
            )
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        G = in_features // group_size
        self.register_buffer(
            "qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device)
        )
        self.register_buffer("scales", torch.ones(out_features, G, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.zeros(out_features, G, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128) -> Int4Linear:
        """Quantises `linear` (its bias parameter is kept as it is, shared with the original)."""
        w = linear.weight
        layer = cls(
            linear.in_features, linear.out_features, group_size, bias=False, dtype=w.dtype, device="meta"
        )
        layer.qweight, layer.scales, layer.zeros = quantize_int4(w, group_size)
        layer.bias = linear.bias
        return layer

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight the layer multiplies with, (out, in) in `dtype` (default: the scales' dtype)."""
        dtype = dtype or self.scales.dtype
        N, K, g = self.out_features, self.in_features, self.group_size
        codes = unpack_int4(self.qweight).view(N, K // g, g).to(dtype)  # (N, G, g)
        w = torch.addcmul(self.zeros.to(dtype)[..., None], codes, self.scales.to(dtype)[..., None])
        return w.view(N, K)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight, rebuilt on every access (see `Int8Linear.weight`)."""
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize(x.dtype), bias)

    def weight_bytes(self) -> int:
        """Bytes of the quantised weight: packed codes + scales + zeros (the bias is not counted)."""
        return _nbytes(self.qweight) + _nbytes(self.scales) + _nbytes(self.zeros)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"int4 group_size={self.group_size}, dtype={self.scales.dtype}"
        )


# ---------------------------------------------------------------------------------------------- bitsandbytes
def _import_bnb() -> tuple[Any, str | None]:
    """(the bitsandbytes module or None, why it could not be imported)."""
    try:
        import bitsandbytes as bnb
    except Exception as e:  # ImportError, or a CUDA library bitsandbytes could not load
        return None, f"{type(e).__name__}: {e}"
    return bnb, None


def _bnb_layer(bnb: Any, linear: nn.Linear, mode: str) -> nn.Module:
    """A bitsandbytes layer holding `linear`'s weight, quantised on its CUDA device.

    As bitsandbytes documents: build the layer, give it the weight as `Int8Params` / `Params4bit`, then move
    it to the GPU, which is when it quantises. `Int8Params` quantises only on a move *from the CPU*, so the
    int8 weight goes through host memory, one layer at a time.
    """
    w = linear.weight.detach()
    device, has_bias = w.device, linear.bias is not None
    K, N = linear.in_features, linear.out_features
    if mode == "int8":
        layer = bnb.nn.Linear8bitLt(K, N, bias=has_bias, has_fp16_weights=False, threshold=6.0, device="meta")
        layer.weight = bnb.nn.Int8Params(w.cpu(), requires_grad=False, has_fp16_weights=False).cuda(device)
    else:
        layer = bnb.nn.Linear4bit(
            K,
            N,
            bias=has_bias,
            compute_dtype=w.dtype,
            compress_statistics=False,
            quant_type="nf4",
            device="meta",
        )
        layer.weight = bnb.nn.Params4bit(
            w, requires_grad=False, compress_statistics=False, quant_type="nf4"
        ).cuda(device)
    if has_bias:
        layer.bias = linear.bias
    layer.source_dtype = w.dtype  # the dtype `dequantize_layer` gives back (Int8Params keeps no record)
    return layer


def _bnb_weight_bytes(layer: nn.Module) -> int:
    """Codes + their statistics: the int8 row scales (`SCB`) or the 4-bit blocks' absmax."""
    w = layer.weight
    total = _nbytes(w)
    scb = getattr(w, "SCB", None)
    if isinstance(scb, torch.Tensor):
        total += _nbytes(scb)
    absmax = getattr(getattr(w, "quant_state", None), "absmax", None)
    if isinstance(absmax, torch.Tensor):
        total += _nbytes(absmax)
    return total


def layer_weight_bytes(layer: nn.Module) -> int:
    """Bytes of a Linear layer's weight as stored: quantised codes + statistics for the layers
    `quantize_policy` puts in (ours or bitsandbytes'), the plain weight for an `nn.Linear`; biases excluded."""
    if isinstance(layer, (Int8Linear, Int4Linear)):
        return layer.weight_bytes()
    if is_quantized_layer(layer):
        return _bnb_weight_bytes(layer)
    return _nbytes(layer.weight)


def dequantize_layer(layer: nn.Module) -> torch.Tensor:
    """The (out, in) weight a quantised layer multiplies with, in the dtype it was quantised from (ours or
    bitsandbytes'); a plain Linear's own weight."""
    if isinstance(layer, (Int8Linear, Int4Linear)):
        return layer.dequantize()
    if not is_quantized_layer(layer):
        return layer.weight.detach()
    bnb, why = _import_bnb()
    if bnb is None:
        raise InputError(f"dequantising a bitsandbytes layer needs bitsandbytes ({why})")
    w = layer.weight
    if type(w).__name__ == "Params4bit":
        return bnb.functional.dequantize_4bit(w.data, w.quant_state)
    scb = w.SCB if getattr(w, "SCB", None) is not None else layer.state.SCB  # LLM.int8(): w = CB * SCB / 127
    out = w.data.float() * scb.float().view(-1, 1) / 127.0
    return out.to(getattr(layer, "source_dtype", torch.float32))


# ---------------------------------------------------------------------------------------------- policy
def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _check_group_size(group_size: int) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise InputError(
            f"group_size must be an even integer >= 2 (two 4-bit codes share a byte), got {group_size!r}; "
            "128 is the usual choice"
        )


def is_quantized_layer(module: nn.Module) -> bool:
    """True for the layers `quantize_policy` puts in (ours or bitsandbytes')."""
    return isinstance(module, (Int8Linear, Int4Linear)) or type(module).__module__.startswith("bitsandbytes")


def _pick_backend(backend: str, device: torch.device) -> tuple[str, Any]:
    """("torch" or "bitsandbytes", the bnb module or None) for weights on `device`."""
    if backend == "torch":
        return "torch", None
    if backend == "auto" and device.type != "cuda":
        return "torch", None
    if device.type != "cuda":
        raise InputError(
            f"backend 'bitsandbytes' quantises on a CUDA GPU; the policy is on {device}. Move it to CUDA "
            "first, or use backend='torch' (portable kernels, any device)"
        )
    bnb, why = _import_bnb()
    if bnb is None:
        raise InputError(
            f"quantising on CUDA uses bitsandbytes, which could not be imported ({why}): "
            "pip install bitsandbytes, or pass backend='torch' for the portable (slower) kernels"
        )
    return "bitsandbytes", bnb


def quantize_policy(
    policy: nn.Module,
    mode: str,
    *,
    group_size: int = 128,
    backend: str = "auto",
    device: torch.device | str | None = None,
    parts: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Replaces, in place, the nn.Linear layers of `policy.backbone` by quantised layers.

    Covers the vision towers, the projector, the state projection and the LLM decoder; keeps the LLM's output
    layer, Linear layers inside an `nn.MultiheadAttention`, LoRA adapters and (int4) layers whose
    `in_features` is not a multiple of `group_size` in full precision, and touches nothing outside the
    backbone (see the module docstring for why). The quantised weights do not train (they are buffers, or
    bitsandbytes parameters with requires_grad False): a quantised policy serves, or trains LoRA adapters
    wrapped around these layers (QLoRA, `vlaforge.train.qlora`).

    Args:
        policy: a `Policy` (anything with a `.backbone` whose `.llm` is a transformers causal LM).
        mode: "int8" or "int4".
        group_size: input columns per int4 group of the portable kernels (even; 128 by default, the
            common choice of GPTQ/AWQ checkpoints). bitsandbytes' NF4 uses its own blocks of 64.
        backend: "auto" (bitsandbytes when the weights are on CUDA, else the portable kernels), "torch"
            (portable kernels on any device) or "bitsandbytes".
        device: where to quantise and keep the quantised layers (each layer's weight moves there alone, so
            a model larger than the device fits as long as its quantised form does); None: where the
            weights are. "auto" picks the backend for this device.
        parts: names of the backbone's submodules to quantise (e.g. ("vision", "projector", "llm") to keep
            the state projection, which a fine-tune trains, in full precision); None: the whole backbone.

    Returns:
        {"mode", "backend", "layers": number replaced, "weight_bytes_before" / "weight_bytes_after": bytes of
        those layers' weights before and after (codes + scales (+ zeros); biases are kept and not counted),
        "skipped": names (as in the policy's state dict) of the Linear layers kept in full precision,
        "skip_reasons": {name: why}}.

    Raises:
        InputError: an unknown mode or backend, a bad group size, a policy without `.backbone`, a policy
            that is already quantised, or CUDA weights without bitsandbytes under backend "auto".
    """
    if mode not in QUANT_MODES:
        raise InputError(f"unknown quantisation mode {mode!r}; choose one of {list(QUANT_MODES)}")
    if backend not in BACKENDS:
        raise InputError(f"unknown quantisation backend {backend!r}; choose one of {list(BACKENDS)}")
    _check_group_size(group_size)
    backbone = getattr(policy, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise InputError(
            f"quantize_policy needs a policy with a .backbone module (a vlaforge Policy); "
            f"{type(policy).__name__} has none"
        )
    done = [n for n, m in backbone.named_modules() if is_quantized_layer(m)]
    if done or getattr(policy, "quantization", None):
        mode_before = (getattr(policy, "quantization", None) or {}).get("mode", "quantised")
        raise InputError(
            f"this policy is already quantised ({mode_before}; e.g. backbone.{done[0] if done else '?'}); "
            "quantising twice would compound the rounding. Load the full-precision policy again and "
            "quantise it once"
        )

    llm = getattr(backbone, "llm", None)
    lm_head = (
        llm.get_output_embeddings() if llm is not None and hasattr(llm, "get_output_embeddings") else None
    )
    in_mha = {
        id(sub) for m in backbone.modules() if isinstance(m, nn.MultiheadAttention) for sub in m.modules()
    }

    targets: list[tuple[str, nn.Linear]] = []
    reasons: dict[str, str] = {}
    for name, module in backbone.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if parts is not None and name.split(".")[0] not in parts:
            continue
        full = f"backbone.{name}"
        if module is lm_head:
            reasons[full] = "the LLM's output layer (action logits) stays in full precision"
        elif id(module) in in_mha:
            reasons[full] = "inside nn.MultiheadAttention, whose forward reads the weight directly"
        elif {"lora_A", "lora_B"} & set(name.split(".")):
            reasons[full] = "a LoRA adapter: it trains, in full precision"
        elif mode == "int4" and module.in_features % group_size:
            reasons[full] = f"in_features {module.in_features} is not a multiple of group_size {group_size}"
        else:
            targets.append((name, module))

    if device is None:
        device = targets[0][1].weight.device if targets else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    chosen, bnb = _pick_backend(backend, device)

    before = after = 0
    with torch.no_grad():
        for name, linear in targets:
            before += _nbytes(linear.weight)
            linear = linear.to(device)  # one layer at a time: its full-precision copy is freed once quantised
            if chosen == "bitsandbytes":
                new = _bnb_layer(bnb, linear, mode)
            elif mode == "int8":
                new = Int8Linear.from_linear(linear)
            else:
                new = Int4Linear.from_linear(linear, group_size)
            after += layer_weight_bytes(new)
            parent_name, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent_name) if parent_name else backbone, child, new)

    summary = {
        "mode": mode,
        "backend": chosen,
        "layers": len(targets),
        "weight_bytes_before": before,
        "weight_bytes_after": after,
        "skipped": list(reasons),
        "skip_reasons": reasons,
    }
    policy.quantization = summary  # marks the policy, so a second call is refused
    return summary


__all__ = [
    "BACKENDS",
    "QUANT_MODES",
    "Int4Linear",
    "Int8Linear",
    "dequantize_layer",
    "is_quantized_layer",
    "layer_weight_bytes",
    "pack_int4",
    "quantize_int4",
    "quantize_int8",
    "quantize_policy",
    "unpack_int4",
]
