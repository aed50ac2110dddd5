"""Policy: training loss, prediction in robot units, save/load round trips, clear load errors, overfitting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vlaforge import Policy as LazyPolicy
from vlaforge.errors import InputError
from vlaforge.models.policy import Policy


def _obs(batch: dict, i: int = 0) -> dict:
    return {
        "images": {c: x[i].numpy() for c, x in batch["images"].items()},
        "state": batch["state"][i].numpy(),
        "instruction": batch["instruction"][i],
    }


@pytest.mark.parametrize("head", ["chunk", "tokens"])
def test_save_load_round_trip_gives_identical_actions(head, embodiment, norm_stats, h, tmp_path):
    policy = Policy.from_preset("tiny", head, embodiment, norm_stats)
    batch = h.batch(B=2)
    before = policy.predict_action_batch(batch)
    policy.save_pretrained(tmp_path / "p")
    assert sorted(f.name for f in (tmp_path / "p").iterdir()) == [
        "config.json",
        "model.safetensors",
        "norm_stats.json",
    ]
    loaded = Policy.from_pretrained(tmp_path / "p")
    assert loaded.config == policy.config
    after = loaded.predict_action_batch(batch)
    np.testing.assert_array_equal(before, after)
    H = 8 if head == "chunk" else 1
    assert after.shape == (2, H, 4) and after.dtype == np.float32
    assert loaded.execute_steps == H
    single = loaded.predict_action(_obs(batch, 1))
    np.testing.assert_allclose(single, after[1], atol=1e-5)


def test_config_is_json_and_lazy_import(embodiment, norm_stats):
    assert LazyPolicy is Policy
    cfg = Policy.from_preset("tiny", "chunk", embodiment, norm_stats, chunk_size=4).config
    back = json.loads(json.dumps(cfg))
    assert back["head"]["kind"] == "chunk" and back["chunk_size"] == 4 and back["image_size"] == 64
    assert back["embodiment"]["camera_names"] == ["corner2"]
    assert back["text_tokenizer"] == {"kind": "byte", "vocab_size": 515}


def test_actions_are_unnormalised_and_clipped(embodiment, norm_stats, h):
    policy = Policy.from_preset("tiny", "chunk", embodiment, norm_stats)
    with torch.no_grad():  # push the chunk head's output far outside [-1, 1]
        policy.head.mlp[-1].bias.fill_(5.0)
    out = policy.predict_action(_obs(h.batch(B=1)))
    # Normalised dims: 0.5 (5 + 1)(q99 - q01) + q01 = 4.0 -> clipped to the limit 1.0; gripper 5 -> 1.0.
    np.testing.assert_array_equal(out, np.ones((8, 4), np.float32))
    assert policy.training  # prediction restores the training mode


def test_bad_observations_are_clear_errors(embodiment, norm_stats, h):
    policy = Policy.from_preset("tiny", "chunk", embodiment, norm_stats)
    obs = _obs(h.batch(B=1))
    with pytest.raises(ValueError, match=r"lacks camera\(s\) \['corner2'\]"):
        policy.predict_action({**obs, "images": {"front": obs["images"]["corner2"]}})
    with pytest.raises(ValueError, match="state_dim 6"):
        policy.predict_action({**obs, "state": np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match="needs a state"):
        policy.predict_action({**obs, "state": None})


def test_two_cameras(h, norm_stats):
    emb = h.embodiment(cameras=("corner2", "gripper"))
    policy = Policy.from_preset("tiny", "chunk", emb, norm_stats)
    batch = h.batch(B=2, cameras=("corner2", "gripper"))
    ctx = policy._context(batch["images"], batch["state"], batch["instruction"])
    assert policy.backbone.embed_images(ctx.images).shape == (2, 32, 128)  # 2 cameras x 16 patches
    loss, _ = policy.compute_loss(batch)
    assert torch.isfinite(loss)


def test_batch_shorter_than_chunk_is_a_clear_error(embodiment, norm_stats, h):
    policy = Policy.from_preset("tiny", "chunk", embodiment, norm_stats)
    with pytest.raises(ValueError, match="chunk_size 8"):
        policy.compute_loss(h.batch(B=2, H=4))


def test_padded_steps_do_not_count(embodiment, norm_stats, h):
    policy = Policy.from_preset("tiny", "chunk", embodiment, norm_stats)
    batch = h.batch(B=2)
    loss_a, _ = policy.compute_loss(batch)
    batch["actions"][0, 4:] += 0.5  # sample 0's steps 4.. are padded
    loss_b, _ = policy.compute_loss(batch)
    torch.testing.assert_close(loss_a, loss_b)


# ------------------------------------------------------------------ from_pretrained errors
@pytest.fixture
def saved(embodiment, norm_stats, tmp_path):
    return Policy.from_preset("tiny", "chunk", embodiment, norm_stats).save_pretrained(tmp_path / "p")


def test_missing_file(saved):
    (saved / "norm_stats.json").unlink()
    with pytest.raises(InputError, match=r"missing \['norm_stats.json'\]"):
        Policy.from_pretrained(saved)


def test_mismatched_norm_stats(saved, h):
    h.stats(action_dim=7, mask=[True] * 6 + [False]).save(saved / "norm_stats.json")
    with pytest.raises(ValueError, match=r"action.min has shape \(7,\); the embodiment expects \(4,\)"):
        Policy.from_pretrained(saved)


def test_wrong_shaped_tensor(saved):
    weights = load_file(str(saved / "model.safetensors"))
    key = "backbone.projector.fc3.weight"
    weights[key] = torch.zeros(128, 64)
    save_file(weights, str(saved / "model.safetensors"))
    with pytest.raises(
        ValueError, match=r"'backbone.projector.fc3.weight' has shape \(128, 64\).*\(128, 128\)"
    ):
        Policy.from_pretrained(saved)


def test_missing_tensor(saved):
    weights = load_file(str(saved / "model.safetensors"))
    del weights["head.placeholders"]
    save_file(weights, str(saved / "model.safetensors"))
    with pytest.raises(ValueError, match="missing \\['head.placeholders'\\]"):
        Policy.from_pretrained(saved)


# ------------------------------------------------------------------ learning
@pytest.mark.parametrize("head", ["chunk", "tokens"])
def test_overfits_one_batch(head, embodiment, norm_stats, h):
    policy = Policy.from_preset("tiny", head, embodiment, norm_stats, chunk_size=2)
    batch = h.batch(B=4, H=2)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    first = None
    for _ in range(50):
        loss, metrics = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else metrics
    assert metrics["loss"] < 0.2 * first["loss"], (first, metrics)
    assert metrics["l1"] < 0.1
    if head == "tokens":
        assert metrics["token_acc"] > 0.9
