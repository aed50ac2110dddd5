"""A transformers image-text model (PaliGemma, Idefics3 / SmolVLM, Qwen2.5-VL) as the backbone under
vlaforge's own heads: built from its configuration, cut to its first N layers, pooled to K tokens per
image, the vision tower frozen, the prefix's per-layer keys and values exposed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge.models.hf_vlm import HFVLMBackbone, vlm_preset
from vlaforge.models.policy import Policy
from vlaforge.train.finetune import apply_freeze, freeze_unused

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1024)  # fmt: skip
CONFIGS = {
    "paligemma": dict(
        model_type="paligemma",
        text_config=dict(TEXT, model_type="gemma", head_dim=16),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),  # fmt: skip
        projection_dim=64,
    ),
    "idefics3": dict(
        model_type="idefics3",
        text_config=dict(TEXT, model_type="llama"),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),  # fmt: skip
        scale_factor=2,
    ),
    "qwen2_5_vl": dict(
        model_type="qwen2_5_vl",
        text_config=dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            fullatt_block_indexes=[1],
            window_size=56,
        ),  # fmt: skip
        image_size=56,
    ),
}


def _obs(h, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "images": {"corner2": rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)},
        "state": rng.standard_normal(6).astype(np.float32),
        "instruction": "open the drawer",
    }


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_a_transformers_vlm_under_the_chunk_head(kind, h):
    preset = vlm_preset(CONFIGS[kind], num_layers=2, visual_tokens=3, freeze_vision=True, chunk_size=4)
    policy = Policy(preset, {"kind": "chunk", "chunk_size": 4}, h.embodiment(), h.stats())
    bb = policy.backbone
    assert isinstance(bb, HFVLMBackbone) and len(bb.llm.get_decoder().layers) == 2  # the first N layers
    tokens = bb.embed_images([torch.zeros(2, 48, 48, 3, dtype=torch.uint8)])
    assert tokens.shape == (2, 3, 64)  # K tokens per image, the LLM's width
    counts = apply_freeze(policy, "full")
    frozen = freeze_unused(policy)
    vision = sum(p.numel() for p in bb.vision.parameters())
    out, emb = bb.llm.get_output_embeddings().weight, bb.llm.get_input_embeddings().weight
    head = 0 if out is emb else out.numel()  # an untied output layer is unused by the chunk head
    assert frozen == vision + head and not any(p.requires_grad for p in bb.vision.parameters())
    assert emb.requires_grad
    assert counts["total"] == sum(p.numel() for p in policy.parameters())
    names = [n for n, _ in policy.state_dict().items()]
    assert len(names) == len(set(names)) and not any(n.startswith("backbone._llm") for n in names)
    loss, _ = policy.compute_loss(h.batch(B=2, H=4))
    loss.backward()
    assert all(p.grad is not None for p in policy.parameters() if p.requires_grad)
    a = policy.predict_action(_obs(h))
    assert a.shape == (4, 4) and np.isfinite(a).all()


def test_the_prefix_keys_and_values_are_the_llms_per_layer_and_heads_are_interchangeable(h, tmp_path):
    preset = vlm_preset(CONFIGS["paligemma"], num_layers=3, chunk_size=4)
    torch.manual_seed(0)
    policy = Policy(preset, {"kind": "flow", "chunk_size": 4}, h.embodiment(), h.stats())
    bb = policy.backbone
    ctx = policy._context(*(lambda o: ({"corner2": o["images"]["corner2"][None]}, o["state"][None],
                                       [o["instruction"]]))(_obs(h)))  # fmt: skip
    prefix = bb.encode_prefix(ctx.images, ctx.state, ctx.prompt_ids)
    kv = bb.prefix_kv(prefix)
    assert len(kv) == 3 and kv[0][0].shape == (1, 2, prefix.length, 16)  # (B, kv heads, T, head dim)
    # The layer-0 keys are the LLM's own k_proj of the normed sequence, rotated (transformers' Gemma
    # scales its token embeddings inside embed_tokens, so the assembled sequence is the layer's input).
    seq = bb.assemble(ctx.images, ctx.state, ctx.prompt_ids)
    layer = bb.llm.get_decoder().layers[0]
    x = layer.input_layernorm(seq.embeds)
    k = layer.self_attn.k_proj(x).view(1, -1, 2, 16).transpose(1, 2)
    k = layer.self_attn.k_norm(k) if hasattr(layer.self_attn, "k_norm") else k
    cos, sin = bb.llm.get_decoder().rotary_emb(x, seq.position_ids)
    rot = torch.cat([-k[..., 8:], k[..., :8]], dim=-1)
    torch.testing.assert_close(kv[0][0], k * cos[:, None] + rot * sin[:, None], rtol=1e-5, atol=1e-5)
    a = policy.predict_action(_obs(h), generator=torch.Generator().manual_seed(0))
    again = Policy.from_pretrained(policy.save_pretrained(tmp_path / "p"))
    b = again.predict_action(_obs(h), generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(a, b)  # saved and loaded through vlaforge's format
