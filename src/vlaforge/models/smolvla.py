"""SmolVLA (Shukor et al., 2025) as one torch module, with LeRobot 0.4's parameter names and model interface.

The model (`SmolVLAModel`, LeRobot's `VLAFlowMatching` plus its `SmolVLMWithExpertModel`):

- the VLM is SmolVLM2 (a SigLIP vision tower, a pixel-shuffle connector, a Llama language model) built with
  `transformers`' SmolVLM classes from a configuration (random weights, nothing downloaded), its language
  model cut to the first `num_vlm_layers` layers (16 of SmolVLM2-500M's 32). Each camera frame gives
  (image_size / patch_size)^2 / scale_factor^2 tokens (64 at 512 px, patch 16, scale factor 4), optionally
  framed by the image special tokens (`add_image_special_tokens`);
- prefix: [image tokens per camera] [prompt tokens] [state token]; image and prompt embeddings are scaled by
  sqrt(width), the state is a linear projection to the VLM width. Images and prompt attend to each other
  (bidirectional), the state token starts a block that sees them, the action tokens are causal among
  themselves and see the whole (unpadded) prefix; the prefix never sees the actions;
- the action expert is a Llama model at `expert_width_multiplier` (0.75) of the VLM width with the VLM's
  head count and head dim, MLP width `_intermediate_size`, as many layers as the kept VLM (or
  `num_expert_layers`, a divisor of it; VLM layer i then pairs with expert layer i // (n_vlm / n_expert) when
  i is a multiple of that ratio). Layer i is *self-attention* when i % self_attn_every_n_layers == 0
  (VLM and expert tokens in one attention under the joint mask) and *cross-attention* otherwise: the VLM
  attends over the prefix alone and the expert's k_proj / v_proj read that layer's VLM keys (after rotary)
  and values, its queries rotated with positions counted from 0;
- rotary embedding with wavelength 10000 (as LeRobot, whatever the VLM's rope_theta), positions the
  cumulative count of unpadded tokens;
- action tokens: MLP(concat(linear(x_t), sincos(t, period 4e-3 .. 4))) with SiLU;
- flow matching: t = 0.999 Beta(1.5, 1) + 0.001, x_t = t noise + (1 - t) actions, target u = noise -
  actions, per-element squared error; sampling: `num_steps` Euler steps from t = 1 with dt = -1/num_steps,
  the prefix's keys and values cached once (or, `use_cache=False`, the whole sequence recomputed each step).

Configuration: `SmolVLAConfig.from_lerobot(config.json dict)` / `.to_lerobot()`. LeRobot takes the VLM's
own configuration from the hub model `vlm_model_name`; vlaforge builds it offline: the published
SmolVLM2-500M values (`SMOLVLM2_500M`) when `vlm_model_name` is a SmolVLM2-500M model, or the dict stored
in config.json under `VLM_CONFIG_KEY` ("vlaforge_vlm_config", written by `SmolVLAConfig.tiny()` and by any
config with a non-default VLM). LeRobot itself does not know that key.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlaforge.errors import InputError

VLM_CONFIG_KEY = "vlaforge_vlm_config"

# HuggingFaceTB/SmolVLM2-500M-Video-Instruct's config.json (the values that shape the model).
SMOLVLM2_500M: dict[str, Any] = {
    "text_config": {
        "model_type": "llama",
        "vocab_size": 49280,
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "head_dim": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    },
    "scale_factor": 4,
    "image_token_id": 49190,
    "fake_image_token_id": 49189,  # <fake_token_around_image>
    "global_image_token_id": 49152,  # <global-img>
    "tie_word_embeddings": False,
}
SMOLVLM2_500M_NAMES = ("HuggingFaceTB/SmolVLM2-500M-Video-Instruct", "HuggingFaceTB/SmolVLM2-500M-Instruct")

# A tiny SmolVLM for tests: 4 text layers (2 kept), width 64, 4 heads / 2 KV heads; vision 2 layers, width
# 32, 64 px with patch 8 (64 patches), scale factor 2: 16 tokens per frame.
TINY_VLM: dict[str, Any] = {
    "text_config": {
        **SMOLVLM2_500M["text_config"],
        "vocab_size": 96,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 512,
    },
    "vision_config": {
        **SMOLVLM2_500M["vision_config"],
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 8,
    },
    "scale_factor": 2,
    "image_token_id": 90,
    "fake_image_token_id": 91,
    "global_image_token_id": 92,
    "tie_word_embeddings": False,
}


# The rest of LeRobot 0.4's smolvla config.json (PreTrainedConfig's fields and SmolVLAConfig's training
# ones) with LeRobot's defaults: a new config carries them, so the file it writes is complete.
LEROBOT_DEFAULTS: dict[str, Any] = {
    "n_obs_steps": 1,
    "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
    "input_features": {},
    "output_features": {},
    "device": None,
    "use_amp": False,
    "push_to_hub": True,
    "repo_id": None,
    "private": None,
    "tags": None,
    "license": None,
    "pretrained_path": None,
    "empty_cameras": 0,
    "adapt_to_pi_aloha": False,
    "use_delta_joint_actions_aloha": False,
    "optimizer_lr": 1e-4,
    "optimizer_betas": [0.9, 0.95],
    "optimizer_eps": 1e-8,
    "optimizer_weight_decay": 1e-10,
    "optimizer_grad_clip_norm": 10,
    "scheduler_warmup_steps": 1000,
    "scheduler_decay_steps": 30000,
    "scheduler_decay_lr": 2.5e-6,
    "rtc_config": None,
    "compile_model": False,
    "compile_mode": "max-autotune",
}


def _intermediate_size(width: int, multiplier: int = 4, multiple_of: int = 256) -> int:
    """The expert's MLP width (LeRobot's `get_intermediate_size`): 4 * (2/3 width) rounded up to 256."""
    h = int(multiplier * int(2 * width / 3))
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


@dataclass
class SmolVLAConfig:
    """The fields of LeRobot 0.4's smolvla config.json that shape the model (defaults LeRobot's);
    every other key is kept verbatim in `extra` and written back by `to_lerobot` (a config made here starts
    with LeRobot's defaults for them, `LEROBOT_DEFAULTS`)."""

    chunk_size: int = 50
    n_action_steps: int = 50
    max_state_dim: int = 32
    max_action_dim: int = 32
    resize_imgs_with_padding: tuple[int, int] | list[int] = (512, 512)
    tokenizer_max_length: int = 48
    num_steps: int = 10
    use_cache: bool = True
    freeze_vision_encoder: bool = True
    train_expert_only: bool = True
    train_state_proj: bool = True
    vlm_model_name: str = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
    load_vlm_weights: bool = False
    add_image_special_tokens: bool = False
    attention_mode: str = "cross_attn"
    prefix_length: int = -1
    pad_language_to: str = "longest"
    num_expert_layers: int = -1
    num_vlm_layers: int = 16
    self_attn_every_n_layers: int = 2
    expert_width_multiplier: float = 0.75
    min_period: float = 4e-3
    max_period: float = 4.0
    vlm_config: dict[str, Any] | None = None  # config.json's VLM_CONFIG_KEY; None: the published table
    extra: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(LEROBOT_DEFAULTS))

    @classmethod
    def _model_fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("vlm_config", "extra")]

    @classmethod
    def from_lerobot(cls, d: dict[str, Any]) -> SmolVLAConfig:
        d = dict(d)
        names = cls._model_fields()
        kw = {k: d.pop(k) for k in names if k in d}
        vlm = d.pop(VLM_CONFIG_KEY, None)
        if d.get("type", "smolvla") != "smolvla":
            raise InputError(f"config.json has type {d['type']!r}; a SmolVLA config needs 'smolvla'")
        return cls(**kw, vlm_config=copy.deepcopy(vlm), extra=d)

    def to_lerobot(self) -> dict[str, Any]:
        out = {"type": "smolvla", **copy.deepcopy(self.extra)}
        for k in self._model_fields():
            v = getattr(self, k)
            out[k] = list(v) if isinstance(v, tuple) else v
        if self.vlm_config is not None:
            out[VLM_CONFIG_KEY] = copy.deepcopy(self.vlm_config)
        return out

    @classmethod
    def tiny(cls) -> SmolVLAConfig:
        """A tiny SmolVLA (`TINY_VLM`, 2 of 4 text layers kept; expert width 48) at 64 px, chunk 8, state and
        actions padded to 8 dims, 4 flow steps."""
        return cls(
            chunk_size=8,
            n_action_steps=8,
            max_state_dim=8,
            max_action_dim=8,
            resize_imgs_with_padding=(64, 64),
            tokenizer_max_length=24,
            num_steps=4,
            num_vlm_layers=2,
            vlm_config=copy.deepcopy(TINY_VLM),
        )

    def resolved_vlm_config(self) -> dict[str, Any]:
        """The VLM's configuration dict: the stored one, else the published SmolVLM2-500M values."""
        if self.vlm_config is not None:
            return copy.deepcopy(self.vlm_config)
        if self.vlm_model_name in SMOLVLM2_500M_NAMES:
            return copy.deepcopy(SMOLVLM2_500M)
        raise InputError(
            f"vlm_model_name {self.vlm_model_name!r}: vlaforge builds the VLM offline and knows only "
            f"{', '.join(SMOLVLM2_500M_NAMES)}; put that model's config.json (text_config, vision_config, "
            f"scale_factor, image_token_id) in the SmolVLA config.json under {VLM_CONFIG_KEY!r}"
        )


