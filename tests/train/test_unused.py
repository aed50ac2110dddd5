"""Every trainable parameter gets a gradient: modules whose outputs never reach the loss (the vision towers'
last block and final norm, DINOv2's mask token, the LLM output layer for heads that do not decode tokens)
are frozen by training, for every registered head, with freezing strategies and with LoRA."""

from __future__ import annotations

import pytest

from vlaforge.models.policy import Policy
from vlaforge.models.registry import HEADS
from vlaforge.train.finetune import apply_freeze, apply_lora, freeze_unused
from vlaforge.types import Embodiment, FeatureStats, NormStats


def _policy(head: str) -> Policy:
    emb = Embodiment(
        action_dim=4,
        action_names=["dx", "dy", "dz", "gripper"],
        normalize_mask=[True, True, True, False],
        action_low=[-1.0] * 4,
        action_high=[1.0] * 4,
        control_hz=80.0,
        camera_names=["corner2"],
        image_size=64,
        state_dim=4,
    )
    ones = [1.0] * 4
    fs = FeatureStats(min=[-1] * 4, max=ones, mean=[0] * 4, std=ones, q01=[-1] * 4, q99=ones)
    stats = NormStats({"action": fs, "observation.state": fs})
    return Policy.from_preset("tiny", head, emb, stats, chunk_size=2)


def _batch():
    import torch

    g = torch.Generator().manual_seed(0)
    return {
        "images": {"corner2": torch.randint(0, 256, (2, 64, 64, 3), generator=g, dtype=torch.uint8)},
        "state": torch.randn(2, 4, generator=g),
        "instruction": ["open the drawer", "press the button"],
        "actions": torch.rand(2, 2, 4, generator=g) * 2 - 1,
        "action_pad": torch.zeros(2, 2, dtype=torch.bool),
    }


def _no_grad(policy: Policy) -> set[str]:
    loss, _ = policy.compute_loss(_batch())
    loss.backward()
    return {n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None}


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("how", ["full", "sandwich", "lora"])
def test_declared_unused_parameters_are_exactly_those_without_gradient(head, how):
    policy = _policy(head)
    if how == "lora":
        apply_lora(policy, rank=2, alpha=4)
    else:
        apply_freeze(policy, how)
    declared = set(policy.unused_parameter_names())
    assert any(".layernorm." in n or "post_layernorm" in n for n in declared)
    assert _no_grad(policy) == {n for n in declared if dict(policy.named_parameters())[n].requires_grad}
    policy.zero_grad(set_to_none=True)
    assert freeze_unused(policy) > 0
    assert _no_grad(policy) == set()
