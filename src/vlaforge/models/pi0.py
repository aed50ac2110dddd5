"""pi0 (Black et al., 2024, "pi0: A Vision-Language-Action Flow Model for General Robot Control").

A PaliGemma VLM (SigLIP So400m/14 + Gemma 2B) and a smaller Gemma "action expert" (300M) run as one
transformer: in every layer each stream applies its own norms, q/k/v/o projections and MLP, and attention
is computed once over the concatenated sequence [images, prompt | state, actions]. The expert predicts
the flow-matching velocity of a noisy action chunk, integrated with Euler steps at inference.

Constants and layout follow openpi (`models/pi0.py`, `gemma.py`, `siglip.py`, `models_pytorch/`) and
LeRobot 0.4's `policies/pi0` (whose `model.safetensors` keys this module's state dict reproduces without
the leading `model.`):
- mask: openpi's `ar_mask` rule, a token attends to valid tokens whose cumulative ar_mask is <= its own;
  the prefix (images, prompt) is one bidirectional block, the state token starts a block, the first
  action token starts another (actions attend to each other, to the state and to the prefix);
- position ids: cumulative sum of the valid mask minus one (padding does not advance positions);
- Gemma: RMSNorm with (1 + w), eps 1e-6; prompt embeddings times sqrt(width) (image tokens are not
  scaled: the projector output goes in as is, as openpi's PyTorch port does); GELU-tanh gated MLP;
  rotary embeddings (theta 1e4) on q and k; softmax in float32; masked logits set to -2.3819763e38;
- time: sin/cos of t over periods log-spaced from 4e-3 to 4.0, concatenated with action_in_proj(x_t),
  then action_time_mlp_in -> swish -> action_time_mlp_out;
- flow: x_t = t noise + (1 - t) actions, target u = noise - actions, loss = (u - v)^2 per element,
  t = 0.999 Beta(1.5, 1) + 0.001; inference integrates from t = 1 to 0 with dt = -1 / steps;
- inference computes the prefix's keys and values once (`use_cache=True`) and runs only the expert per
  step; `use_cache=False` reruns the whole joint model each step (the two agree).

The modules are transformers' `PaliGemmaForConditionalGeneration` and `GemmaForCausalLM` (random init;
the expert's token embedding removed, as LeRobot does) for their parameters and names; the joint forward
is written here.

pi0.5's time conditioning is an option (`Pi0Config.adarms_time`, openpi's `pi05` suffix and `gemma.py`
adaptive `RMSNorm`): the time goes through time_mlp_in -> swish -> time_mlp_out -> swish to a condition c
(B, We); every RMSNorm of the expert (before attention, before the MLP, final) computes
rms(x) * (1 + scale) + shift with (scale, shift, gate) = dense(c) (a W -> 3W linear, zero-initialised), and
the expert's two residuals become x + y * gate; the action tokens are action_in_proj(x_t) alone. The state
keeps pi0's continuous token (pi0.5's discrete state tokens in the prompt are not implemented).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlaforge.errors import InputError

MASK_VALUE = -2.3819763e38  # openpi's additive attention mask for excluded positions
ROPE_THETA = 10_000.0
RMS_EPS = 1e-6


@dataclass(frozen=True)
class GemmaSize:
    """A Gemma variant (openpi `gemma.get_config`)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class SiglipSize:
    """A SigLIP vision tower (openpi `siglip.py` "So400m/14")."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch: int


GEMMA_VARIANTS: dict[str, GemmaSize] = {
    "gemma_2b": GemmaSize(2048, 18, 16_384, 8, 1, 256),
    "gemma_300m": GemmaSize(1024, 18, 4096, 8, 1, 256),
    "dummy": GemmaSize(64, 4, 128, 8, 1, 16),  # openpi's test variant
    # vlaforge's CPU-test sizes (not LeRobot variants; written to config.json only by tiny checkpoints)
    "gemma_tiny": GemmaSize(64, 2, 128, 4, 1, 16),
    "gemma_tiny_expert": GemmaSize(32, 2, 64, 4, 1, 16),
}
SIGLIP_VARIANTS: dict[str, SiglipSize] = {
    "So400m/14": SiglipSize(1152, 27, 4304, 16, 14),
    "tiny": SiglipSize(32, 2, 64, 4, 14),
}
PALIGEMMA_VOCAB = 257_152

# LeRobot 0.4 `PI0Config` fields the model does not read, with their defaults: a config made here
# (`Pi0Config.tiny()`) carries them so its config.json is complete.
LEROBOT_DEFAULTS: dict[str, Any] = {
    "n_obs_steps": 1,
    "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
    "empty_cameras": 0,
    "rtc_config": None,
    "gradient_checkpointing": False,
    "compile_model": False,
    "compile_mode": "max-autotune",
    "freeze_vision_encoder": False,
    "train_expert_only": False,
    "optimizer_lr": 2.5e-5,
    "optimizer_betas": [0.9, 0.95],
    "optimizer_eps": 1e-8,
    "optimizer_weight_decay": 0.01,
    "optimizer_grad_clip_norm": 1.0,
    "scheduler_warmup_steps": 1000,
    "scheduler_decay_steps": 30000,
    "scheduler_decay_lr": 2.5e-6,
}


def _variant(table: dict[str, Any], name: str, key: str) -> Any:
    from vlaforge.errors import did_you_mean

    if name not in table:
        raise InputError(f"config.json {key}: unknown variant {name!r}{did_you_mean(name, table)}")
    return table[name]


@dataclass
class Pi0Config:
    """pi0's configuration: LeRobot 0.4's `PI0Config` fields that shape the model (names and defaults as
    there) plus the rest of config.json kept verbatim in `extra`.

    Attributes:
        paligemma_variant, action_expert_variant: Gemma sizes (`GEMMA_VARIANTS`).
        vision_variant: SigLIP size (vlaforge's key; So400m/14 for every LeRobot checkpoint).
        vocab_size: the VLM's vocabulary (vlaforge's key; PaliGemma's 257152 otherwise).
        chunk_size: actions predicted per call (openpi's action_horizon); n_action_steps executed.
        max_state_dim, max_action_dim: state and actions are zero-padded to these.
        num_inference_steps: Euler steps at inference.
        time_sampling_*: t = scale * Beta(alpha, beta) + offset during training.
        min_period, max_period: the sinusoidal time embedding's periods.
        image_resolution: (height, width) of every image (square).
        tokenizer_max_length: prompt tokens (padded to this by the caller).
        adarms_time: pi0.5's time conditioning (adaptive RMSNorm in the expert, see the module docstring)
            instead of pi0's action-time MLP (vlaforge's key, written only when true).
        dtype: "float32" (only float32 is implemented here).
        extra: every other config.json key, written back unchanged.
    """

    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    vision_variant: str = "So400m/14"
    vocab_size: int = PALIGEMMA_VOCAB
    dtype: str = "float32"
    chunk_size: int = 50
    n_action_steps: int = 50
    max_state_dim: int = 32
    max_action_dim: int = 32
    num_inference_steps: int = 10
    time_sampling_beta_alpha: float = 1.5
    time_sampling_beta_beta: float = 1.0
    time_sampling_scale: float = 0.999
    time_sampling_offset: float = 0.001
    min_period: float = 4e-3
    max_period: float = 4.0
    image_resolution: tuple[int, int] = (224, 224)
    tokenizer_max_length: int = 48
    adarms_time: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    # keys vlaforge adds to config.json only when they differ from LeRobot's fixed values
    _VLAFORGE_KEYS = ("vision_variant", "vocab_size", "adarms_time")

    def __post_init__(self) -> None:
        self.image_resolution = tuple(int(x) for x in self.image_resolution)  # type: ignore[assignment]
        vlm, expert = self.vlm_size, self.expert_size
        vis = self.vision_size
        if (vlm.num_heads, vlm.num_kv_heads, vlm.head_dim, vlm.depth) != (
            expert.num_heads,
            expert.num_kv_heads,
            expert.head_dim,
            expert.depth,
        ):
            raise InputError(
                f"config.json: {self.paligemma_variant} and {self.action_expert_variant} must share heads, "
                "head_dim and depth to attend jointly"
            )
        h, w = self.image_resolution
        if h != w or h % vis.patch:
            raise InputError(
                f"config.json image_resolution {list(self.image_resolution)}: pi0 takes square images "
                f"whose side is a multiple of the patch size {vis.patch}"
            )
        if self.n_action_steps > self.chunk_size:
            raise InputError(
                f"config.json: n_action_steps {self.n_action_steps} exceeds chunk_size {self.chunk_size}"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise InputError(f"config.json dtype {self.dtype!r}: expected 'float32' or 'bfloat16'")

    @property
    def vlm_size(self) -> GemmaSize:
        return _variant(GEMMA_VARIANTS, self.paligemma_variant, "paligemma_variant")

    @property
    def expert_size(self) -> GemmaSize:
        return _variant(GEMMA_VARIANTS, self.action_expert_variant, "action_expert_variant")

    @property
    def vision_size(self) -> SiglipSize:
        return _variant(SIGLIP_VARIANTS, self.vision_variant, "vision_variant")

    @classmethod
    def from_lerobot(cls, cfg: dict[str, Any]) -> Pi0Config:
        """From LeRobot's pi0 config.json dict; keys this class does not model go to `extra`."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in cfg.items() if k in names}
        return cls(**known, extra={k: v for k, v in cfg.items() if k not in names})

    def to_lerobot(self) -> dict[str, Any]:
        """LeRobot's config.json dict (`from_lerobot(d).to_lerobot() == d` for a LeRobot config)."""
        out: dict[str, Any] = {"type": "pi0", **self.extra}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in self._VLAFORGE_KEYS and value == f.default:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def tiny(cls) -> Pi0Config:
        """A CPU-test size: Gemma widths 64 / 32, 2 layers, 4 heads of 16; SigLIP width 32, 2 layers;
        28 px images (4 patches); vocabulary 128; chunks of 4 actions."""
        return cls(
            paligemma_variant="gemma_tiny",
            action_expert_variant="gemma_tiny_expert",
            vision_variant="tiny",
            vocab_size=128,
            chunk_size=4,
            n_action_steps=4,
            max_state_dim=8,
            max_action_dim=8,
            image_resolution=(28, 28),
            tokenizer_max_length=16,
            extra=dict(LEROBOT_DEFAULTS),
        )


# ----------------------------------------------------------------------------------------- helpers


def sincos_time(t: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """(B,) -> (B, dim): [sin(2 pi t / p), cos(2 pi t / p)] over periods p log-spaced min..max (float64
    where the device has it, as openpi)."""
    dtype = torch.float32 if t.device.type == "mps" else torch.float64
    frac = torch.linspace(0.0, 1.0, dim // 2, dtype=dtype, device=t.device)
    period = min_period * (max_period / min_period) ** frac
    x = t.to(dtype)[:, None] * (2 * math.pi / period)[None]
    return torch.cat([torch.sin(x), torch.cos(x)], dim=-1).to(t.dtype)


def attention_mask_2d(pad: Tensor, ar: Tensor) -> Tensor:
    """(B, N) valid mask and (B, N) ar_mask -> (B, N, N) bool: query i sees key j when j is valid, i is
    valid and cumsum(ar)[j] <= cumsum(ar)[i] (big_vision / openpi)."""
    cum = torch.cumsum(ar.long(), dim=1)
    return (cum[:, None, :] <= cum[:, :, None]) & pad[:, None, :] & pad[:, :, None]


def rms_norm(x: Tensor, weight: Tensor, eps: float = RMS_EPS, shift: Tensor | None = None) -> Tensor:
    """Gemma's RMSNorm: x / rms(x) * (1 + w) (+ shift, pi0.5's adaptive form), computed in float32."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + weight.float())
    return (y if shift is None else y + shift.float()).to(x.dtype)


class AdaRMSNorm(nn.Module):
    """pi0.5's adaptive RMSNorm of the action expert: `dense` maps the time condition (B, cond) to a
    (scale, shift, gate) triple of width `dim` each, zero-initialised (so it starts as a plain rms(x))."""

    def __init__(self, dim: int, cond: int):
        super().__init__()
        self.dense = nn.Linear(cond, 3 * dim)
        nn.init.zeros_(self.dense.weight)
        nn.init.zeros_(self.dense.bias)


def norm(module: nn.Module, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """A Gemma RMSNorm (`rms_norm`, no gate) or an `AdaRMSNorm` under `cond` (B, cond) -> (normed, gate)."""
    if not isinstance(module, AdaRMSNorm):
        return rms_norm(x, module.weight), None
    if cond is None:
        raise ValueError("an adaptive RMSNorm needs its time condition")
    scale, shift, gate = module.dense(cond)[:, None].chunk(3, dim=-1)  # (B, 1, dim) each
    return rms_norm(x, scale, shift=shift), gate


def _gated(x: Tensor, y: Tensor, gate: Tensor | None) -> Tensor:
    return x + y if gate is None else x + y * gate


def rope(x: Tensor, pos: Tensor) -> Tensor:
    """Rotary embedding on (B, heads, T, hd) at integer positions (B, T): halves rotated."""
    hd = x.shape[-1]
    inv = 1.0 / ROPE_THETA ** (torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd)
    ang = pos.float()[:, None, :, None] * inv  # (B, 1, T, hd/2)
    cos, sin = torch.cos(ang), torch.sin(ang)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def _mlp(mlp: nn.Module, x: Tensor) -> Tensor:
    return mlp.down_proj(F.gelu(mlp.gate_proj(x), approximate="tanh") * mlp.up_proj(x))


# ----------------------------------------------------------------------------------------- the model


class PaliGemmaWithExpert(nn.Module):
    """The VLM (`paligemma`) and the action expert (`gemma_expert`) and their joint forward."""

    def __init__(self, cfg: Pi0Config):
        super().__init__()
        from transformers import (
            GemmaConfig,
            GemmaForCausalLM,
            PaliGemmaConfig,
            PaliGemmaForConditionalGeneration,
        )

        vlm, exp, vis = cfg.vlm_size, cfg.expert_size, cfg.vision_size

        def gemma(size: GemmaSize, vocab: int) -> dict[str, Any]:
            return dict(
                hidden_size=size.width,
                num_hidden_layers=size.depth,
                intermediate_size=size.mlp_dim,
                num_attention_heads=size.num_heads,
                num_key_value_heads=size.num_kv_heads,
                head_dim=size.head_dim,
                vocab_size=vocab,
                hidden_activation="gelu_pytorch_tanh",
                rms_norm_eps=RMS_EPS,
                rope_theta=ROPE_THETA,
            )

        pcfg = PaliGemmaConfig(
            text_config={"model_type": "gemma", **gemma(vlm, cfg.vocab_size)},
            vision_config={
                "model_type": "siglip_vision_model",
                "hidden_size": vis.width,
                "intermediate_size": vis.mlp_dim,
                "num_hidden_layers": vis.depth,
                "num_attention_heads": vis.num_heads,
                "patch_size": vis.patch,
                "image_size": cfg.image_resolution[0],
                "projection_dim": vlm.width,
                "hidden_act": "gelu_pytorch_tanh",
                "layer_norm_eps": 1e-6,
                "vision_use_head": False,
            },
            image_token_index=cfg.vocab_size,
            projection_dim=vlm.width,
        )
        pcfg.vision_config._attn_implementation = "eager"
        self.paligemma = PaliGemmaForConditionalGeneration(pcfg)
        # LeRobot 0.4's keys (transformers 4.5x) have SigLIP under `vision_tower.vision_model`
        tower = nn.Module()
        tower.vision_model = self.paligemma.model.vision_tower
        self.paligemma.model.vision_tower = tower
        self.gemma_expert = GemmaForCausalLM(GemmaConfig(**gemma(exp, cfg.vocab_size)))
        self.gemma_expert.model.embed_tokens = None  # the expert reads embeddings, never tokens
        if cfg.adarms_time:  # pi0.5: every expert norm modulated by the time condition (width We)
            em = self.gemma_expert.model
            for layer in em.layers:
                layer.input_layernorm = AdaRMSNorm(exp.width, exp.width)
                layer.post_attention_layernorm = AdaRMSNorm(exp.width, exp.width)
            em.norm = AdaRMSNorm(exp.width, exp.width)
        self.num_heads, self.head_dim = vlm.num_heads, vlm.head_dim
        self.tie_weights()
        self.register_load_state_dict_post_hook(PaliGemmaWithExpert._retie)

    def tie_weights(self, from_head: bool = False) -> None:
        """The VLM's output layer is its token embedding (one Parameter under both names), as in
        transformers; LeRobot's files store it once, as `paligemma.lm_head.weight`."""
        emb, head = self.paligemma.model.language_model.embed_tokens, self.paligemma.lm_head
        if from_head:
            emb.weight = head.weight
        else:
            head.weight = emb.weight

    @staticmethod
    def _retie(module: PaliGemmaWithExpert, incompatible: Any) -> None:
        """After a load: a file holding the tensor once (as lm_head) fills the embedding, and a load with
        assign=True, which puts a new Parameter under each name, is tied again."""
        missing = [k for k in incompatible.missing_keys if k.endswith("language_model.embed_tokens.weight")]
        for k in missing:
            incompatible.missing_keys.remove(k)
        module.tie_weights(from_head=bool(missing))

    @property
    def streams(self) -> tuple[nn.Module, nn.Module]:
        """(VLM language model, expert model), each with `.layers` and `.norm`."""
        return self.paligemma.model.language_model, self.gemma_expert.model

    def embed_image(self, img: Tensor) -> Tensor:
        """(B, 3, R, R) in [-1, 1] -> (B, patches, width): SigLIP's last hidden state, projected."""
        feats = self.paligemma.model.vision_tower.vision_model(pixel_values=img).last_hidden_state
        return self.paligemma.model.multi_modal_projector(feats)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        # the table itself: transformers' Gemma embedding multiplies by its own (dtype-rounded) scale
        weight = self.paligemma.model.language_model.embed_tokens.weight
        return F.embedding(tokens, weight) * math.sqrt(weight.shape[-1])

    def forward(
        self,
        embeds: list[Tensor | None],
        mask: Tensor,
        pos: Tensor,
        past: list[tuple[Tensor, Tensor]] | None = None,
        use_cache: bool = False,
        hidden: list | None = None,
        cond: Tensor | None = None,
    ) -> tuple[list[Tensor | None], list[tuple[Tensor, Tensor]] | None]:
        """Joint layers over the present streams.

        Args:
            embeds: [prefix (B, Tp, Wv) or None, suffix (B, Ts, We) or None].
            mask: (B, T, K) bool, queries = the present tokens, keys = cached + present.
            pos: (B, T) position ids of the present tokens.
            past: per layer (k, v) (B, kv_heads, Tc, hd) of earlier tokens (the prefix), after rope.
            use_cache: return the present tokens' (k, v) per layer.
            hidden: if a list, each layer's input per stream is appended (tests).
            cond: (B, We) the expert's time condition when its norms are adaptive (`adarms_time`).
        Returns:
            the final-normed outputs per stream (None where absent) and the cache (or None).
        """
        models = self.streams
        live = [i for i, x in enumerate(embeds) if x is not None]
        xs = {i: embeds[i] for i in live}
        B = pos.shape[0]
        nh, hd = self.num_heads, self.head_dim
        bias = torch.where(mask[:, None], 0.0, MASK_VALUE)  # (B, 1, T, K)
        cache = [] if use_cache else None
        for li in range(len(models[0].layers)):
            if hidden is not None:
                hidden.append([xs.get(0), xs.get(1)])
            qs, ks, vs, lens, gates = [], [], [], [], []
            for i in live:
                att = models[i].layers[li].self_attn
                h, gate = norm(models[i].layers[li].input_layernorm, xs[i], cond if i == 1 else None)
                gates.append(gate)
                T = h.shape[1]
                lens.append(T)
                qs.append(att.q_proj(h).view(B, T, -1, hd).transpose(1, 2))  # (B, nh, T, hd)
                ks.append(att.k_proj(h).view(B, T, -1, hd).transpose(1, 2))  # (B, nkv, T, hd)
                vs.append(att.v_proj(h).view(B, T, -1, hd).transpose(1, 2))
            q = rope(torch.cat(qs, 2), pos)
            k = rope(torch.cat(ks, 2), pos)
            v = torch.cat(vs, 2)
            if cache is not None:
                cache.append((k, v))
            if past is not None:
                k = torch.cat([past[li][0], k], 2)
                v = torch.cat([past[li][1], v], 2)
            nkv = k.shape[1]
            qg = q.reshape(B, nkv, nh // nkv, q.shape[2], hd)  # heads grouped by their kv head
            logits = torch.einsum("bgrtd,bgsd->bgrts", qg.float(), k.float()) * hd**-0.5
            logits = logits.reshape(B, nh, q.shape[2], k.shape[2]) + bias
            probs = torch.softmax(logits, dim=-1).to(v.dtype)
            out = torch.einsum("bgrts,bgsd->bgrtd", probs.reshape(B, nkv, nh // nkv, *probs.shape[2:]), v)
            out = out.reshape(B, nh, q.shape[2], hd).transpose(1, 2).reshape(B, q.shape[2], nh * hd)
            start = 0
            for i, T, gate in zip(live, lens, gates, strict=True):
                layer = models[i].layers[li]
                x = _gated(xs[i], layer.self_attn.o_proj(out[:, start : start + T]), gate)
                start += T
                h, gate = norm(layer.post_attention_layernorm, x, cond if i == 1 else None)
                xs[i] = _gated(x, _mlp(layer.mlp, h), gate)
        outs: list[Tensor | None] = [None, None]
        for i in live:
            outs[i] = norm(models[i].norm, xs[i], cond if i == 1 else None)[0]
        return outs, cache


class Pi0Model(nn.Module):
    """pi0: `forward` -> per-element flow-matching loss, `sample_actions` -> an action chunk.

    Shapes: images a list of (B, 3, R, R) in [-1, 1], img_masks a list of (B,) bool, lang_tokens (B, L)
    long, lang_masks (B, L) bool (right padded), state (B, max_state_dim), actions (B, H, max_action_dim)
    with H = chunk_size.
    """

    def __init__(self, cfg: Pi0Config):
        super().__init__()
        self.config = cfg
        W = cfg.expert_size.width
        self.paligemma_with_expert = PaliGemmaWithExpert(cfg)
        self.state_proj = nn.Linear(cfg.max_state_dim, W)
        self.action_in_proj = nn.Linear(cfg.max_action_dim, W)
        self.action_out_proj = nn.Linear(W, cfg.max_action_dim)
        if cfg.adarms_time:  # pi0.5: the time conditions the expert's norms
            self.time_mlp_in = nn.Linear(W, W)
            self.time_mlp_out = nn.Linear(W, W)
        else:  # pi0: the time is mixed into every action token
            self.action_time_mlp_in = nn.Linear(2 * W, W)
            self.action_time_mlp_out = nn.Linear(W, W)

    # ------------------------------------------------------------------ embeddings
    def embed_prefix(
        self, images: list[Tensor], img_masks: list[Tensor], lang_tokens: Tensor, lang_masks: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(B, Tp, Wv) embeddings, (B, Tp) valid mask, (B, Tp) ar_mask (all 0: one bidirectional block)."""
        pw = self.paligemma_with_expert
        embs, pads = [], []
        for img, m in zip(images, img_masks, strict=True):
            e = pw.embed_image(img)  # (B, patches, Wv)
            embs.append(e)
            pads.append(m[:, None].expand(e.shape[0], e.shape[1]))
        embs.append(pw.embed_tokens(lang_tokens))
        pads.append(lang_masks)
        pad = torch.cat(pads, 1).bool()
        return torch.cat(embs, 1), pad, torch.zeros_like(pad)

    def embed_suffix(
        self, state: Tensor, x_t: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """[state token, H action tokens] (B, 1 + H, We), their valid mask, ar_mask [1, 1, 0, ...] and
        the expert's time condition (B, We) (None without `adarms_time`: the time is in the tokens)."""
        cfg = self.config
        B, H = x_t.shape[:2]
        st = self.state_proj(state.float())[:, None]  # (B, 1, We)
        temb = sincos_time(t, self.action_in_proj.out_features, cfg.min_period, cfg.max_period)
        a = self.action_in_proj(x_t)  # (B, H, We)
        if cfg.adarms_time:
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb.to(a.dtype)))))
            at = a
        else:
            cond = None
            at = torch.cat([a, temb[:, None].expand_as(a).to(a.dtype)], dim=-1)
            at = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(at)))
        embs = torch.cat([st, at], 1)
        pad = torch.ones(B, 1 + H, dtype=torch.bool, device=embs.device)
        ar = torch.zeros_like(pad)
        ar[:, :2] = True
        return embs, pad, ar, cond

    # ------------------------------------------------------------------ training
    def sample_time(self, B: int, device: torch.device) -> Tensor:
        cfg = self.config
        beta = torch.distributions.Beta(
            torch.tensor(cfg.time_sampling_beta_alpha, device=device),
            torch.tensor(cfg.time_sampling_beta_beta, device=device),
        )
        return beta.sample((B,)) * cfg.time_sampling_scale + cfg.time_sampling_offset

    def velocity(
        self,
        prefix: tuple[Tensor, Tensor, Tensor],
        state: Tensor,
        x_t: Tensor,
        t: Tensor,
        hidden: list | None = None,
    ) -> Tensor:
        """v(x_t, t) (B, H, max_action_dim) from the whole joint model (no cache)."""
        p_emb, p_pad, p_ar = prefix
        s_emb, s_pad, s_ar, cond = self.embed_suffix(state, x_t, t)
        pad = torch.cat([p_pad, s_pad], 1)
        mask = attention_mask_2d(pad, torch.cat([p_ar, s_ar], 1))
        pos = torch.cumsum(pad.long(), 1) - 1
        (_, out), _ = self.paligemma_with_expert([p_emb, s_emb], mask, pos, hidden=hidden, cond=cond)
        return self.action_out_proj(out[:, -x_t.shape[1] :].float())

    def forward(
        self,
        images: list[Tensor],
        img_masks: list[Tensor],
        lang_tokens: Tensor,
        lang_masks: Tensor,
        state: Tensor,
        actions: Tensor,
        noise: Tensor | None = None,
        time: Tensor | None = None,
    ) -> Tensor:
        """Per-element loss (B, H, max_action_dim): (noise - actions - v(x_t, t))^2."""
        B = actions.shape[0]
        if noise is None:
            noise = torch.randn_like(actions)
        if time is None:
            time = self.sample_time(B, actions.device)
        tt = time[:, None, None].to(actions.dtype)
        x_t = tt * noise + (1 - tt) * actions
        u = noise - actions
        v = self.velocity(self.embed_prefix(images, img_masks, lang_tokens, lang_masks), state, x_t, time)
        return F.mse_loss(v, u.float(), reduction="none")

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample_actions(
        self,
        images: list[Tensor],
        img_masks: list[Tensor],
        lang_tokens: Tensor,
        lang_masks: Tensor,
        state: Tensor,
        noise: Tensor | None = None,
        num_steps: int | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Actions (B, H, max_action_dim): Euler from x = noise at t = 1 to t = 0, dt = -1 / num_steps."""
        cfg = self.config
        steps = int(num_steps or cfg.num_inference_steps)
        B = state.shape[0]
        if noise is None:
            noise = torch.randn(B, cfg.chunk_size, cfg.max_action_dim, device=state.device)
        prefix = self.embed_prefix(images, img_masks, lang_tokens, lang_masks)
        step = self._cached_velocity(prefix, state) if use_cache else None
        x, dt = noise.float(), -1.0 / steps
        for i in range(steps):
            t = torch.full((B,), 1.0 + i * dt, device=x.device)
            v = step(x, t) if step is not None else self.velocity(prefix, state, x, t)
            x = x + dt * v
        return x

    def _cached_velocity(self, prefix: tuple[Tensor, Tensor, Tensor], state: Tensor):
        """v(x, t) that runs only the expert over the prefix's cached keys and values."""
        p_emb, p_pad, p_ar = prefix
        pw = self.paligemma_with_expert
        p_mask = attention_mask_2d(p_pad, p_ar)
        _, cache = pw([p_emb, None], p_mask, torch.cumsum(p_pad.long(), 1) - 1, use_cache=True)
        offset = p_pad.long().sum(1, keepdim=True)

        def v(x: Tensor, t: Tensor) -> Tensor:
            s_emb, s_pad, s_ar, cond = self.embed_suffix(state, x, t)
            Ts = s_emb.shape[1]
            mask = torch.cat(
                [p_pad[:, None, :].expand(-1, Ts, -1), attention_mask_2d(s_pad, s_ar)], dim=2
            )  # (B, Ts, Tp + Ts)
            pos = offset + torch.cumsum(s_pad.long(), 1) - 1
            (_, out), _ = pw([None, s_emb], mask, pos, past=cache, cond=cond)
            return self.action_out_proj(out[:, -x.shape[1] :].float())

        return v


def parameter_parts(model: Pi0Model) -> dict[str, int]:
    """Parameter counts by part (each tensor once; tied tensors counted once)."""
    parts = {"siglip": 0, "projector": 0, "gemma_vlm": 0, "expert": 0, "projections": 0}
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen:
            continue
        seen.add(id(p))
        if ".vision_tower." in name:
            parts["siglip"] += p.numel()
        elif ".multi_modal_projector." in name:
            parts["projector"] += p.numel()
        elif ".paligemma." in name:
            parts["gemma_vlm"] += p.numel()
        elif ".gemma_expert." in name:
            parts["expert"] += p.numel()
        else:
            parts["projections"] += p.numel()
    return parts


__all__ = [
    "GEMMA_VARIANTS",
    "SIGLIP_VARIANTS",
    "Pi0Config",
    "Pi0Model",
    "attention_mask_2d",
    "parameter_parts",
    "sincos_time",
]
