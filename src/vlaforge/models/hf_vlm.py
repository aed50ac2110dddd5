"""A VLM backbone from any `transformers` image-text model's configuration (PaliGemma, SmolVLM / Idefics3,
Qwen2.5-VL), under vlaforge's own action heads.

`HFVLMBackbone` is a `PrismaticBackbone` whose vision tower, projector and language model are the
transformers model's own (built from its config.json, with random weights, or loaded from a local
directory's safetensors): `assemble`, `run`, `encode_prefix` and `run_suffix` are inherited, so every head
(tokens, chunk, FAST, flow, diffusion) runs on it unchanged, and `prefix_kv` gives the language model's
per-layer keys and values over the prefix (what a pi0-style expert attends to). Options (the preset's
`vlm` entry):

- `num_layers`: keep the first N layers of the language model (SmolVLA keeps 16 of SmolVLM2's 32);
- `visual_tokens`: tokens per image after the projector, by average pooling over the token axis (None:
  the model's own count: PaliGemma 256 at 224 px, SmolVLM 64 per 512 px frame after pixel shuffle);
- `freeze_vision`: the vision tower runs without gradients and never trains.

Pixels: each model's own normalisation at the vision config's `image_size` (PaliGemma and Idefics3: [-1,
1]; Qwen2.5-VL: CLIP's mean and std, 14 px patches with temporal patch 2 flattened as its image processor
does, one image = one frame). Positions are 1-D for every model (Qwen2.5-VL's M-RoPE then sees text-style
positions on image tokens: a deviation from its pretraining, fine for fine-tuning, noted here).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlaforge.errors import InputError
from vlaforge.models.backbone import Prefix, PrismaticBackbone
from vlaforge.models.presets import LLMSpec

SUPPORTED = ("paligemma", "idefics3", "smolvlm", "qwen2_5_vl")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _config(vlm: dict[str, Any]) -> Any:
    """The transformers config of the preset's `vlm` entry, the LLM cut to `num_layers`."""
    from transformers import AutoConfig

    raw = dict(vlm["config"])
    kind = raw.pop("model_type", None)
    if kind not in SUPPORTED:
        raise InputError(f"vlm config model_type {kind!r}: supported image-text models are {SUPPORTED}")
    cfg = AutoConfig.for_model(kind, **raw)
    n = vlm.get("num_layers")
    if n is not None:
        total = cfg.text_config.num_hidden_layers
        if not 1 <= int(n) <= total:
            raise InputError(f"vlm num_layers {n}: the language model has {total} layers")
        cfg.text_config.num_hidden_layers = int(n)
        if getattr(cfg.text_config, "layer_types", None):
            cfg.text_config.layer_types = list(cfg.text_config.layer_types)[: int(n)]
    return cfg


def vlm_llm_spec(vlm: dict[str, Any]) -> LLMSpec:
    """The language model's sizes as an `LLMSpec` (what heads read: width, heads, vocab)."""
    t = _config(vlm).text_config
    heads = int(t.num_attention_heads)
    return LLMSpec(
        hidden_size=int(t.hidden_size),
        num_layers=int(t.num_hidden_layers),
        num_heads=heads,
        intermediate_size=int(t.intermediate_size),
        vocab_size=int(t.vocab_size),
        num_kv_heads=int(getattr(t, "num_key_value_heads", None) or heads),
        max_position_embeddings=int(getattr(t, "max_position_embeddings", 2048)),
        rms_norm_eps=float(getattr(t, "rms_norm_eps", 1e-6)),
        rope_theta=float(getattr(t, "rope_theta", None) or 10000.0),
        model_type=str(t.model_type),
    )


def vlm_image_size(vlm: dict[str, Any]) -> int:
    """The square side images are fed at (the vision config's; Qwen2.5-VL: `image_size`, 224 by default)."""
    v = _config(vlm).vision_config
    return int(getattr(v, "image_size", None) or vlm.get("image_size") or 224)


