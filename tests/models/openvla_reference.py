"""An independent reference for OpenVLA's model math (the checkpoint writer is `openvla_checkpoint.py`).

This module is a test oracle. It is written from the published definitions of the pieces OpenVLA
(Kim et al., 2024, "OpenVLA: An Open-Source Vision-Language-Action Model") assembles, and deliberately
shares no code with vlaforge, timm or transformers' model classes (it imports only torch, numpy, PIL,
safetensors and tokenizers):

* the Vision Transformer (Dosovitskiy et al., 2021) in timm's pre-norm form, with the LayerScale of
  CaiT (Touvron et al., 2021) and the register tokens of "Vision Transformers Need Registers"
  (Darcet et al., 2024) as DINOv2 uses them (timm ``vit_*_reg4_dinov2``), and the SigLIP tower
  (Zhai et al., 2023; timm ``vit_so400m_patch14_siglip_224``);
* the Prismatic VLM (Karamcheti et al., 2024) feature extraction (the patch tokens of the
  second-to-last block, no final norm) and its GELU MLP projectors;
* Llama 2 (Touvron et al., 2023): RMSNorm (Zhang & Sennrich, 2019), rotary position embeddings
  (Su et al., 2021) in the Hugging Face "rotate_half" convention, grouped-query attention
  (Ainslie et al., 2023) and the SwiGLU MLP (Shazeer, 2020);
* OpenVLA's action de-tokenisation (256 uniform bins on [-1, 1] mapped onto the last 256 ids of the
  32000-token Llama vocabulary) and the q01/q99 un-normalisation.

Everything is computed in float32 from fp32 copies of the tensors as written (a bfloat16 checkpoint is
rounded to bfloat16 first), and the final decode / un-normalisation in float64 numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

LLAMA_BOS = 1
LLAMA_EOS = 2
LLAMA_EMPTY_TOKEN = 29871  # Llama's "▁" piece; OpenVLA appends it to the prompt before decoding actions
LLAMA_PAD = 32000
TEXT_VOCAB = 32064  # 32000 Llama tokens + <PAD>, padded to a multiple of 64
PAD_TO_MULTIPLE_OF = 64
N_ACTION_BINS = 256
VIT_LN_EPS = 1e-6
# Initialisation gains (std = gain / sqrt(fan_in)) of the written Llama's layer and lm_head weights. Below
# 1 so that the ~1e-6 relative differences two correct fp32 implementations have in their features grow
# to well under 1e-5 in the logits (about a quarter of assert_close(atol=1e-5, rtol=1e-5) against timm +
# transformers), while real mistakes (RoPE convention, tanh GELU, LayerScale, feature layer) still move
# the logits by 1e-3 .. 1.
LLM_GAIN = 0.7
LM_HEAD_GAIN = 0.35

# ImageNet statistics (DINOv2) and SigLIP's 0.5 / 0.5.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# Made-up timm ids for the tiny towers: {timm_id: (kind, num_heads)}, for a test to register with a loader.
TEST_TIMM_IDS: dict[str, tuple[str, int]] = {
    "test_dinov2_reg_tiny": ("dinov2_reg", 2),
    "test_siglip_tiny": ("siglip", 2),
}

# Words the written tokenizer knows (ids 3, 4, ...), chosen so that the whitespace-split pieces of
# f"In: What action should the robot take to {instruction.lower()}?\nOut:" are all known for every
# instruction in TEST_INSTRUCTIONS (the last word carries the "?": "block?").
PROMPT_WORDS: tuple[str, ...] = (
    "In:",
    "What",
    "action",
    "should",
    "the",
    "robot",
    "take",
    "to",
    "Out:",
    "pick",
    "up",
    "red",
    "block",
    "block?",
    "open",
    "drawer",
    "drawer?",
    "put",
    "spoon",
    "on",
    "towel",
    "towel?",
    "push",
    "button",
    "button?",
    "and",
    "place",
    "it",
    "shelf?",
    "?",
)
TEST_INSTRUCTIONS: tuple[str, ...] = (
    "pick up the red block",
    "Open the drawer",
    "put the spoon on the towel",
    "push the button",
)


def format_prompt(instruction: str) -> str:
    """OpenVLA's prompt (``PurePromptBuilder`` of the Llama-2 "pure" backbone)."""
    return f"In: What action should the robot take to {instruction.lower()}?\nOut:"