# ----------------------------------------------------------------------------------------- building blocks


def build_vlm(vlm: dict[str, Any]) -> nn.Module:
    """SmolVLMForConditionalGeneration from a configuration dict (random weights)."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    skip = ("fake_image_token_id", "global_image_token_id")
    kw = {k: v for k, v in vlm.items() if k not in skip}
    return SmolVLMForConditionalGeneration(SmolVLMConfig(**kw))


def rope(x: torch.Tensor, pos: torch.Tensor, wavelength: float = 10_000.0) -> torch.Tensor:
    """Rotary embedding of x (B, L, H, D) at positions (B, L), halves rotated (computed in float32)."""
    half = x.shape[-1] // 2
    inv = wavelength ** (-torch.arange(half, dtype=torch.float32, device=x.device) * 2.0 / x.shape[-1])
    ang = (pos.float()[..., None] * inv)[:, :, None, :]  # (B, L, 1, half)
    cos, sin = ang.cos(), ang.sin()
    xf = x.float()
    a, b = xf[..., :half], xf[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1).to(x.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q (B, Lq, H, D), k / v (B, Lk, KVH, D), mask bool (B, Lq, Lk) -> (B, Lq, H * D). A fully masked row
    averages all values (as LeRobot's finfo.min fill), so padding never produces NaN."""
    B, Lq, H, D = q.shape
    rep = H // k.shape[2]
    k = k.repeat_interleave(rep, dim=2).transpose(1, 2).float()
    v = v.repeat_interleave(rep, dim=2).transpose(1, 2)
    scores = torch.matmul(q.transpose(1, 2).float(), k.transpose(2, 3)) * D**-0.5
    scores = scores.masked_fill(~mask[:, None], torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1).to(v.dtype)
    return torch.matmul(probs, v).transpose(1, 2).reshape(B, Lq, H * D)


