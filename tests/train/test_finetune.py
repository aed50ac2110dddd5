"""Freezing strategies and LoRA: parameter counts against the OpenVLA paper, what trains, how it saves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.models.policy import Policy
from vlaforge.train import checkpoint as ckpt
from vlaforge.train.finetune import (
    apply_freeze,
    apply_lora,
    has_lora,
    lora_param_count,
    lora_target_names,
    merged_lora,
    param_counts,
)
from vlaforge.train.loop import TrainConfig, restore_policy, train
from vlaforge.types import Embodiment, FeatureStats, NormStats


def _openvla_embodiment() -> tuple[Embodiment, NormStats]:
    emb = Embodiment(
        7,
        [f"a{i}" for i in range(6)] + ["gripper"],
        [True] * 6 + [False],
        [-1] * 7,
        [1] * 7,
        5.0,
        ["primary"],
        224,
    )
    zeros = np.zeros(7)
    return emb, NormStats(
        {
            "action": FeatureStats(
                zeros, zeros + 1, zeros, zeros + 1, zeros - 1, zeros + 1, mask=np.array(emb.normalize_mask)
            )
        }
    )


@pytest.fixture(scope="module")
def siglip_7b():
    """OpenVLA-7B's SigLIP-only variant on the meta device (shapes only, no memory)."""
    emb, stats = _openvla_embodiment()
    with torch.device("meta"):
        return Policy.from_preset("openvla-7b-siglip", "tokens", emb, stats, tokenizer="byte")


def _tiny(tiny_dataset, head="chunk") -> Policy:
    ds = LeRobotDataset(tiny_dataset)
    torch.manual_seed(0)
    return Policy.from_preset("tiny", head, ds.embodiment(), ds.norm_stats())


# The OpenVLA paper's fine-tuning table (DESIGN.md), in millions, vision + projector + LLM only.
PAPER_M = {"full": 7188.1, "frozen-vision": 6760.4, "last-layer": 465.1, "sandwich": 914.2}


@pytest.mark.parametrize("strategy", list(PAPER_M))
def test_freeze_counts_match_the_openvla_table(siglip_7b, strategy):
    counts = apply_freeze(siglip_7b, strategy)
    assert round(counts["backbone_trainable"] / 1e6, 1) == PAPER_M[strategy]
    assert counts["backbone_total"] == 7_188_124_608
    # The token head reuses lm_head: nothing new, so the totals are the backbone's.
    assert counts["new_total"] == 0 and counts["trainable"] == counts["backbone_trainable"]


def test_lora_count_on_the_7b_model_equals_the_analytic_count(siglip_7b):
    apply_freeze(siglip_7b, "full")
    expect = lora_param_count(siglip_7b, 32)
    # Llama-2 7B: 32 blocks x (4 x 32 (4096 + 4096) + 3 x 32 (4096 + 11008)) adapters = 79,953,920.
    llm = sum(
        32 * (m.in_features + m.out_features)
        for n, m in siglip_7b.named_modules()
        if n in set(lora_target_names(siglip_7b)) and n.startswith("backbone.llm.")
    )
    assert llm == 79_953_920
    counts = apply_lora(siglip_7b, rank=32, alpha=16)
    assert counts["backbone_trainable"] == expect == 98_123_776
    names = lora_target_names(siglip_7b)
    assert not any(n.endswith("lm_head") for n in names)  # peft's all-linear skips the output layer


def test_lora_analytic_count_equals_peft_on_tiny(tiny_dataset):
    policy = _tiny(tiny_dataset)
    expect = lora_param_count(policy, 4)
    counts = apply_lora(policy, rank=4, alpha=8)
    assert has_lora(policy)
    assert counts["backbone_trainable"] == expect
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith(("head.", "backbone.state_proj.")) for n in trainable)
    assert any(n.startswith("head.") for n in trainable)
    assert counts["new_trainable"] == counts["new_total"] > 0