# --------------------------------------------------------------------------------------------------
# Elementary operations, each from its definition
# --------------------------------------------------------------------------------------------------


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x W^T + b (PyTorch's Linear convention: W has shape (out, in))."""
    y = x @ weight.T
    return y if bias is None else y + bias


def gelu_exact(x: torch.Tensor) -> torch.Tensor:
    """GELU (Hendrycks & Gimpel, 2016), exact form: x * Phi(x) = x/2 * (1 + erf(x / sqrt 2))."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU / swish: x * sigmoid(x) = x / (1 + exp(-x))."""
    return x / (1.0 + torch.exp(-x))


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x - max) / sum exp(x - max) along ``dim`` (max-shifted for stability; -inf entries give 0)."""
    z = x - x.amax(dim=dim, keepdim=True)
    e = torch.exp(z)
    return e / e.sum(dim=dim, keepdim=True)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = VIT_LN_EPS):
    """LayerNorm (Ba et al., 2016) over the last dim: (x - mean) / sqrt(biased var + eps) * w + b."""
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm (Zhang & Sennrich, 2019), as Llama: w * x / sqrt(mean(x^2) + eps), computed in fp32."""
    x32 = x.float()
    y = x32 / torch.sqrt((x32 * x32).mean(dim=-1, keepdim=True) + eps)
    return weight.float() * y.to(x.dtype)


def patch_embed(pixels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """ViT patch embedding: a p x p convolution with stride p, written as "cut into patches, then matmul".

    pixels (B, C, H, W), weight (D, C, p, p) -> tokens (B, (H/p)*(W/p), D) in row-major patch order
    (patch row first, then column), each patch flattened in the conv kernel's (C, p, p) order.
    """
    b, c, h, w = pixels.shape
    d, _, p, _ = weight.shape
    gh, gw = h // p, w // p
    pixels = pixels[:, :, : gh * p, : gw * p]  # a conv with stride p ignores a ragged border
    patches = pixels.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * p * p)
    return linear(patches, weight.reshape(d, c * p * p), bias)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, H*hd) -> (B, H, T, hd): head h owns channels [h*hd, (h+1)*hd)."""
    b, t, d = x.shape
    return x.reshape(b, t, n_heads, d // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, hd) -> (B, T, H*hd), the inverse of split_heads."""
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)


def scaled_dot_product_attention(q, k, v, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) [+ causal -inf mask]) v (Vaswani et al., 2017), per batch and head."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        tq, tk = scores.shape[-2:]
        future = torch.ones(tq, tk, dtype=torch.bool).triu(1 + tk - tq)
        scores = scores.masked_fill(future, float("-inf"))
    return softmax(scores.float(), dim=-1).to(q.dtype) @ v


# --------------------------------------------------------------------------------------------------
# Vision towers (timm ViTs as OpenVLA uses them)
# --------------------------------------------------------------------------------------------------


@dataclass
class RefTower:
    """One timm ViT tower. ``kind`` is "dinov2_reg" (class token + registers + LayerScale) or "siglip"."""

    kind: str
    timm_id: str
    hidden: int
    layers: int
    heads: int
    mlp: int
    patch: int
    registers: int = 0

    @property
    def n_prefix(self) -> int:
        """Tokens before the patches: DINOv2-reg has [cls, reg_1..R]; SigLIP has none."""
        return 1 + self.registers if self.kind == "dinov2_reg" else 0

    @property
    def mean(self) -> tuple[float, float, float]:
        return IMAGENET_MEAN if self.kind == "dinov2_reg" else SIGLIP_MEAN

    @property
    def std(self) -> tuple[float, float, float]:
        return IMAGENET_STD if self.kind == "dinov2_reg" else SIGLIP_STD


