"""Vision featurizers (second-to-last-block patch features, fusion, pixel preprocessing) and text tokenizers."""

from __future__ import annotations

import json

import pytest
import torch

from vlaforge.errors import InputError
from vlaforge.models.presets import ViTSpec, get_preset
from vlaforge.models.text import (
    LLAMA_EMPTY_TOKEN,
    ByteTokenizer,
    LlamaTokenizer,
    append_empty_token,
    format_prompt,
)
from vlaforge.models.vision import VisionFeaturizer


@pytest.fixture
def featurizer() -> VisionFeaturizer:
    torch.manual_seed(0)
    return VisionFeaturizer(get_preset("tiny").vision, 64).eval()


def test_features_are_second_to_last_block_patches(featurizer):
    pixels = featurizer.preprocess(torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8))
    with torch.no_grad():
        fast = featurizer(pixels)
        ref = featurizer.reference_features(pixels)
        # And not the last block's output, nor the final-normed one.
        last = featurizer.featurizer(pixel_values=pixels[:, :3], output_hidden_states=True)
    assert fast.shape == (2, 16, 64 + 64)  # 16 patches, DINOv2 64 + SigLIP 64 channels
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    n_prefix = 1 + 4  # class + 4 registers dropped
    assert not torch.allclose(fast[..., :64], last.hidden_states[-1][:, n_prefix:], atol=1e-3)
    assert not torch.allclose(fast[..., :64], last.last_hidden_state[:, n_prefix:], atol=1e-3)


def test_exact_gelu_and_eps(featurizer):
    for tower in featurizer.towers:
        assert tower.config.hidden_act == "gelu" and tower.config.layer_norm_eps == 1e-6


def test_preprocess_six_channels_and_resize(featurizer):
    img = torch.full((1, 100, 80, 3), 255, dtype=torch.uint8)
    x = featurizer.preprocess(img)
    assert x.shape == (1, 6, 64, 64)
    # White: DINO channels (1 - mean) / std, SigLIP channels (1 - 0.5) / 0.5 = 1.
    torch.testing.assert_close(x[0, 0, 0, 0], torch.tensor((1 - 0.485) / 0.229))
    torch.testing.assert_close(x[0, 3:], torch.ones(3, 64, 64))
    with pytest.raises(ValueError, match="uint8"):
        featurizer.preprocess(img.float())


def test_single_siglip_tower():
    f = VisionFeaturizer((ViTSpec("siglip", 32, 2, 2, 64, 8),), 32)
    x = f.preprocess(torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
    assert x.shape == (1, 3, 32, 32) and f(x).shape == (1, 16, 32)
    torch.testing.assert_close(f(x), f.reference_features(x))


def test_prompt_format_exact():
    assert (
        format_prompt("Open The Drawer") == "In: What action should the robot take to open the drawer?\nOut:"
    )


def test_byte_tokenizer():
    tok = ByteTokenizer(515)
    ids = tok.encode_prompt("push é")
    assert min(ids) >= 3 and max(ids) < 259  # bytes only: never special or action ids
    assert tok.decode(ids) == format_prompt("push é")
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    with pytest.raises(ValueError, match="259"):
        ByteTokenizer(100)


def test_append_empty_token_rule():
    assert append_empty_token([1, 5]) == [1, 5, LLAMA_EMPTY_TOKEN]
    assert append_empty_token([1, 5, LLAMA_EMPTY_TOKEN]) == [1, 5, LLAMA_EMPTY_TOKEN]


def test_llama_tokenizer_from_local_file(tmp_path):
    # A small word-level tokenizer.json with Llama's special ids and the "▁" piece at 29871.
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["In:", "What", "action", "should", "the", "robot", "take", "to", "open", "drawer?", "Out:"]
    vocab = {
        "<unk>": 0,
        "<s>": 1,
        "</s>": 2,
        **{w: 3 + i for i, w in enumerate(words)},
        "▁": LLAMA_EMPTY_TOKEN,
    }
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.save(str(tmp_path / "tokenizer.json"))
    tok = LlamaTokenizer(tmp_path)
    ids = tok.encode_prompt("open the drawer")
    assert ids[-1] == LLAMA_EMPTY_TOKEN and ids[0] == vocab["In:"] and 1 not in ids
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"
    with pytest.raises(InputError, match="tokenizer.json"):
        LlamaTokenizer(tmp_path / "nowhere")
