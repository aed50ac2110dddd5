"""Self-tests of the independent OpenVLA reference (openvla_reference.py) and its checkpoint writer
(openvla_checkpoint.py).

The decoder is checked against transformers' Llama, the ViT pieces against torch's own conv2d, GELU and
TransformerEncoderLayer, and the written files against the Hugging Face layout they imitate.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from openvla_checkpoint import make_dataset_statistics, make_openvla_checkpoint
from openvla_reference import (
    LLAMA_EMPTY_TOKEN,
    PROMPT_WORDS,
    TEST_INSTRUCTIONS,
    TEST_TIMM_IDS,
    RefModel,
    RefTower,
    bin_centers,
    decode_action_ids,
    gelu_exact,
    llama_logits,
    patch_embed,
    vit_block,
)
from PIL import Image
from safetensors import safe_open

ATOL = RTOL = 1e-5


def _image(seed: int = 0, h: int = 50, w: int = 67) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def fused(tmp_path_factory) -> RefModel:
    return make_openvla_checkpoint(tmp_path_factory.mktemp("openvla_fused"))


# --------------------------------------------------------------------------------------------------
# Math against independent implementations
# --------------------------------------------------------------------------------------------------


def _hf_llama(model: RefModel):
    from transformers import LlamaConfig, LlamaForCausalLM

    llm = model.llm
    cfg = LlamaConfig(
        vocab_size=llm["vocab_size"],
        hidden_size=llm["hidden"],
        intermediate_size=llm["intermediate"],
        num_hidden_layers=llm["layers"],
        num_attention_heads=llm["heads"],
        num_key_value_heads=llm["kv_heads"],
        rms_norm_eps=llm["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": llm["rope_theta"]},
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=32000,
    )
    cfg._attn_implementation = "eager"
    net = LlamaForCausalLM(cfg).eval()
    prefix = "language_model."
    sd = {k[len(prefix) :]: v for k, v in model.state.items() if k.startswith(prefix)}
    net.load_state_dict(sd, strict=True)
    assert net.config._attn_implementation == "eager"
    return net


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_llama_matches_transformers(tmp_path, kv_heads):
    model = make_openvla_checkpoint(
        tmp_path, llm={"kv_heads": kv_heads, "rope_theta": 500.0}, tokenizer=False
    )
    net = _hf_llama(model)
    embeds = torch.randn(2, 11, model.llm["hidden"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(inputs_embeds=embeds).logits
    torch.testing.assert_close(llama_logits(embeds, model.state, model.llm), expected, atol=ATOL, rtol=RTOL)


def test_full_logits_and_greedy_match_transformers_decoder(fused):
    net = _hf_llama(fused)
    pv = fused.pixel_values(_image())
    ids = fused.prompt_ids(TEST_INSTRUCTIONS[0])
    embeds = fused.input_embeddings(pv, ids)
    n = fused.vision_features(pv).shape[1]
    assert embeds.shape == (1, 1 + n + len(ids) - 1, fused.llm["hidden"])
    with torch.no_grad():
        torch.testing.assert_close(
            fused.logits(pv, ids), net(inputs_embeds=embeds).logits, atol=ATOL, rtol=RTOL
        )
        # Greedy decoding with transformers' decoder, one appended embedding at a time.
        table = fused.state["language_model.model.embed_tokens.weight"]
        seq = fused.input_embeddings(pv, [*ids, LLAMA_EMPTY_TOKEN])
        greedy = []
        for _ in range(7):
            nxt = int(net(inputs_embeds=seq).logits[0, -1].argmax())
            greedy.append(nxt)
            seq = torch.cat([seq, table[nxt][None, None]], dim=1)
    assert fused.predict_ids(pv, ids) == greedy
    assert all(31744 <= i < 32000 for i in greedy)  # the scaled action rows win, so bins are exercised


@pytest.mark.parametrize("hw", [(28, 42), (30, 31)])
def test_patch_embed_matches_conv2d(hw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *hw, generator=g)
    w, b = torch.randn(16, 3, 14, 14, generator=g) / 588**0.5, torch.randn(16, generator=g)
    expected = F.conv2d(x, w, b, stride=14).flatten(2).transpose(1, 2)
    torch.testing.assert_close(patch_embed(x, w, b), expected, atol=ATOL, rtol=RTOL)


def test_gelu_is_exact_erf_form():
    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(gelu_exact(x), F.gelu(x), atol=1e-6, rtol=1e-6)
    assert (gelu_exact(x) - F.gelu(x, approximate="tanh")).abs().max() > 1e-5


def test_vit_block_matches_torch_encoder_layer(fused):
    """A pre-norm nn.TransformerEncoderLayer is the ViT block without LayerScale (qkv = in_proj)."""
    tower = fused.towers[1]
    pre = "vision_backbone.fused_featurizer.blocks.0."
    s = fused.state
    layer = torch.nn.TransformerEncoderLayer(
        tower.hidden,
        tower.heads,
        tower.mlp,
        dropout=0.0,
        activation="gelu",
        layer_norm_eps=1e-6,
        batch_first=True,
        norm_first=True,
    ).eval()
    names = {
        "self_attn.in_proj_weight": "attn.qkv.weight",
        "self_attn.in_proj_bias": "attn.qkv.bias",
        "self_attn.out_proj.weight": "attn.proj.weight",
        "self_attn.out_proj.bias": "attn.proj.bias",
        "linear1.weight": "mlp.fc1.weight",
        "linear1.bias": "mlp.fc1.bias",
        "linear2.weight": "mlp.fc2.weight",
        "linear2.bias": "mlp.fc2.bias",
        "norm1.weight": "norm1.weight",
        "norm1.bias": "norm1.bias",
        "norm2.weight": "norm2.weight",
        "norm2.bias": "norm2.bias",
    }
    layer.load_state_dict({k: s[pre + v] for k, v in names.items()})
    x = torch.randn(2, 7, tower.hidden, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(vit_block(x, s, pre, tower.heads, False), layer(x), atol=ATOL, rtol=RTOL)

        # With LayerScale (DINOv2): the same residual branches, each scaled per channel.
        ls1, ls2 = 0.5 + torch.rand(tower.hidden), 0.5 + torch.rand(tower.hidden)
        s2 = {**s, pre + "ls1.scale_factor": ls1, pre + "ls2.scale_factor": ls2}
        h = layer.norm1(x)
        y = x + ls1 * layer.self_attn(h, h, h, need_weights=False)[0]
        y = y + ls2 * layer.linear2(F.gelu(layer.linear1(layer.norm2(y))))
        torch.testing.assert_close(vit_block(x, s2, pre, tower.heads, True), y, atol=ATOL, rtol=RTOL)


def test_features_use_second_to_last_block_and_drop_prefix(fused):
    pv = fused.pixel_values(_image())
    feats = fused.vision_features(pv)
    assert feats.shape == (1, 4, 32 + 48)  # (28/14)^2 patches, DINOv2 32 + SigLIP 48 channels
    # Changing the last block, the final norms or the attention pool leaves the features unchanged.
    s = dict(fused.state)
    for k in list(s):
        if re.search(r"(blocks\.2\.|featurizer\.norm\.|attn_pool\.)", k):
            s[k] = s[k] + 1.0
    moved = RefModel(s, fused.config, fused.towers, fused.image_size, fused.llm, fused.dataset_statistics)
    torch.testing.assert_close(moved.vision_features(pv), feats, atol=0, rtol=0)
    # ...but block 1 (the second to last) matters, as do the registers (they are attended to). (A
    # perturbation constant over channels would vanish in the registers' LayerNorm, hence random.)
    g = torch.Generator().manual_seed(5)
    for key in ("vision_backbone.featurizer.blocks.1.mlp.fc2.bias", "vision_backbone.featurizer.reg_token"):
        s = {**fused.state, key: fused.state[key] + 0.3 * torch.randn(fused.state[key].shape, generator=g)}
        moved = RefModel(s, fused.config, fused.towers, fused.image_size, fused.llm, fused.dataset_statistics)
        assert (moved.vision_features(pv) - feats).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------
# The written checkpoint
# --------------------------------------------------------------------------------------------------


def _expected_tower_keys(t: RefTower, pre: str) -> set[str]:
    keys = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    if t.kind == "dinov2_reg":
        keys |= {"cls_token", "reg_token"}
    else:
        for name in ("q", "kv", "proj", "norm", "mlp.fc1", "mlp.fc2"):
            keys |= {f"attn_pool.{name}.weight", f"attn_pool.{name}.bias"}
        keys.add("attn_pool.latent")
    for i in range(t.layers):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{name}.weight", f"blocks.{i}.{name}.bias"}
        if t.kind == "dinov2_reg":
            keys |= {f"blocks.{i}.ls1.scale_factor", f"blocks.{i}.ls2.scale_factor"}
    return {pre + k for k in keys}


def _load_all(directory) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():  # noqa: SIM118 - safe_open handles are not iterable
                assert k not in out
                out[k] = h.get_tensor(k)
    return out


@pytest.mark.parametrize(
    ("is_fused", "n_shards", "dtype"),
    [(True, 2, torch.float32), (False, 1, torch.float32), (True, 3, torch.bfloat16)],
)
def test_checkpoint_layout(tmp_path, is_fused, n_shards, dtype):
    model = make_openvla_checkpoint(tmp_path, fused=is_fused, n_shards=n_shards, dtype=dtype)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert shards == [f"model-{i:05d}-of-{n_shards:05d}.safetensors" for i in range(1, n_shards + 1)]
    assert sorted(set(index["weight_map"].values())) == shards
    tensors = _load_all(tmp_path)
    assert set(index["weight_map"]) == set(tensors) == set(model.state)
    for k, v in tensors.items():
        with safe_open(str(tmp_path / index["weight_map"][k]), framework="pt") as h:
            assert k in h.keys()  # noqa: SIM118 - safe_open handles are not containers
        assert v.dtype == dtype
        torch.testing.assert_close(v.float(), model.state[k], atol=0, rtol=0)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in tensors.values())

    # Names and shapes.
    expected = _expected_tower_keys(model.towers[0], "vision_backbone.featurizer.")
    if is_fused:
        expected |= _expected_tower_keys(model.towers[1], "vision_backbone.fused_featurizer.")
    fcs = ("fc1", "fc2", "fc3") if is_fused else ("fc1", "fc2")
    expected |= {f"projector.{fc}.{p}" for fc in fcs for p in ("weight", "bias")}
    llm_keys = {k for k in tensors if k.startswith("language_model.")}
    assert set(tensors) - llm_keys == expected
    d, v = model.llm["hidden"], model.llm["vocab_size"]
    assert tensors["language_model.model.embed_tokens.weight"].shape == (v, d)
    assert tensors["language_model.lm_head.weight"].shape == (v, d)
    assert len(llm_keys) == 2 + 1 + 9 * model.llm["layers"]
    assert not any(k.endswith(".bias") for k in llm_keys)
    dv = sum(t.hidden for t in model.towers)
    assert tensors["projector.fc1.weight"].shape == ((4 * dv, dv) if is_fused else (d, dv))
    first = model.towers[0]
    pos = tensors["vision_backbone.featurizer.pos_embed"]
    assert pos.shape == (1, (28 // 14) ** 2, first.hidden)  # patches only (no_embed_class)
    if is_fused:
        assert tensors["vision_backbone.featurizer.reg_token"].shape == (1, 4, 32)
        assert tensors["vision_backbone.fused_featurizer.attn_pool.kv.weight"].shape == (96, 48)

    # JSON files.
    config = json.loads((tmp_path / "config.json").read_text())
    stats = json.loads((tmp_path / "dataset_statistics.json").read_text())
    assert config == model.config and config["norm_stats"] == stats == model.dataset_statistics
    assert config["use_fused_vision_backbone"] is is_fused
    assert config["arch_specifier"] == ("no-align+fused-gelu-mlp" if is_fused else "no-align+gelu-mlp")
    assert config["timm_model_ids"] == [t.timm_id for t in model.towers]
    assert all(tid in TEST_TIMM_IDS for tid in config["timm_model_ids"])
    assert len(config["image_sizes"]) == len(config["timm_override_act_layers"]) == len(model.towers)
    assert config["torch_dtype"] == config["text_config"]["torch_dtype"] == str(dtype).split(".")[1]
    tc = config["text_config"]
    assert (tc["vocab_size"], tc["hidden_size"], tc["num_key_value_heads"]) == (
        32064,
        d,
        model.llm["kv_heads"],
    )
    pre_cfg = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert pre_cfg["means"] == ([[0.485, 0.456, 0.406], [0.5] * 3] if is_fused else [[0.5] * 3])
    assert pre_cfg["input_sizes"] == [[3, 28, 28]] * len(model.towers)


def test_single_file_and_seeds(tmp_path):
    a = make_openvla_checkpoint(tmp_path / "a", single_file=True, tokenizer=False, preprocessor=False)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["config.json", "dataset_statistics.json", "model.safetensors"]
    assert set(_load_all(tmp_path / "a")) == set(a.state)
    b = make_openvla_checkpoint(tmp_path / "b", tokenizer=False)
    c = make_openvla_checkpoint(tmp_path / "c", tokenizer=False, seed=1)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert not torch.equal(a.state["projector.fc1.weight"], c.state["projector.fc1.weight"])


def test_dataset_statistics(tmp_path):
    stats = make_dataset_statistics(["bridge_orig", "fractal"], action_dim=7)
    for entry in stats.values():
        a = entry["action"]
        assert len(set(a["q01"])) == 7 and len(set(a["q99"])) == 7
        assert all(lo < hi for lo, hi in zip(a["q01"], a["q99"]))
        assert a["mask"] == [True] * 6 + [False]
        assert set(entry["proprio"]) == {"mean", "std", "max", "min", "q01", "q99"}
    assert stats["bridge_orig"]["action"]["q01"] != stats["fractal"]["action"]["q01"]
    custom = {"mine": {**stats["fractal"], "action": {**stats["fractal"]["action"], "mask": [True] * 7}}}
    model = make_openvla_checkpoint(tmp_path, datasets=custom, tokenizer=False)
    assert (
        json.loads((tmp_path / "dataset_statistics.json").read_text()) == custom == model.dataset_statistics
    )


# --------------------------------------------------------------------------------------------------
# Processor and tokenizer
# --------------------------------------------------------------------------------------------------


def test_tokenizer_and_prompt_ids(fused):
    data = json.loads((fused.directory / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    assert len(vocab) == 32001 and sorted(vocab.values()) == list(range(32001))
    assert (vocab["<unk>"], vocab["<s>"], vocab["</s>"], vocab["▁"], vocab["<PAD>"]) == (
        0,
        1,
        2,
        29871,
        32000,
    )
    assert max(vocab[w] for w in PROMPT_WORDS) < 100
    for instruction in TEST_INSTRUCTIONS:
        ids = fused.prompt_ids(instruction)
        assert ids[0] == 1 and 1 not in ids[1:] and 0 not in ids and ids[-1] == vocab["Out:"]
    assert fused.prompt_ids("Pick Up The Red Block") == fused.prompt_ids("pick up the red block")
    assert 0 in fused.prompt_ids("stack the cups")  # unknown words are <unk>, deterministically


def test_pixel_values(fused):
    white = np.full((40, 30, 3), 255, dtype=np.uint8)
    x = fused.pixel_values(white)
    assert x.shape == (1, 6, 28, 28) and x.dtype == torch.float32
    torch.testing.assert_close(
        x[0, :3, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    )
    torch.testing.assert_close(x[0, 3:], torch.ones(3, 28, 28))
    img = _image()
    torch.testing.assert_close(
        fused.pixel_values(img), fused.pixel_values(Image.fromarray(img)), atol=0, rtol=0
    )
    resized = np.asarray(Image.fromarray(img).resize((28, 28), Image.BICUBIC)).astype(np.float32) / 255
    torch.testing.assert_close(
        fused.pixel_values(img)[0, 3:], torch.from_numpy((resized - 0.5) / 0.5).permute(2, 0, 1)
    )


# --------------------------------------------------------------------------------------------------
# Action decoding
# --------------------------------------------------------------------------------------------------


def test_decode_out_of_range_and_bins(fused):
    centres = bin_centers()
    assert centres.shape == (255,) and centres[0] == pytest.approx(-1 + 1 / 255)
    stats = fused.dataset_statistics["bridge_orig"]["action"]
    q01, q99 = np.array(stats["q01"]), np.array(stats["q99"])
    # id 5 -> 32000 - 5 - 1 = 31994 -> clipped to 254; <PAD>-range ids go negative -> clipped to 0.
    for ids, idx in (
        ([5] * 7, 254),
        ([31745] * 7, 254),
        ([31999] * 7, 0),
        ([32010] * 7, 0),
        ([31900] * 7, 99),
    ):
        a = decode_action_ids(ids, stats)
        norm = centres[idx]
        np.testing.assert_allclose(
            a[:6], 0.5 * (norm + 1) * (q99[:6] - q01[:6]) + q01[:6], rtol=0, atol=1e-12
        )
        assert a[6] == norm  # the gripper is masked out: left normalised
    no_mask = {k: v for k, v in stats.items() if k != "mask"}
    assert decode_action_ids([31999] * 7, no_mask)[6] == pytest.approx(
        0.5 * (centres[0] + 1) * (q99[6] - q01[6]) + q01[6]
    )


def test_predict_action_empty_token_rule(fused, monkeypatch):
    seen: list[list[int]] = []

    def fake_logits(self, pixel_values, input_ids):
        ids = torch.as_tensor(input_ids).reshape(1, -1)
        seen.append(ids[0].tolist())
        out = torch.zeros(1, ids.shape[1] + 3, 32064)
        out[0, -1, 5] = 1.0  # always predicts id 5
        return out

    monkeypatch.setattr(RefModel, "logits", fake_logits)
    pv = torch.zeros(1, 6, 28, 28)
    prompt = fused.prompt_ids(TEST_INSTRUCTIONS[0])
    action = fused.predict_action(pv, prompt, "bridge_orig")
    np.testing.assert_allclose(
        action, decode_action_ids([5] * 7, fused.dataset_statistics["bridge_orig"]["action"])
    )
    assert (
        seen[0] == [*prompt, LLAMA_EMPTY_TOKEN] and len(seen) == 7 and seen[-1] == [*prompt, 29871, *[5] * 6]
    )
    seen.clear()
    assert fused.predict_ids(pv, torch.tensor([[*prompt, LLAMA_EMPTY_TOKEN]])) == [5] * 7
    assert seen[0] == [*prompt, LLAMA_EMPTY_TOKEN]  # appended once, not twice


def test_predict_action_end_to_end(fused, tmp_path):
    pv = fused.pixel_values(_image(3))
    ids = fused.prompt_ids(TEST_INSTRUCTIONS[1])
    action = fused.predict_action(pv, ids, "bridge_orig")
    assert action.shape == (7,) and action.dtype == np.float64
    np.testing.assert_array_equal(
        action,
        decode_action_ids(fused.predict_ids(pv, ids), fused.dataset_statistics["bridge_orig"]["action"]),
    )
    single = make_openvla_checkpoint(tmp_path, fused=False)
    spv = single.pixel_values(_image(3))
    assert spv.shape == (1, 3, 28, 28) and single.vision_features(spv).shape == (1, 4, 48)
    assert single.predict_action(spv, ids, "bridge_orig").shape == (7,)