def default_dinov2_tower() -> RefTower:
    return RefTower("dinov2_reg", "test_dinov2_reg_tiny", 32, 3, 2, 128, 14, registers=4)


def default_siglip_tower() -> RefTower:
    return RefTower("siglip", "test_siglip_tiny", 48, 3, 2, 96, 14)


def vit_attention(x: torch.Tensor, s: dict, pre: str, n_heads: int) -> torch.Tensor:
    """timm ``Attention``: qkv = x W_qkv^T + b (rows: q, then k, then v), per-head softmax attention, proj."""
    d = x.shape[-1]
    qkv = linear(x, s[pre + "qkv.weight"], s[pre + "qkv.bias"])
    q, k, v = (split_heads(qkv[..., i * d : (i + 1) * d], n_heads) for i in range(3))
    out = merge_heads(scaled_dot_product_attention(q, k, v))
    return linear(out, s[pre + "proj.weight"], s[pre + "proj.bias"])


def vit_mlp(x: torch.Tensor, s: dict, pre: str) -> torch.Tensor:
    """timm ``Mlp``: fc2(GELU_exact(fc1(x)))."""
    h = gelu_exact(linear(x, s[pre + "fc1.weight"], s[pre + "fc1.bias"]))
    return linear(h, s[pre + "fc2.weight"], s[pre + "fc2.bias"])


def vit_block(x: torch.Tensor, s: dict, pre: str, n_heads: int, layer_scale: bool) -> torch.Tensor:
    """Pre-norm ViT block: x += ls1 * Attn(LN1(x)); x += ls2 * MLP(LN2(x)) (ls = 1 without LayerScale).

    OpenVLA renames timm's LayerScale parameter ``gamma`` to ``scale_factor``.
    """
    a = vit_attention(
        layer_norm(x, s[pre + "norm1.weight"], s[pre + "norm1.bias"]), s, pre + "attn.", n_heads
    )
    if layer_scale:
        a = a * s[pre + "ls1.scale_factor"]
    x = x + a
    m = vit_mlp(layer_norm(x, s[pre + "norm2.weight"], s[pre + "norm2.bias"]), s, pre + "mlp.")
    if layer_scale:
        m = m * s[pre + "ls2.scale_factor"]
    return x + m


def vit_tokens(pixels: torch.Tensor, s: dict, pre: str, tower: RefTower) -> torch.Tensor:
    """The token sequence entering block 0.

    Position embeddings are added to the patch tokens only (timm's ``no_embed_class``; SigLIP has no
    class token, so the same), then the prefix tokens are prepended: [cls, reg_1..reg_R, patches].
    """
    x = patch_embed(pixels, s[pre + "patch_embed.proj.weight"], s[pre + "patch_embed.proj.bias"])
    x = x + s[pre + "pos_embed"]
    if tower.kind == "dinov2_reg":
        b = x.shape[0]
        prefix = [s[pre + "cls_token"].expand(b, -1, -1)]
        if tower.registers:
            prefix.append(s[pre + "reg_token"].expand(b, -1, -1))
        x = torch.cat([*prefix, x], dim=1)
    return x


def tower_features(pixels: torch.Tensor, s: dict, pre: str, tower: RefTower) -> torch.Tensor:
    """Prismatic's features: the output of block L-2 (second to last), no final norm, prefix dropped.

    (timm ``get_intermediate_layers(n={L-2})``; the last block, ``norm`` and ``attn_pool`` are unused.)
    """
    x = vit_tokens(pixels, s, pre, tower)
    for i in range(tower.layers - 1):
        x = vit_block(x, s, f"{pre}blocks.{i}.", tower.heads, layer_scale=tower.kind == "dinov2_reg")
    return x[:, tower.n_prefix :]