def att_2d(pad: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Token i sees token j when both are real and j's block (cumulative `blocks`) is not after i's."""
    c = torch.cumsum(blocks.long(), dim=1)
    return (c[:, None, :] <= c[:, :, None]) & pad[:, None, :] & pad[:, :, None]


def sincos_time(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """(B,) -> (B, dim): [sin, cos] of t * 2 pi / period, periods geometric in [min, max] (float64)."""
    dtype = torch.float32 if t.device.type == "mps" else torch.float64
    frac = torch.linspace(0.0, 1.0, dim // 2, dtype=dtype, device=t.device)
    period = min_period * (max_period / min_period) ** frac
    x = t.to(dtype)[:, None] * (2 * math.pi / period)
    return torch.cat([x.sin(), x.cos()], dim=-1)


def _qkv(layer: nn.Module, h: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, ...]:
    a = layer.self_attn
    x = layer.input_layernorm(h)
    shape = (*x.shape[:-1], -1, head_dim)
    return a.q_proj(x).view(shape), a.k_proj(x).view(shape), a.v_proj(x).view(shape)


def _finish(layer: nn.Module, h: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    h = h + layer.self_attn.o_proj(att.to(layer.self_attn.o_proj.weight.dtype))
    return h + layer.mlp(layer.post_attention_layernorm(h))


class SmolVLMWithExpert(nn.Module):
    """The VLM (`vlm`) and the action expert (`lm_expert`) run layer by layer (LeRobot's
    `SmolVLMWithExpertModel`)."""

    def __init__(self, cfg: SmolVLAConfig):
        super().__init__()
        from transformers import AutoModel

        vlm_cfg = cfg.resolved_vlm_config()
        self.vlm = build_vlm(vlm_cfg)
        text = self.vlm.model.text_model
        if cfg.num_vlm_layers > 0:
            text.layers = text.layers[: cfg.num_vlm_layers]
        self.num_vlm_layers = len(text.layers)
        tc = self.vlm.config.text_config
        ec = copy.deepcopy(tc)
        width = int(tc.hidden_size * cfg.expert_width_multiplier)
        ec.hidden_size = width
        ec.intermediate_size = _intermediate_size(width)
        ec.num_hidden_layers = self.num_vlm_layers
        if cfg.num_expert_layers > 0:
            if self.num_vlm_layers % cfg.num_expert_layers:
                raise InputError(
                    f"num_expert_layers {cfg.num_expert_layers} must divide num_vlm_layers {self.num_vlm_layers}"
                )
            ec.num_hidden_layers = cfg.num_expert_layers
        self.lm_expert = AutoModel.from_config(ec)
        self.num_expert_layers = len(self.lm_expert.layers)
        self.head_dim = tc.head_dim
        self.expert_hidden_size = width
        self.attention_mode = cfg.attention_mode
        self.every = cfg.self_attn_every_n_layers
        kv_in = tc.num_key_value_heads * tc.head_dim
        kv_out = ec.num_key_value_heads * ec.head_dim
        for i, layer in enumerate(self.lm_expert.layers):
            if "cross" in self.attention_mode and not self.is_self_attn(i):
                layer.self_attn.k_proj = nn.Linear(kv_in, kv_out, bias=ec.attention_bias)
                layer.self_attn.v_proj = nn.Linear(kv_in, kv_out, bias=ec.attention_bias)
        self.lm_expert.embed_tokens = None
        self.vlm_extra = {k: vlm_cfg.get(k) for k in ("fake_image_token_id", "global_image_token_id")}

    def is_self_attn(self, i: int) -> bool:
        return "cross" not in self.attention_mode or (self.every > 0 and i % self.every == 0)

    def expert_layer(self, i: int) -> nn.Module | None:
        """The expert layer paired with VLM layer i (None: the expert skips it)."""
        ratio = self.num_vlm_layers // self.num_expert_layers
        if ratio > 0 and i > 0 and i % ratio != 0:
            return None
        return self.lm_expert.layers[i // ratio if ratio > 0 else i]

    # ------------------------------------------------------------------ embeddings
    def embed_image(self, img: torch.Tensor) -> torch.Tensor:
        m = self.vlm.model
        h = m.vision_model(pixel_values=img.to(m.vision_model.embeddings.patch_embedding.weight.dtype))
        return m.connector(h.last_hidden_state)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.vlm.model.text_model.embed_tokens(ids)

    # ------------------------------------------------------------------ the joint transformer
    def forward(
        self,
        prefix: torch.Tensor | None,
        suffix: torch.Tensor | None,
        mask: torch.Tensor,
        pos: torch.Tensor,
        cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        hidden: list | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """Runs the layers on the prefix (VLM) and / or suffix (expert) embeddings.

        - prefix and suffix: the training pass (and the no-cache sampler), mask (B, P+S, P+S), pos (B, P+S);
        - prefix alone: fills and returns the cache (per layer the VLM's roped keys and values);
        - suffix alone with `cache`: a denoising step; mask (B, S, P+S), pos (B, S).
        `hidden`, if a list, receives each layer's (prefix, suffix) outputs. Returns the final-normed
        prefix and suffix and the cache.
        """
        hd = self.head_dim
        text = self.vlm.model.text_model
        fill = prefix is not None and suffix is None
        new_cache: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if fill else None
        P = prefix.shape[1] if prefix is not None else cache[0][0].shape[1]
        for i in range(self.num_vlm_layers):
            vl, el = text.layers[i], self.expert_layer(i)
            el_s = el if suffix is not None else None
            if prefix is None and el_s is None:
                continue
            if fill or self.is_self_attn(i):
                qs, ks, vs, parts = [], [], [], []
                if prefix is not None:
                    q, k, v = _qkv(vl, prefix, hd)
                    qs.append(q), ks.append(k), vs.append(v), parts.append("p")
                if el_s is not None:
                    q, k, v = _qkv(el_s, suffix, hd)
                    qs.append(q), ks.append(k), vs.append(v), parts.append("s")
                q, k, v = torch.cat(qs, 1), torch.cat(ks, 1), torch.cat(vs, 1)
                L = q.shape[1]
                q, k = rope(q, pos[:, :L]), rope(k, pos[:, :L])
                if fill:
                    new_cache.append((k, v))
                if cache is not None:
                    k, v = torch.cat([cache[i][0], k], 1), torch.cat([cache[i][1], v], 1)
                    m = mask[:, :L, : P + L]
                else:
                    m = mask[:, :L, :L]
                att = attend(q, k, v, m)
                off = 0
                if prefix is not None:
                    p_att, off = att[:, : prefix.shape[1]], prefix.shape[1]
                if el_s is not None:
                    s_att = att[:, off:]
            else:
                if prefix is not None:
                    q, pk, pv = _qkv(vl, prefix, hd)
                    pk = rope(pk, pos[:, :P])
                    q = rope(q, pos[:, :P])
                    p_att = attend(q, pk, pv, mask[:, :P, :P])
                    s_pos = pos[:, P:]
                else:
                    pk, pv = cache[i]
                    s_pos = pos
                if el_s is not None:
                    a = el_s.self_attn
                    x = el_s.input_layernorm(suffix)
                    q = a.q_proj(x).view(*x.shape[:-1], -1, hd)
                    k = a.k_proj(pk.reshape(*pk.shape[:2], -1).to(x.dtype)).view(*pk.shape[:2], -1, hd)
                    v = a.v_proj(pv.reshape(*pv.shape[:2], -1).to(x.dtype)).view(*pv.shape[:2], -1, hd)
                    q = rope(q, s_pos - s_pos.min(dim=1, keepdim=True).values)
                    S = suffix.shape[1]
                    s_att = attend(q, k, v, mask[:, -S:, :P])
            if prefix is not None:
                prefix = _finish(vl, prefix, p_att)
            if el_s is not None:
                suffix = _finish(el_s, suffix, s_att)
            if hidden is not None:
                hidden.append((prefix, suffix))
        p_out = text.norm(prefix) if prefix is not None else None
        s_out = self.lm_expert.norm(suffix) if suffix is not None else None
        return p_out, s_out, new_cache


class SmolVLAModel(nn.Module):
    """SmolVLA: LeRobot's `VLAFlowMatching` (its state-dict keys without the leading `model.`)."""

    def __init__(self, cfg: SmolVLAConfig):
        super().__init__()
        self.config = cfg
        self.vlm_with_expert = SmolVLMWithExpert(cfg)
        vlm_width = self.vlm_with_expert.vlm.config.text_config.hidden_size
        ew = self.vlm_with_expert.expert_hidden_size
        self.state_proj = nn.Linear(cfg.max_state_dim, vlm_width)
        self.action_in_proj = nn.Linear(cfg.max_action_dim, ew)
        self.action_out_proj = nn.Linear(ew, cfg.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * ew, ew)
        self.action_time_mlp_out = nn.Linear(ew, ew)

    # ------------------------------------------------------------------ prefix / suffix
    def embed_prefix(
        self,
        images: list[torch.Tensor],
        img_masks: list[torch.Tensor],
        lang_tokens: torch.Tensor,
        lang_masks: torch.Tensor,
        state: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeddings (B, P, W), pad mask (B, P), block starts (B, P))."""
        vw = self.vlm_with_expert
        B = state.shape[0]
        dev = state.device
        embs, pads, blocks = [], [], []

        def special(ids: list[int]) -> None:
            e = vw.embed_tokens(torch.tensor(ids, dtype=torch.long, device=dev))[None].expand(B, -1, -1)
            embs.append(e)
            pads.append(torch.ones(B, len(ids), dtype=torch.bool, device=dev))
            blocks.append(torch.zeros(B, len(ids), dtype=torch.bool, device=dev))

        fake, glob = vw.vlm_extra["fake_image_token_id"], vw.vlm_extra["global_image_token_id"]
        for img, m in zip(images, img_masks, strict=True):
            if self.config.add_image_special_tokens:
                special([fake, glob])
            e = vw.embed_image(img)
            e = e * torch.tensor(e.shape[-1] ** 0.5, dtype=e.dtype, device=e.device)
            embs.append(e)
            pads.append(m[:, None].expand(B, e.shape[1]))
            blocks.append(torch.zeros(B, e.shape[1], dtype=torch.bool, device=dev))
            if self.config.add_image_special_tokens:
                special([fake])
        lang = vw.embed_tokens(lang_tokens)
        embs.append(lang * math.sqrt(lang.shape[-1]))
        pads.append(lang_masks.bool())
        blocks.append(torch.zeros_like(lang_masks, dtype=torch.bool))
        st = self.state_proj(state.to(self.state_proj.weight.dtype))
        embs.append(st[:, None] if st.ndim == 2 else st)
        pads.append(torch.ones(B, embs[-1].shape[1], dtype=torch.bool, device=dev))
        blocks.append(torch.ones(B, embs[-1].shape[1], dtype=torch.bool, device=dev))
        e, p, b = torch.cat(embs, 1), torch.cat(pads, 1), torch.cat(blocks, 1)
        extra = self.config.prefix_length - e.shape[1]
        if extra > 0:
            e = F.pad(e, (0, 0, 0, extra))
            p, b = F.pad(p, (0, extra)), F.pad(b, (0, extra))
        return e, p, b

    def embed_suffix(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Action tokens (B, H, expert width): MLP(concat(linear(x_t), sincos(t)))."""
        a = self.action_in_proj(x_t.to(self.action_in_proj.weight.dtype))
        te = sincos_time(t, a.shape[-1], self.config.min_period, self.config.max_period).to(a.dtype)
        h = torch.cat([a, te[:, None].expand_as(a)], dim=-1)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(h)))

    def _velocity(self, s_out: torch.Tensor) -> torch.Tensor:
        out = s_out[:, -self.config.chunk_size :]
        return self.action_out_proj(out.to(self.action_out_proj.weight.dtype)).float()

    def velocity(
        self, prefix: tuple[torch.Tensor, ...], x_t: torch.Tensor, t: torch.Tensor, hidden: list | None = None
    ) -> torch.Tensor:
        """v(x_t, t) with the whole sequence (prefix from `embed_prefix`) in one pass, no cache."""
        pe, pp, pb = prefix
        se = self.embed_suffix(x_t, t)
        B, S = se.shape[:2]
        pad = torch.cat([pp, torch.ones(B, S, dtype=torch.bool, device=pp.device)], 1)
        blocks = torch.cat([pb, torch.ones(B, S, dtype=torch.bool, device=pp.device)], 1)
        pos = torch.cumsum(pad.long(), dim=1) - 1
        _, s_out, _ = self.vlm_with_expert(pe, se, att_2d(pad, blocks), pos, hidden=hidden)
        return self._velocity(s_out)

    # ------------------------------------------------------------------ LeRobot's interface
    def sample_noise(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.randn(shape, dtype=torch.float32, device=device)

    def sample_time(self, batch: int, device: torch.device) -> torch.Tensor:
        beta = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0)).sample((batch,))
        return (beta * 0.999 + 0.001).to(device=device, dtype=torch.float32)

    def forward(
        self,
        images: list[torch.Tensor],
        img_masks: list[torch.Tensor],
        lang_tokens: torch.Tensor,
        lang_masks: torch.Tensor,
        state: torch.Tensor,
        actions: torch.Tensor,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-element flow-matching loss (B, H, max_action_dim)."""
        if noise is None:
            noise = self.sample_noise(actions.shape, actions.device)
        if time is None:
            time = self.sample_time(actions.shape[0], actions.device)
        t = time[:, None, None]
        x_t = t * noise + (1 - t) * actions
        u_t = noise - actions
        prefix = self.embed_prefix(images, img_masks, lang_tokens, lang_masks, state)
        v_t = self.velocity(prefix, x_t, time)
        return F.mse_loss(u_t, v_t, reduction="none")

    def sample_actions(
        self,
        images: list[torch.Tensor],
        img_masks: list[torch.Tensor],
        lang_tokens: torch.Tensor,
        lang_masks: torch.Tensor,
        state: torch.Tensor,
        noise: torch.Tensor | None = None,
        num_steps: int | None = None,
        use_cache: bool | None = None,
    ) -> torch.Tensor:
        """Actions (B, H, max_action_dim): Euler steps from t = 1 (noise) to 0. Gradients flow unless the
        caller turns them off (as LeRobot's); `use_cache` None: the config's."""
        cfg = self.config
        B, dev = state.shape[0], state.device
        if noise is None:
            noise = self.sample_noise((B, cfg.chunk_size, cfg.max_action_dim), dev)
        steps = int(num_steps or cfg.num_steps)
        use_cache = cfg.use_cache if use_cache is None else use_cache
        prefix = self.embed_prefix(images, img_masks, lang_tokens, lang_masks, state)
        pe, pp, pb = prefix
        if use_cache:
            _, _, cache = self.vlm_with_expert(pe, None, att_2d(pp, pb), torch.cumsum(pp.long(), 1) - 1)
            offsets = pp.long().sum(-1, keepdim=True)
        dt = -1.0 / steps
        x = noise
        for step in range(steps):
            t = torch.full((B,), 1.0 + step * dt, dtype=torch.float32, device=dev)
            if use_cache:
                se = self.embed_suffix(x, t)
                S = se.shape[1]
                ones = torch.ones(B, S, dtype=torch.bool, device=dev)
                mask = torch.cat([pp[:, None].expand(B, S, -1), att_2d(ones, ones)], dim=2)
                pos = offsets + torch.arange(S, device=dev)[None]
                _, s_out, _ = self.vlm_with_expert(None, se, mask, pos, cache=cache)
                v = self._velocity(s_out)
            else:
                v = self.velocity(prefix, x, t)
            x = x + dt * v
        return x


__all__ = ["LEROBOT_DEFAULTS", "SMOLVLM2_500M", "TINY_VLM", "VLM_CONFIG_KEY", "SmolVLAConfig", "SmolVLAModel"]