def test_freeze_strategies_on_tiny_pick_the_right_modules(tiny_dataset):
    policy = _tiny(tiny_dataset)
    bb = policy.backbone
    last = bb.llm.model.layers[-1]

    def trains(module) -> bool:
        return all(p.requires_grad for p in module.parameters())

    def frozen(module) -> bool:
        return not any(p.requires_grad for p in module.parameters())

    apply_freeze(policy, "frozen-vision")
    assert frozen(bb.vision) and trains(bb.projector) and trains(bb.llm) and trains(policy.head)
    apply_freeze(policy, "last-layer")
    assert frozen(bb.vision) and frozen(bb.projector) and frozen(bb.llm.model.layers[0])
    assert trains(last) and trains(bb.llm.model.embed_tokens) and trains(bb.llm.lm_head)
    assert trains(bb.llm.model.norm) and trains(policy.head) and trains(bb.state_proj)
    apply_freeze(policy, "sandwich")
    assert trains(bb.vision) and trains(bb.projector) and frozen(bb.llm.model.layers[0]) and trains(last)
    counts = apply_freeze(policy, "full")
    assert counts["trainable"] == counts["total"] == sum(p.numel() for p in policy.parameters())
    with pytest.raises(ValueError, match="unknown freeze strategy"):
        apply_freeze(policy, "frozen")


def test_merged_lora_saves_a_plain_policy_and_leaves_training_weights(tiny_dataset, tmp_path):
    policy = _tiny(tiny_dataset)
    apply_lora(policy, rank=4, alpha=8)
    for n, p in policy.named_parameters():  # give the adapters a non-zero update
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    with merged_lora(policy):
        assert not has_lora(policy)
        policy.save_pretrained(tmp_path / "p")
    after = policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    loaded = Policy.from_pretrained(tmp_path / "p")
    batch = _obs_batch(tiny_dataset)
    np.testing.assert_allclose(
        loaded.predict_action_batch(batch), policy.predict_action_batch(batch), atol=1e-5
    )


def _obs_batch(tiny_dataset, n=3) -> dict:
    from vlaforge.data.sampler import ChunkSampler

    b = next(ChunkSampler(LeRobotDataset(tiny_dataset), batch_size=n, chunk_size=1, seed=1))
    return {"images": b["images"], "state": b["state"], "instruction": b["instruction"]}


def test_lora_run_trains_adapters_resumes_exactly_and_loads(tiny_dataset, tmp_path):
    def cfg(out, **kw):
        return TrainConfig(
            dataset=str(tiny_dataset),
            out=str(out),
            steps=4,
            batch_size=2,
            log_every=2,
            device="cpu",
            lora_rank=4,
            lora_alpha=8,
            **kw,
        )

    straight = train(cfg(tmp_path / "a"))
    split = tmp_path / "b"
    train(cfg(split), stop_after=2)
    train(cfg(split, resume=True))
    for name in ("model.safetensors", ckpt.ADAPTER_FILE, ckpt.OPTIMIZER_FILE):
        a = ckpt.load_file(str(straight / "last" / name))
        b = ckpt.load_file(str(split / "last" / name))
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), name

    adapters = ckpt.load_file(str(split / "last" / ckpt.ADAPTER_FILE))
    assert adapters and all("lora_" in k or k.startswith(("head.", "backbone.state_proj.")) for k in adapters)
    # The policy dir is a plain (merged) policy: no peft keys, and it acts like the training module.
    trained = restore_policy(split / "last")
    assert has_lora(trained)
    plain = Policy.from_pretrained(split / "last")
    assert not any("lora" in k for k in plain.state_dict())
    batch = _obs_batch(tiny_dataset)
    np.testing.assert_allclose(
        plain.predict_action_batch(batch), trained.predict_action_batch(batch), atol=1e-5
    )
    # Frozen base weights did not move: they equal a fresh build with the same seed.
    fresh = _tiny(tiny_dataset)
    key = "backbone.llm.model.embed_tokens.weight"  # random init, not adapted
    assert torch.equal(plain.state_dict()[key], fresh.state_dict()[key])
    q = "backbone.llm.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(plain.state_dict()[q], fresh.state_dict()[q])  # the merge changed adapted layers


def test_param_counts_split_backbone_and_new(tiny_dataset):
    policy = _tiny(tiny_dataset, head="chunk")
    c = param_counts(policy)
    head = sum(p.numel() for p in policy.head.parameters())
    state = sum(p.numel() for p in policy.backbone.state_proj.parameters())
    assert c["new_total"] == head + state
    assert c["backbone_total"] + c["new_total"] == c["total"]