def siglip_attn_pool(x: torch.Tensor, s: dict, pre: str, n_heads: int) -> torch.Tensor:
    """timm ``AttentionPoolLatent`` (the SigLIP MAP head; not part of OpenVLA's features, for completeness).

    A learned latent query attends over the tokens (kv rows: k then v), proj, then out += MLP(LN(out)).
    """
    b, _, d = x.shape
    q = split_heads(
        linear(s[pre + "latent"].expand(b, -1, -1), s[pre + "q.weight"], s[pre + "q.bias"]), n_heads
    )
    kv = linear(x, s[pre + "kv.weight"], s[pre + "kv.bias"])
    k, v = split_heads(kv[..., :d], n_heads), split_heads(kv[..., d:], n_heads)
    out = linear(
        merge_heads(scaled_dot_product_attention(q, k, v)), s[pre + "proj.weight"], s[pre + "proj.bias"]
    )
    out = out + vit_mlp(layer_norm(out, s[pre + "norm.weight"], s[pre + "norm.bias"]), s, pre + "mlp.")
    return out[:, 0]


# --------------------------------------------------------------------------------------------------
# Llama 2 decoder (Hugging Face parameter names)
# --------------------------------------------------------------------------------------------------


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables in the HF convention: inv_freq_j = theta^(-2j/hd), j < hd/2; angles duplicated [f, f].

    Computed in float64 from the definition, returned as float32 (T, hd).
    """
    j = torch.arange(head_dim // 2, dtype=torch.float64)
    inv_freq = theta ** (-2.0 * j / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return torch.cos(angles).float(), torch.sin(angles).float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the halves of the last dim."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x' = x cos + rotate_half(x) sin (x: (B, H, T, hd), cos/sin: (T, hd))."""
    return x * cos + rotate_half(x) * sin


def llama_attention(x: torch.Tensor, s: dict, pre: str, llm: dict, cos, sin) -> torch.Tensor:
    """Causal multi-head attention with RoPE on q and k, and K/V heads shared by groups of query heads."""
    n_h, n_kv = llm["heads"], llm["kv_heads"]
    q = split_heads(linear(x, s[pre + "q_proj.weight"]), n_h)
    k = split_heads(linear(x, s[pre + "k_proj.weight"]), n_kv)
    v = split_heads(linear(x, s[pre + "v_proj.weight"]), n_kv)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    group = n_h // n_kv  # query head h reads K/V head h // group
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = merge_heads(scaled_dot_product_attention(q, k, v, causal=True))
    return linear(out, s[pre + "o_proj.weight"])


def llama_mlp(x: torch.Tensor, s: dict, pre: str) -> torch.Tensor:
    """SwiGLU: down(silu(gate(x)) * up(x))."""
    return linear(
        silu(linear(x, s[pre + "gate_proj.weight"])) * linear(x, s[pre + "up_proj.weight"]),
        s[pre + "down_proj.weight"],
    )


