"""SmolVLA (`vlaforge.models.smolvla`) against an independent plain-torch reference (tests/models/
smolvla_reference.py) on the tiny configuration, cached against uncached sampling, a batch against its
samples one by one, the LeRobot config round trip, and the published model's size built on the meta device."""

from __future__ import annotations

import dataclasses

import pytest
import smolvla_reference as ref
import torch

from vlaforge.errors import InputError
from vlaforge.models.smolvla import LEROBOT_DEFAULTS, VLM_CONFIG_KEY, SmolVLAConfig, SmolVLAModel

TOL = 1e-5


def _inputs(cfg: SmolVLAConfig, seed: int = 0, lengths=(9, 5)):
    """Two cameras (the second masked out for sample 1), prompts of different lengths right-padded."""
    g = torch.Generator().manual_seed(seed)
    B, R = len(lengths), cfg.resize_imgs_with_padding[0]
    images = [torch.rand(B, 3, R, R, generator=g) * 2 - 1 for _ in range(2)]
    img_masks = [torch.ones(B, dtype=torch.bool), torch.tensor([True] + [False] * (B - 1))]
    L = max(lengths)
    tokens = torch.randint(4, 80, (B, L), generator=g)
    lang_masks = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    tokens[~lang_masks] = 0
    state = torch.randn(B, cfg.max_state_dim, generator=g)
    actions = torch.randn(B, cfg.chunk_size, cfg.max_action_dim, generator=g)
    noise = torch.randn(B, cfg.chunk_size, cfg.max_action_dim, generator=g)
    return images, img_masks, tokens, lang_masks, state, actions, noise


def _model(cfg: SmolVLAConfig, seed: int = 0) -> SmolVLAModel:
    torch.manual_seed(seed)
    m = SmolVLAModel(cfg).eval()
    with torch.no_grad():  # non-zero norms and biases, so every weight matters
        for n, p in m.named_parameters():
            if n.endswith("norm.weight") or n.endswith("layernorm.weight") or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "image-special-tokens"])
def tiny(request):
    cfg = dataclasses.replace(SmolVLAConfig.tiny(), add_image_special_tokens=request.param)
    return cfg, _model(cfg)


def test_matches_the_reference_layer_by_layer(tiny):
    cfg, m = tiny
    images, img_masks, tokens, lang_masks, state, actions, noise = _inputs(cfg)
    sd = {k: v.detach() for k, v in m.state_dict().items()}
    t = torch.tensor([0.83, 0.21])
    x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
    with torch.no_grad():
        hidden: list = []
        prefix = m.embed_prefix(images, img_masks, tokens, lang_masks, state)
        v = m.velocity(prefix, x_t, t, hidden=hidden)
        v_ref, hidden_ref = ref.velocity(sd, cfg, images, img_masks, tokens, lang_masks, state, x_t, t)
    assert len(hidden) == len(hidden_ref) == cfg.num_vlm_layers == 2
    # tokens: per camera 16 (+3 special), prompt 9, state 1
    assert prefix[0].shape[1] == 2 * (16 + 3 * cfg.add_image_special_tokens) + 9 + 1
    for (p, s), (p_ref, s_ref) in zip(hidden, hidden_ref, strict=True):
        valid = prefix[1]  # padded prefix tokens are never read by real ones
        torch.testing.assert_close(p[valid], p_ref[valid], atol=TOL, rtol=TOL)
        torch.testing.assert_close(s, s_ref, atol=TOL, rtol=TOL)
    torch.testing.assert_close(v, v_ref, atol=TOL, rtol=TOL)
    assert v.abs().mean() > 0.05  # not a degenerate output

    with torch.no_grad():
        loss = m(images, img_masks, tokens, lang_masks, state, actions, noise=noise, time=t)
        loss_ref = ref.loss(sd, cfg, images, img_masks, tokens, lang_masks, state, actions, noise, t)
    assert loss.shape == (2, cfg.chunk_size, cfg.max_action_dim)
    torch.testing.assert_close(loss, loss_ref, atol=TOL, rtol=TOL)

    with torch.no_grad():
        a = m.sample_actions(images, img_masks, tokens, lang_masks, state, noise=noise)
        a_ref = ref.sample(sd, cfg, images, img_masks, tokens, lang_masks, state, noise, cfg.num_steps)
    torch.testing.assert_close(a, a_ref, atol=TOL, rtol=TOL)


