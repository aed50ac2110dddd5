"""pi0 (`vlaforge.models.pi0`), with and without pi0.5's adaptive-RMSNorm time conditioning: checked against
an independent plain-torch forward written from openpi's definitions (tests/models/pi0_reference.py), cache / no-cache and batch / single agreement, LeRobot's
config round trip and key names, and the real size's parameter count built on the meta device."""

from __future__ import annotations

import pi0_reference as ref
import pytest
import torch

from vlaforge.errors import InputError
from vlaforge.models.pi0 import Pi0Config, Pi0Model, parameter_parts

B = 2


@pytest.fixture(scope="module", params=[False, True], ids=["pi0", "adarms"])
def model(request) -> Pi0Model:
    """pi0, and pi0 with pi0.5's adaptive-RMSNorm time conditioning (`adarms_time`)."""
    from dataclasses import replace

    torch.manual_seed(0)
    m = Pi0Model(replace(Pi0Config.tiny(), adarms_time=request.param)).eval()
    with torch.no_grad():  # every tensor random (norm scales start at 0 in Gemma's init)
        for p in m.parameters():
            p.normal_(0.0, 0.15)
    return m


def inputs(cfg: Pi0Config, lengths=(5, 11), seed=1):
    g = torch.Generator().manual_seed(seed)
    R, L = cfg.image_resolution[0], cfg.tokenizer_max_length
    n = len(lengths)
    images = [torch.rand(n, 3, R, R, generator=g) * 2 - 1 for _ in range(2)]
    img_masks = [torch.ones(n, dtype=torch.bool), torch.tensor([True, False][:n])]
    tokens = torch.randint(1, cfg.vocab_size, (n, L), generator=g)
    masks = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    tokens = torch.where(masks, tokens, 0)
    state = torch.randn(n, cfg.max_state_dim, generator=g)
    actions = torch.randn(n, cfg.chunk_size, cfg.max_action_dim, generator=g)
    noise = torch.randn(n, cfg.chunk_size, cfg.max_action_dim, generator=g)
    return images, img_masks, tokens, masks, state, actions, noise


def test_hidden_states_velocity_and_loss_match_reference(model):
    cfg = model.config
    images, img_masks, tokens, masks, state, actions, noise = inputs(cfg)
    t = torch.tensor([0.3, 0.85])
    x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    with torch.no_grad():
        hidden: list = []
        prefix = model.embed_prefix(images, img_masks, tokens, masks)
        v = model.velocity(prefix, state, x_t, t, hidden=hidden)
        ref_hidden, ref_v = ref.velocity(sd, cfg, images, img_masks, tokens, masks, state, x_t, t)
        loss = model(images, img_masks, tokens, masks, state, actions, noise=noise, time=t)
        ref_loss = ref.loss(sd, cfg, images, img_masks, tokens, masks, state, actions, noise, t)
    assert len(hidden) == len(ref_hidden) == cfg.vlm_size.depth
    pad = prefix[1]  # padded prompt positions are excluded from everything valid; compare valid ones
    for ours, theirs in zip(hidden, ref_hidden, strict=True):
        assert (ours[0] - theirs[0])[pad].abs().max() < 1e-5
        assert (ours[1] - theirs[1]).abs().max() < 1e-5
    assert ref_v.abs().max() > 0.1  # a non-trivial field
    assert (v - ref_v).abs().max() < 1e-5
    assert loss.shape == (B, cfg.chunk_size, cfg.max_action_dim)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)  # squares of values up to ~7


def test_sample_actions_match_reference_and_cache(model):
    cfg = model.config
    images, img_masks, tokens, masks, state, _, noise = inputs(cfg)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    cached = model.sample_actions(images, img_masks, tokens, masks, state, noise=noise, num_steps=3)
    full = model.sample_actions(
        images, img_masks, tokens, masks, state, noise=noise, num_steps=3, use_cache=False
    )
    with torch.no_grad():
        theirs = ref.sample(sd, cfg, images, img_masks, tokens, masks, state, noise, steps=3)
    assert (cached - noise).abs().max() > 0.1
    assert (cached - full).abs().max() < 1e-5
    assert (cached - theirs).abs().max() < 1e-5


def test_batch_equals_one_by_one(model):
    """Two prompts of different lengths right padded in one batch == each alone without padding."""
    cfg = model.config
    images, img_masks, tokens, masks, state, actions, noise = inputs(cfg, lengths=(4, 13))
    t = torch.tensor([0.2, 0.7])
    with torch.no_grad():
        loss = model(images, img_masks, tokens, masks, state, actions, noise=noise, time=t)
        acts = model.sample_actions(images, img_masks, tokens, masks, state, noise=noise, num_steps=2)
        for i, n in enumerate((4, 13)):
            one = ([im[i : i + 1] for im in images], [m[i : i + 1] for m in img_masks])
            tok, msk = tokens[i : i + 1, :n], masks[i : i + 1, :n]
            li = model(
                *one,
                tok,
                msk,
                state[i : i + 1],
                actions[i : i + 1],
                noise=noise[i : i + 1],
                time=t[i : i + 1],
            )
            ai = model.sample_actions(*one, tok, msk, state[i : i + 1], noise=noise[i : i + 1], num_steps=2)
            assert (li - loss[i : i + 1]).abs().max() < 1e-5
            assert (ai - acts[i : i + 1]).abs().max() < 1e-5