def llama_logits(embeds: torch.Tensor, s: dict, llm: dict, prefix: str = "language_model.") -> torch.Tensor:
    """Llama-2 decoder on input embeddings (B, T, d) at positions 0..T-1 -> logits (B, T, V).

    h += Attn(RMSNorm(h)); h += MLP(RMSNorm(h)) per layer; final RMSNorm; lm_head (untied).
    """
    eps = llm["rms_norm_eps"]
    cos, sin = rotary_cos_sin(torch.arange(embeds.shape[1]), llm["hidden"] // llm["heads"], llm["rope_theta"])
    h = embeds
    for i in range(llm["layers"]):
        pre = f"{prefix}model.layers.{i}."
        h = h + llama_attention(
            rms_norm(h, s[pre + "input_layernorm.weight"], eps), s, pre + "self_attn.", llm, cos, sin
        )
        h = h + llama_mlp(rms_norm(h, s[pre + "post_attention_layernorm.weight"], eps), s, pre + "mlp.")
    h = rms_norm(h, s[prefix + "model.norm.weight"], eps)
    return linear(h, s[prefix + "lm_head.weight"])


# --------------------------------------------------------------------------------------------------
# OpenVLA action de-tokenisation
# --------------------------------------------------------------------------------------------------


def append_empty_token(ids: Sequence[int]) -> list[int]:
    """OpenVLA's predict_action: append Llama's "▁" (29871) unless the prompt already ends with it."""
    ids = [int(i) for i in ids]
    return ids if ids[-1] == LLAMA_EMPTY_TOKEN else [*ids, LLAMA_EMPTY_TOKEN]


def bin_centers(n_bins: int = N_ACTION_BINS) -> np.ndarray:
    """bins = linspace(-1, 1, n_bins); centres = midpoints of consecutive bins (n_bins - 1 values)."""
    bins = np.linspace(-1.0, 1.0, n_bins)
    return (bins[:-1] + bins[1:]) / 2.0


def ids_to_normalized(ids: Sequence[int], action_vocab: int = TEXT_VOCAB - PAD_TO_MULTIPLE_OF) -> np.ndarray:
    """id -> centres[clip(action_vocab - id - 1, 0, n_centres - 1)] (float64)."""
    centres = bin_centers()
    idx = np.clip(action_vocab - np.asarray(ids, dtype=np.int64) - 1, 0, centres.shape[0] - 1)
    return centres[idx]


def unnormalize(normalized: np.ndarray, action_stats: dict) -> np.ndarray:
    """where(mask, 0.5 (a + 1)(q99 - q01) + q01, a); mask defaults to all True (float64)."""
    high = np.asarray(action_stats["q99"], dtype=np.float64)
    low = np.asarray(action_stats["q01"], dtype=np.float64)
    mask = np.asarray(action_stats.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
    return np.where(mask, 0.5 * (normalized + 1.0) * (high - low) + low, normalized)


def decode_action_ids(ids: Sequence[int], action_stats: dict) -> np.ndarray:
    """OpenVLA's token ids -> un-normalised action."""
    return unnormalize(ids_to_normalized(ids), action_stats)


# --------------------------------------------------------------------------------------------------
# The reference model
# --------------------------------------------------------------------------------------------------


def _as_ids(input_ids) -> torch.Tensor:
    t = torch.as_tensor(input_ids, dtype=torch.long)
    return t[None] if t.ndim == 1 else t


@dataclass
class RefModel:
    """The reference OpenVLA: fp32 copies of the tensors as written, plus the configuration."""

    state: dict[str, torch.Tensor]
    config: dict
    towers: list[RefTower]
    image_size: int
    llm: dict
    dataset_statistics: dict
    directory: Path | None = None
    _tokenizer: object = field(default=None, repr=False)

    # --- processor -------------------------------------------------------------------------------

    def pixel_values(self, image) -> torch.Tensor:
        """PIL image or uint8 (H, W, 3) array -> (1, 3n, S, S) float32.

        Per tower: PIL bicubic resize to (S, S), to float / 255 in CHW, (x - mean) / std; towers stacked
        along channels (DINOv2 first).
        """
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError("expected a uint8 (H, W, 3) array")
            image = Image.fromarray(image)
        image = image.convert("RGB")
        s = self.image_size
        chans = []
        for tower in self.towers:
            arr = np.asarray(image.resize((s, s), Image.BICUBIC), dtype=np.uint8)
            x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0
            mean = torch.tensor(tower.mean, dtype=torch.float32)[:, None, None]
            std = torch.tensor(tower.std, dtype=torch.float32)[:, None, None]
            chans.append((x - mean) / std)
        return torch.cat(chans, dim=0)[None]

    def tokenizer(self):
        if self._tokenizer is None:
            if self.directory is None or not (Path(self.directory) / "tokenizer.json").exists():
                raise FileNotFoundError("no tokenizer.json was written for this reference model")
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(Path(self.directory) / "tokenizer.json"))
        return self._tokenizer

    def prompt_ids(self, instruction: str) -> list[int]:
        """[BOS] + the tokenizer's ids of OpenVLA's prompt (no other special tokens)."""
        enc = self.tokenizer().encode(format_prompt(instruction), add_special_tokens=False)
        return [LLAMA_BOS, *enc.ids]

    # --- model -----------------------------------------------------------------------------------

    @property
    def fused(self) -> bool:
        return len(self.towers) == 2

    @property
    def action_vocab(self) -> int:
        return self.llm["vocab_size"] - self.config["pad_to_multiple_of"]

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3n, S, S) -> (B, N, Dv): per-tower features (tower t reads channels [3t, 3t+3)), concatenated."""
        pixel_values = pixel_values.float()
        feats = []
        for t, tower in enumerate(self.towers):
            pre = "vision_backbone.featurizer." if t == 0 else "vision_backbone.fused_featurizer."
            feats.append(tower_features(pixel_values[:, 3 * t : 3 * t + 3], self.state, pre, tower))
        return torch.cat(feats, dim=-1)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Prismatic projector: fused fc3(GELU(fc2(GELU(fc1 x)))); single tower fc2(GELU(fc1 x))."""
        s = self.state
        h = gelu_exact(linear(features, s["projector.fc1.weight"], s["projector.fc1.bias"]))
        h = linear(h, s["projector.fc2.weight"], s["projector.fc2.bias"])
        if self.fused:
            h = linear(gelu_exact(h), s["projector.fc3.weight"], s["projector.fc3.bias"])
        return h

    def input_embeddings(self, pixel_values: torch.Tensor, input_ids) -> torch.Tensor:
        """[embed(BOS), projected patches, embed(input_ids[1:])] -> (B, 1 + N + T - 1, d)."""
        ids = _as_ids(input_ids)
        table = self.state["language_model.model.embed_tokens.weight"]
        patches = self.project(self.vision_features(pixel_values))
        if patches.shape[0] != ids.shape[0]:
            raise ValueError("pixel_values and input_ids batch sizes differ")
        return torch.cat([table[ids[:, :1]], patches, table[ids[:, 1:]]], dim=1)

    @torch.no_grad()
    def logits(self, pixel_values: torch.Tensor, input_ids) -> torch.Tensor:
        """Full-sequence logits (B, 1 + N + T - 1, V), float32."""
        return llama_logits(self.input_embeddings(pixel_values, input_ids), self.state, self.llm)

    def action_dim(self, unnorm_key: str | None = None) -> int:
        key = unnorm_key if unnorm_key is not None else next(iter(self.dataset_statistics))
        return len(self.dataset_statistics[key]["action"]["q01"])

    @torch.no_grad()
    def predict_ids(self, pixel_values: torch.Tensor, input_ids, unnorm_key: str | None = None) -> list[int]:
        """Greedy ids of the D action tokens, re-running the whole sequence each step (no cache)."""
        ids = _as_ids(input_ids)
        if ids.shape[0] != 1:
            raise ValueError("predict_ids takes one sample")
        seq = append_empty_token(ids[0].tolist())
        out = []
        for _ in range(self.action_dim(unnorm_key)):
            nxt = int(torch.argmax(self.logits(pixel_values, [seq])[0, -1]))
            out.append(nxt)
            seq.append(nxt)
        return out

    def predict_action(self, pixel_values: torch.Tensor, input_ids, unnorm_key: str) -> np.ndarray:
        """OpenVLA ``predict_action``: greedy ids -> bin centres -> q01/q99 un-normalisation, float64 (D,)."""
        ids = self.predict_ids(pixel_values, input_ids, unnorm_key)
        return decode_action_ids(ids, self.dataset_statistics[unnorm_key]["action"])