def test_cached_sampling_equals_uncached_and_batch_equals_one_by_one(tiny):
    cfg, m = tiny
    images, img_masks, tokens, lang_masks, state, _, noise = _inputs(cfg, seed=1, lengths=(11, 4))
    a = m.sample_actions(images, img_masks, tokens, lang_masks, state, noise=noise, use_cache=True)
    b = m.sample_actions(images, img_masks, tokens, lang_masks, state, noise=noise, use_cache=False)
    torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)
    for i, n in enumerate((11, 4)):
        one = m.sample_actions(
            [x[i : i + 1] for x in images],
            [x[i : i + 1] for x in img_masks],
            tokens[i : i + 1, :n],
            lang_masks[i : i + 1, :n],
            state[i : i + 1],
            noise=noise[i : i + 1],
        )
        torch.testing.assert_close(one, a[i : i + 1], atol=TOL, rtol=TOL)
    # the number of steps matters, and a different prompt changes the actions
    c = m.sample_actions(images, img_masks, tokens, lang_masks, state, noise=noise, num_steps=2)
    assert (c - a).abs().max() > 1e-3
    other = tokens.clone()
    other[0, 0] += 1
    d = m.sample_actions(images, img_masks, other, lang_masks, state, noise=noise)
    assert (d[0] - a[0]).abs().max() > 1e-4 and (d[1] - a[1]).abs().max() < TOL


def test_lerobot_config_round_trip():
    d = SmolVLAConfig.tiny().to_lerobot()
    d["input_features"] = {"observation.state": {"type": "STATE", "shape": [4]}}
    d["some_future_key"] = [1, 2]
    cfg = SmolVLAConfig.from_lerobot(d)
    assert cfg.to_lerobot() == d and cfg.extra["some_future_key"] == [1, 2]
    assert d["type"] == "smolvla" and d[VLM_CONFIG_KEY]["text_config"]["hidden_size"] == 64
    assert d["normalization_mapping"] == {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
    assert d["n_obs_steps"] == 1 and d["optimizer_lr"] == 1e-4 and d["num_vlm_layers"] == 2
    base = SmolVLAConfig.from_lerobot({"type": "smolvla"})
    assert base.to_lerobot() == {
        "type": "smolvla",
        **{k: v for k, v in SmolVLAConfig().to_lerobot().items() if k not in LEROBOT_DEFAULTS},
    }
    assert (
        base.to_lerobot()["resize_imgs_with_padding"] == [512, 512]
        and VLM_CONFIG_KEY not in base.to_lerobot()
    )
    with pytest.raises(InputError, match=VLM_CONFIG_KEY):
        SmolVLAConfig.from_lerobot(
            {"type": "smolvla", "vlm_model_name": "someone/other-vlm"}
        ).resolved_vlm_config()


def test_published_size_on_the_meta_device():
    """SmolVLA with SmolVLM2-500M (16 of 32 layers) and the 0.75-width expert: 450,046,176 parameters."""
    with torch.device("meta"):
        m = SmolVLAModel(SmolVLAConfig())
    sd = m.state_dict()
    parts = {
        "vision_model": 86_433_024,  # SigLIP 12 x 768, 512 px / patch 16
        "connector": 11_796_480,  # 16 * 768 -> 960
        "text_model.embed_tokens": 47_308_800,  # 49280 x 960
        "text_model.layers": 157_317_120,  # 16 x 9,832,320
        "text_model.norm": 960,
        "lm_head": 47_308_800,  # untied, unused
        "lm_expert": 98_245_840,  # 16 layers, width 720, MLP 2048, 8 cross-attention k/v 320 -> 320
        "state_proj": 31_680,
        "action_": 1_603_472,  # in / out / time MLP
    }
    got = dict.fromkeys(parts, 0)
    for k, v in sd.items():
        got[next(p for p in parts if p in k)] += v.numel()
    assert got == parts
    assert sum(p.numel() for p in m.parameters()) == sum(parts.values()) == 450_046_176
    e = m.vlm_with_expert
    assert (e.num_vlm_layers, e.num_expert_layers, e.expert_hidden_size) == (16, 16, 720)
    assert e.lm_expert.layers[1].self_attn.k_proj.weight.shape == (320, 320)  # cross: reads VLM keys
    assert e.lm_expert.layers[0].self_attn.k_proj.weight.shape == (320, 720)  # self
    assert len(sd) == 500 and "vlm_with_expert.lm_expert.embed_tokens.weight" not in sd
    vc, s = e.vlm.config.vision_config, e.vlm.config.scale_factor
    assert (vc.image_size // vc.patch_size) ** 2 // s**2 == 64  # visual tokens per 512 px frame


def test_bfloat16_weights_take_float32_inputs():
    cfg = SmolVLAConfig.tiny()
    m = _model(cfg)
    images, img_masks, tokens, lang_masks, state, actions, noise = _inputs(cfg)
    a32 = m.sample_actions(images, img_masks, tokens, lang_masks, state, noise=noise)
    m = m.to(torch.bfloat16)
    loss = m(
        images, img_masks, tokens, lang_masks, state, actions, noise=noise, time=torch.tensor([0.5, 0.5])
    )
    a = m.sample_actions(images, img_masks, tokens, lang_masks, state, noise=noise)
    b = m.sample_actions(images, img_masks, tokens, lang_masks, state, noise=noise, use_cache=False)
    assert loss.dtype == a.dtype == torch.float32
    torch.testing.assert_close(a, b, atol=1e-3, rtol=0)
    assert (a - a32).abs().max() < 0.05 * a32.abs().mean()
