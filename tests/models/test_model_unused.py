"""Every trainable parameter gets a gradient: modules whose outputs never reach the loss (the vision towers'
last block and final norm, DINOv2's mask token, the LLM output layer for heads that do not decode tokens)
are frozen by training, for every registered head, with freezing strategies and with LoRA."""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.actions.fast import FASTTokenizer
from vlaforge.models.policy import Policy
from vlaforge.models.registry import HEADS
from vlaforge.train.finetune import apply_freeze, apply_lora, freeze_unused


def _no_grad(policy: Policy, batch: dict) -> set[str]:
    loss, _ = policy.compute_loss(batch)
    loss.backward()
    return {n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None}


@pytest.fixture(scope="module")
def fast_tokenizer(tmp_path_factory) -> str:
    """A FAST tokenizer for chunks of 2 x 4 (the fast head cannot be built without one)."""
    chunks = np.random.default_rng(0).uniform(-1, 1, (200, 2, 4))
    return str(FASTTokenizer.train(chunks, vocab_size=128).save(tmp_path_factory.mktemp("fast") / "tok"))


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("how", ["full", "sandwich", "lora"])
def test_declared_unused_parameters_are_exactly_those_without_gradient(
    head, how, embodiment, norm_stats, h, fast_tokenizer
):
    options = {"tokenizer": fast_tokenizer} if head == "fast" else {}
    policy = Policy.from_preset("tiny", head, embodiment, norm_stats, chunk_size=2, **options)
    batch = h.batch(B=2, H=2)
    if how == "lora":
        apply_lora(policy, rank=2, alpha=4)
    else:
        apply_freeze(policy, how)
    declared = set(policy.unused_parameter_names())
    assert any(".layernorm." in n or "post_layernorm" in n for n in declared)
    params = dict(policy.named_parameters())
    assert _no_grad(policy, batch) == {n for n in declared if params[n].requires_grad}
    policy.zero_grad(set_to_none=True)
    assert freeze_unused(policy) > 0
    assert _no_grad(policy, batch) == set()