class _CausalLMView(nn.Module):
    """The language model and output layer seen as a causal LM (`get_decoder`, `get_input_embeddings`,
    `get_output_embeddings`), the interface `PrismaticBackbone` and the heads use. Held outside the
    backbone's registered children, so the state dict has each tensor once."""

    def __init__(self, decoder: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.model, self.lm_head = decoder, lm_head

    def get_decoder(self) -> nn.Module:
        return self.model

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


class HFVLMBackbone(PrismaticBackbone):
    """A transformers image-text model as vlaforge's backbone (see the module docstring).

    Args:
        preset: a preset whose `vlm` is `{"config": config.json dict, "num_layers", "visual_tokens",
            "freeze_vision", "weights": a local directory with the model's safetensors (optional)}`.
        state_dim: the proprioceptive state size (a state token when `preset.use_state`).
        bos_id, pad_id: the text tokenizer's ids.
    """

    def __init__(self, preset: Any, state_dim: int, bos_id: int = 1, pad_id: int = 0):
        nn.Module.__init__(self)
        from transformers import AutoModelForImageTextToText

        vlm = dict(preset.vlm)
        cfg = _config(vlm)
        self.kind = cfg.model_type
        self.preset, self.bos_id, self.pad_id = preset, bos_id, pad_id
        if vlm.get("weights"):
            model = AutoModelForImageTextToText.from_pretrained(vlm["weights"], config=cfg)
        else:
            model = AutoModelForImageTextToText.from_config(cfg)
        self.vlm = model.model  # vision tower, projector, language model
        self.output_layer = model.lm_head  # (`lm_head` is PrismaticBackbone's method that calls it)
        self.visual_tokens = vlm.get("visual_tokens")
        self.freeze_vision = bool(vlm.get("freeze_vision", False))
        self.image_size = vlm_image_size(vlm)
        self.text_hidden = int(cfg.text_config.hidden_size)
        object.__setattr__(
            self, "_llm", _CausalLMView(self._part("language_model", "text_model"), self.output_layer)
        )
        self.state_dim = state_dim if preset.use_state else 0
        self.state_proj = nn.Linear(state_dim, self.text_hidden) if self.state_dim else None

    def _part(self, *names: str) -> nn.Module:
        for n in names:
            if hasattr(self.vlm, n):
                return getattr(self.vlm, n)
        raise InputError(f"the {self.kind} model has none of {names}")

    @property
    def llm(self) -> nn.Module:  # type: ignore[override]
        return self._llm

    @property
    def vision(self) -> nn.Module:  # type: ignore[override]
        return self._part("vision_tower", "vision_model", "visual")

    @property
    def projector(self) -> nn.Module:
        """PaliGemma's multi_modal_projector, Idefics3's connector, Qwen2.5-VL's patch merger."""
        if self.kind == "qwen2_5_vl":
            return self.vlm.visual.merger
        return self._part("multi_modal_projector", "connector")

    @property
    def hidden_size(self) -> int:
        return self.text_hidden

    def unused_vision_parameters(self) -> list[nn.Parameter]:
        """The vision tower's parameters when it is frozen (`freeze_vision`), else none."""
        if not self.freeze_vision:
            return []
        projector = {id(p) for p in self.projector.parameters()} if self.kind != "qwen2_5_vl" else set()
        return [p for p in self.vision.parameters() if id(p) not in projector]

    # ------------------------------------------------------------------ images
    def _resized(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 (B, h, w, 3) -> float (B, 3, S, S) in [0, 1] on the model's device."""
        x = img.to(self.device).permute(0, 3, 1, 2).float() / 255.0
        S = self.image_size
        if x.shape[-2:] != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
        return x

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels (N, 3, S, S) -> projected image tokens (N, n, d_text); the vision tower without
        gradients under `freeze_vision` (the projector still trains, except Qwen2.5-VL's merger, which
        is part of its visual encoder)."""
        dtype = self.compute_dtype
        frozen = torch.no_grad() if self.freeze_vision else contextlib.nullcontext()
        if self.kind == "paligemma":
            with frozen:
                out = self.vlm.vision_tower(pixel_values=(x * 2 - 1).to(dtype)).last_hidden_state
            return self.vlm.multi_modal_projector(out) / math.sqrt(self.text_hidden)
        if self.kind in ("idefics3", "smolvlm"):
            p = self.vlm.config.vision_config.patch_size
            mask = torch.ones(x.shape[0], x.shape[2] // p, x.shape[3] // p, dtype=torch.bool, device=x.device)
            with frozen:
                out = self.vlm.vision_model(pixel_values=(x * 2 - 1).to(dtype), patch_attention_mask=mask)
            return self.vlm.connector(out.last_hidden_state)
        with frozen:
            return self._qwen_features(x)

    def _qwen_features(self, x: torch.Tensor) -> torch.Tensor:
        """Qwen2.5-VL: CLIP-normalised, duplicated into its 2-frame temporal patch and flattened as
        Qwen2VLImageProcessor does; the visual encoder (with its merger) -> (N, n, d_text)."""
        v = self.vlm.config.vision_config
        p, m, tp = v.patch_size, v.spatial_merge_size, v.temporal_patch_size
        N, C, S, _ = x.shape
        if S % (p * m):
            raise InputError(f"Qwen2.5-VL needs an image side that is a multiple of {p * m}; got {S}")
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std)[:, None].expand(N, tp, C, S, S)  # (N, tp, C, S, S): one frame twice
        g = S // p
        x = x.reshape(N, 1, tp, C, g // m, m, p, g // m, m, p)
        x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9).reshape(N * g * g, C * tp * p * p)
        grid = torch.tensor([[1, g, g]] * N, device=x.device)
        out = self.vlm.visual(x.to(self.compute_dtype), grid_thw=grid)
        out = out.pooler_output if hasattr(out, "pooler_output") else out
        return out.reshape(N, (g // m) ** 2, -1)

    def embed_images(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Per-camera uint8 (B, h, w, 3) -> image tokens (B, C * n, d_text), `visual_tokens` per image."""
        B, C = images[0].shape[0], len(images)
        x = torch.cat([self._resized(img) for img in images], dim=0)  # (C*B, 3, S, S)
        tokens = self._features(x)
        if self.visual_tokens and tokens.shape[1] != self.visual_tokens:
            tokens = F.adaptive_avg_pool1d(tokens.transpose(1, 2), int(self.visual_tokens)).transpose(1, 2)
        return tokens.view(C, B, -1, tokens.shape[-1]).transpose(0, 1).flatten(1, 2)  # (B, C*n, d)

    @staticmethod
    def prefix_kv(prefix: Prefix) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The language model's keys and values per layer over the prefix: [(k, v)], each
        (B, kv_heads, T, head_dim)."""
        return [(layer.keys, layer.values) for layer in prefix.cache.layers]


def vlm_preset(
    config: dict[str, Any],
    num_layers: int | None = None,
    visual_tokens: int | None = None,
    freeze_vision: bool = False,
    weights: str | None = None,
    **fields: Any,
) -> Any:
    """A `Preset` whose backbone is the transformers image-text model of `config` (its config.json as a
    dict), with the byte tokenizer and the instruction prompt unless `fields` say otherwise."""
    from vlaforge.models.presets import Preset

    vlm = {
        "config": dict(config),
        "num_layers": num_layers,
        "visual_tokens": visual_tokens,
        "freeze_vision": freeze_vision,
        "weights": weights,
    }
    base = {
        "name": f"vlm:{config.get('model_type')}",
        "vision": (),
        "image_size": vlm_image_size(vlm),
        "llm": vlm_llm_spec(vlm),
        "tokenizer": "byte",
        "prompt": "instruction",
        "vlm": vlm,
    }
    return Preset(**{**base, **fields})


__all__ = ["SUPPORTED", "HFVLMBackbone", "vlm_image_size", "vlm_llm_spec", "vlm_preset"]