def test_time_sampling_and_default_noise(model):
    torch.manual_seed(3)
    t = model.sample_time(20_000, torch.device("cpu"))
    assert t.min() >= 0.001 and t.max() <= 1.0
    # E[0.999 Beta(1.5, 1) + 0.001] = 0.999 * 1.5 / 2.5 + 0.001
    assert abs(t.mean().item() - (0.999 * 0.6 + 0.001)) < 0.005


LEROBOT_CONFIG = {
    "type": "pi0",
    "n_obs_steps": 1,
    "input_features": {"observation.state": {"type": "STATE", "shape": [14]}},
    "output_features": {"action": {"type": "ACTION", "shape": [14]}},
    "device": "cuda",
    "use_amp": False,
    "push_to_hub": True,
    "repo_id": None,
    "paligemma_variant": "gemma_2b",
    "action_expert_variant": "gemma_300m",
    "dtype": "bfloat16",
    "chunk_size": 50,
    "n_action_steps": 50,
    "max_state_dim": 32,
    "max_action_dim": 32,
    "num_inference_steps": 10,
    "time_sampling_beta_alpha": 1.5,
    "time_sampling_beta_beta": 1.0,
    "time_sampling_scale": 0.999,
    "time_sampling_offset": 0.001,
    "min_period": 0.004,
    "max_period": 4.0,
    "rtc_config": None,
    "image_resolution": [224, 224],
    "empty_cameras": 0,
    "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
    "gradient_checkpointing": False,
    "compile_model": False,
    "freeze_vision_encoder": False,
    "train_expert_only": False,
    "optimizer_lr": 2.5e-5,
    "tokenizer_max_length": 48,
}


def test_lerobot_config_round_trip():
    cfg = Pi0Config.from_lerobot(LEROBOT_CONFIG)
    assert cfg.to_lerobot() == LEROBOT_CONFIG
    assert (cfg.vlm_size.width, cfg.expert_size.width, cfg.vision_size.width) == (2048, 1024, 1152)
    tiny = Pi0Config.tiny().to_lerobot()
    assert Pi0Config.from_lerobot(tiny).to_lerobot() == tiny
    with pytest.raises(InputError, match="paligemma_variant.*gemma_2b"):
        Pi0Config.from_lerobot({**LEROBOT_CONFIG, "paligemma_variant": "gemma_2c"})


def test_real_size_on_meta_device():
    """pi0 at its published size: PaliGemma 3B (SigLIP So400m/14 + Gemma 2B) and the 300M expert. LeRobot
    keeps the expert's (unused) lm_head, so its state dict holds 263M more."""
    with torch.device("meta"):
        m = Pi0Model(Pi0Config())
    parts = parameter_parts(m)
    assert parts == {
        "siglip": 412_442_352,
        "projector": 2_361_344,
        "gemma_vlm": 2_508_531_712,  # Gemma 2B with its 257152 x 2048 embedding (lm_head tied)
        "expert": 574_788_608,  # 311_464_960 + lm_head 257152 x 1024
        "projections": 3_248_160,
    }
    expert_lm_head = 257_152 * 1024
    assert parts["siglip"] + parts["projector"] + parts["gemma_vlm"] == 2_923_335_408  # PaliGemma-3B
    assert parts["expert"] - expert_lm_head == 311_464_960  # openpi: "311M params"
    assert sum(parts.values()) - expert_lm_head == 3_238_048_528  # the paper's ~3.3B
    sd = m.state_dict()
    assert len(sd) == 778
    for key in (
        "paligemma_with_expert.paligemma.model.vision_tower.vision_model.encoder.layers.26.mlp.fc1.weight",
        "paligemma_with_expert.paligemma.model.multi_modal_projector.linear.weight",
        "paligemma_with_expert.paligemma.model.language_model.layers.17.self_attn.k_proj.weight",
        "paligemma_with_expert.paligemma.lm_head.weight",
        "paligemma_with_expert.gemma_expert.model.layers.17.mlp.down_proj.weight",
        "paligemma_with_expert.gemma_expert.lm_head.weight",
        "action_time_mlp_out.bias",
    ):
        assert key in sd
    assert not any("gemma_expert.model.embed_tokens" in k for k in sd)
    assert tuple(sd["paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj.weight"].shape) == (
        2048,
        1024,
    )


def test_lerobot_weights_stored_once_load_tied(model):
    """LeRobot's files hold the VLM's embedding once, as lm_head: a strict load fills the embedding, and
    a load with assign=True keeps one Parameter under both names."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    del sd["paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"]
    for assign in (False, True):
        torch.manual_seed(5)
        other = Pi0Model(model.config)
        other.load_state_dict(sd, strict=True, assign=assign)
        pw = other.paligemma_with_expert.paligemma
        assert pw.lm_head.weight is pw.model.language_model.embed_tokens.weight
        assert torch.equal(pw.lm_head.weight, sd["paligemma_with_expert.paligemma.lm_head.weight"])
