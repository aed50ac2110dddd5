"""The Prismatic backbone (Karamcheti et al., 2024; used by OpenVLA): vision -> projector -> causal LM.

Sequence per sample, left-padded to the batch's longest:

    [pad ...] [BOS] [patches of camera 1] ... [patches of camera C] [keypoints?] [state?] [prompt] [suffix]

- Patches are the projected second-to-last-block features (`vision.py`), cameras in embodiment order.
- With `preset.keypoints`, one spatial soft-argmax token per camera image follows the patches, in the
  patches' order (`keypoints.py`).
- The optional state token is `Linear(state_dim -> d_llm)` of the normalised proprioceptive state.
- The suffix is what the head appends: teacher-forced action tokens + `</s>` (token head) or H*D learned
  placeholders (chunk head). Because padding is on the left and the suffix has the same length for every
  sample, the suffix always sits in the last K positions, so heads slice `hidden[:, -K:]`.

Encoding the prefix once: a head that iterates (token decoding, flow-matching or diffusion steps) calls
`encode_prefix` once per prediction, which runs vision, projector and LLM over `[pads][BOS][patches][state]
[prompt]` into a KV cache, then `run_suffix` for each pass over its own K positions. A suffix query sees
every valid prefix key and, within the suffix, causal or bidirectional attention; unless the head asks to
keep it (token decoding, which grows the cache one token at a time), the suffix's keys and values are
cropped from the cache after the pass, so the next pass starts from the same prefix. `assemble` + `run`
over the whole sequence stays as the reference path, and the tests check the two agree per position.

Attention uses an explicit additive 4D mask (B, 1, T, T) that `transformers` passes through unchanged:
causal over valid (non-pad) keys; a pad query sees itself so no softmax row is empty (no NaNs); and,
for the chunk head, the suffix block attends bidirectionally within itself as in OpenVLA-OFT's parallel
decoding (Kim et al., 2025, "Fine-Tuning Vision-Language-Action Models"). Position ids count valid tokens
only, so left padding does not shift RoPE positions: batched decoding equals one-by-one decoding.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, LlamaConfig, LlamaForCausalLM

from vlaforge.errors import InputError
from vlaforge.models.keypoints import KeypointEncoder
from vlaforge.models.presets import LLMSpec, Preset
from vlaforge.models.vision import Projector, VisionFeaturizer


def build_llm(spec: LLMSpec) -> nn.Module:
    """A causal LM from a config (random init, no download): Llama by default, any AutoModelForCausalLM."""
    kwargs = dict(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads or spec.num_heads,
        intermediate_size=spec.intermediate_size,
        vocab_size=spec.vocab_size,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=spec.rms_norm_eps,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    if spec.model_type == "llama":
        cfg = LlamaConfig(rope_theta=spec.rope_theta, **kwargs)
        cfg._attn_implementation = "sdpa"
        return LlamaForCausalLM(cfg)
    cfg = AutoConfig.for_model(spec.model_type, **kwargs)
    cfg._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(cfg)


@dataclass
class Sequence:
    """An assembled, left-padded input batch.

    Attributes:
        embeds: (B, T, d_llm) input embeddings.
        valid: (B, T) bool, False on left padding.
        position_ids: (B, T) int64, counting valid tokens from 0.
        mask: (B, 1, T, T) additive attention mask in the embeddings' dtype.
    """

    embeds: torch.Tensor
    valid: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor


@dataclass
class Prefix:
    """A prefix encoded once into a KV cache (see `PrismaticBackbone.encode_prefix`).

    Attributes:
        cache: the LLM's per-layer keys and values over the T cached positions.
        valid: (B, T) bool, False on left padding.
        next_position: (B,) int64, the position id of the first position after the cache.
        last_hidden: (B, d) final hidden state of the last cached position (predicts the next token).
    """

    cache: DynamicCache
    valid: torch.Tensor
    next_position: torch.Tensor
    last_hidden: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.valid.shape[1])


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool (B, 1, Q, K) "may attend" -> additive float mask (0 where allowed, dtype's min elsewhere)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, neg)


def build_mask(valid: torch.Tensor, n_bidirectional: int, dtype: torch.dtype) -> torch.Tensor:
    """The (B, 1, T, T) mask: causal over valid keys, last `n_bidirectional` positions see each other."""
    B, T = valid.shape
    idx = torch.arange(T, device=valid.device)
    causal = idx[None, :] <= idx[:, None]  # (T_q, T_k)
    if n_bidirectional > 0:
        block = idx >= T - n_bidirectional
        causal = causal | (block[:, None] & block[None, :])
    allowed = causal[None] & valid[:, None, :]  # (B, T_q, T_k)
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=valid.device)[None]  # pad rows see themselves
    return additive_mask(allowed[:, None], dtype)


class PrismaticBackbone(nn.Module):
    """Vision featurizer + projector + causal LM (+ optional keypoint encoder and state projection).

    Args:
        preset: the model configuration.
        state_dim: proprioceptive state size; a state token is added when `preset.use_state` and > 0.
        bos_id: the text tokenizer's BOS id.
        pad_id: id whose embedding fills left padding (masked out anyway).
    """

    def __init__(self, preset: Preset, state_dim: int, bos_id: int = 1, pad_id: int = 0):
        super().__init__()
        self.preset = preset
        self.bos_id, self.pad_id = bos_id, pad_id
        self.vision = VisionFeaturizer(
            preset.vision, preset.image_size, preset.image_resize, preset.resize_strategy
        )
        self.projector = Projector(preset.vision_dim, preset.llm.hidden_size, fused=len(preset.vision) == 2)
        self.llm = build_llm(preset.llm)
        self.keypoints = (
            KeypointEncoder(preset.keypoints, preset.llm.hidden_size) if preset.keypoints else None
        )
        self.state_dim = state_dim if preset.use_state else 0
        # With history, the T states of a sample (oldest first) are one token: Linear(T * S -> d).
        self.state_proj = (
            nn.Linear(state_dim * preset.history, preset.llm.hidden_size) if self.state_dim else None
        )

    @property
    def device(self) -> torch.device:
        """Where the model runs (read from the input embeddings, which are never quantised)."""
        return self.llm.get_input_embeddings().weight.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The activations' dtype: the input embeddings' (a quantised Linear stores int8 / uint8 weights)."""
        return self.llm.get_input_embeddings().weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.preset.llm.hidden_size

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.llm.get_output_embeddings()(hidden)

    def embed_images(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Per-camera uint8 (B, h, w, 3) (or (B, T, h, w, 3) with history), or already preprocessed float
        pixels (B, 3 * n_towers, S, S) as OpenVLA's processor returns them -> projected patches
        (B, C * T * n_patches, d_llm), followed by the C * T keypoint tokens when the preset has them."""
        # With history a camera's frames are (B, T, h, w, 3): each time step is read like another camera,
        # oldest first, so the patches of one camera's T frames are consecutive.
        images = [frame for img in images for frame in (img.unbind(1) if img.ndim == 5 else (img,))]
        B = images[0].shape[0]
        pixels = torch.cat([self._pixels(img) for img in images], dim=0)  # (C*B, 3*n_towers, S, S)
        pixels = pixels.to(self.compute_dtype)
        feats = self.vision(pixels)  # (C*B, n_patches, d_vision)
        patches = self.projector(feats)  # (C*B, n_patches, d_llm)
        C = len(images)
        # (B, C*n_patches, d)
        tokens = patches.view(C, B, -1, patches.shape[-1]).transpose(0, 1).flatten(1, 2)
        if self.keypoints is None:
            return tokens
        points = self.keypoints(pixels[:, :3])  # the first tower's normalised pixels -> (C*B, d)
        return torch.cat([tokens, points.view(C, B, -1).transpose(0, 1)], dim=1)  # (B, C*n_patches + C, d)

    def _pixels(self, img: torch.Tensor) -> torch.Tensor:
        if img.dtype == torch.uint8:
            return self.vision.preprocess(img)
        S, n = self.vision.image_size, 3 * len(self.vision.specs)
        if img.ndim != 4 or tuple(img.shape[1:]) != (n, S, S) or not img.is_floating_point():
            raise InputError(
                f"pixel_values must be float (B, {n}, {S}, {S}) (the processor's output) or uint8 camera "
                f"images (B, H, W, 3); got {img.dtype} {tuple(img.shape)}"
            )
        return img.to(self.device)

    def assemble(
        self,
        images: list[torch.Tensor],
        state: torch.Tensor | None,
        prompt_ids: list[list[int]],
        suffix: torch.Tensor | None = None,
        bidirectional_suffix: bool = False,
    ) -> Sequence:
        """Builds the left-padded input sequence.

        Args:
            images: one uint8 (B, h, w, 3) tensor per camera, in embodiment order.
            state: normalised state (B, S), or None when the backbone takes none.
            prompt_ids: B lists of prompt token ids (no BOS).
            suffix: (B, K, d_llm) embeddings appended after the prompt, or None.
            bidirectional_suffix: let the suffix positions attend to each other both ways.
        """
        device = self.device
        B = len(prompt_ids)
        patches = self.embed_images(images)  # (B, P, d)
        dtype = patches.dtype
        parts = [self.embed_tokens(torch.full((B, 1), self.bos_id, device=device)), patches]
        if self.state_proj is not None:
            if state is None:
                raise InputError(f"this policy takes a state of dim {self.state_dim}; the batch has none")
            parts.append(self.state_proj(state.to(device=device, dtype=dtype))[:, None])  # (B, 1, d)
        prefix = torch.cat(parts, dim=1)  # (B, 1 + P (+1), d), same length for every sample
        lengths = [len(p) for p in prompt_ids]
        L = max(lengths)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        text_valid = torch.zeros(B, L, dtype=torch.bool)
        for b, p in enumerate(prompt_ids):  # right-pad here; the roll below moves the pads to the front
            ids[b, : len(p)] = torch.as_tensor(p, dtype=torch.long)
            text_valid[b, : len(p)] = True
        ids, text_valid = ids.to(device), text_valid.to(device)
        text = self.embed_tokens(ids)  # (B, L, d)
        # Left padding goes before BOS: [pads][BOS][patches][state][prompt][suffix]. Rolling each sample's
        # [prefix][prompt][pads] right by its pad count wraps the pads around to the front.
        seq = torch.cat([prefix, text], dim=1)  # (B, T0, d)
        valid = torch.cat([torch.ones(B, prefix.shape[1], dtype=torch.bool, device=device), text_valid], 1)
        shift = torch.tensor([L - n for n in lengths], device=device)
        T0 = seq.shape[1]
        gather = (torch.arange(T0, device=device)[None] - shift[:, None]) % T0  # (B, T0)
        seq = torch.gather(seq, 1, gather[..., None].expand(-1, -1, seq.shape[-1]))
        valid = torch.gather(valid, 1, gather)
        K = 0
        if suffix is not None:
            K = suffix.shape[1]
            seq = torch.cat([seq, suffix.to(dtype)], dim=1)
            valid = torch.cat([valid, torch.ones(B, K, dtype=torch.bool, device=device)], dim=1)
        position_ids = (valid.long().cumsum(1) - 1).clamp(min=0)
        mask = build_mask(valid, K if bidirectional_suffix else 0, dtype)
        return Sequence(seq, valid, position_ids, mask)

    def run(self, seq: Sequence, cache=None) -> tuple[torch.Tensor, object]:
        """LLM decoder over an assembled sequence -> (final hidden states (B, T, d), KV cache or None)."""
        decoder = self.llm.get_decoder()
        name = _cache_argument(type(decoder))
        out = decoder(
            inputs_embeds=seq.embeds,
            attention_mask=seq.mask,
            position_ids=seq.position_ids,
            use_cache=cache is not None,
            **{name: cache},
        )
        return out.last_hidden_state, (out[name] if cache is not None else None)

    @torch.no_grad()
    def encode_prefix(
        self, images: list[torch.Tensor], state: torch.Tensor | None, prompt_ids: list[list[int]]
    ) -> Prefix:
        """Runs vision, projector and LLM once over images + state + prompt into a KV cache (inference)."""
        seq = self.assemble(images, state, prompt_ids)
        hidden, cache = self.run(seq, DynamicCache())
        return Prefix(cache, seq.valid, seq.position_ids[:, -1] + 1, hidden[:, -1])

    def run_suffix(
        self, prefix: Prefix, suffix: torch.Tensor, bidirectional: bool = False, keep: bool = False
    ) -> torch.Tensor:
        """Runs the LLM over `suffix` (B, K, d) on top of a cached prefix -> final hidden states (B, K, d).

        Args:
            prefix: from `encode_prefix`; its cache grows by K when `keep`, else it is left as it was.
            suffix: input embeddings of the K new positions.
            bidirectional: the suffix positions attend to each other both ways (else causally).
            keep: keep the suffix in the cache (autoregressive decoding) and advance the prefix.
        """
        B, K = suffix.shape[:2]
        T = prefix.length
        device = suffix.device
        q = torch.arange(K, device=device)
        within = torch.ones(K, K, dtype=torch.bool, device=device) if bidirectional else q[None] <= q[:, None]
        allowed = torch.cat(
            [prefix.valid[:, None, :].expand(B, K, T), within[None].expand(B, K, K)], dim=-1
        )  # (B, K, T + K)
        dtype = prefix.last_hidden.dtype
        valid = torch.cat([prefix.valid, torch.ones(B, K, dtype=torch.bool, device=device)], dim=1)
        seq = Sequence(
            embeds=suffix.to(dtype),
            valid=valid,
            position_ids=prefix.next_position[:, None] + q[None],  # (B, K)
            mask=additive_mask(allowed[:, None], dtype),  # (B, 1, K, T + K)
        )
        hidden, cache = self.run(seq, prefix.cache)
        if keep:
            prefix.cache, prefix.valid = cache, valid
            prefix.next_position = prefix.next_position + K
            prefix.last_hidden = hidden[:, -1]
        else:
            prefix.cache.crop(-K)  # drop the suffix again (negative: tokens to remove)
        return hidden


@functools.cache
def _cache_argument(decoder: type) -> str:
    """The KV cache's name in `decoder.forward` and its output: ``cache`` from transformers 5.25 on,
    ``past_key_values`` before (the old name still works there, with a deprecation warning)."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
