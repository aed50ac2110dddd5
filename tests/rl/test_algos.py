"""GAE, PPO's clipped objective and GRPO's advantages against values derived by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vlaforge.rl.algos import gae, grpo_advantages, ppo_loss, value_loss


def test_gae_by_hand():
    # gamma = lambda = 0.5. Episode 0 succeeds at its 3rd decision; episode 1 is truncated after its 2nd
    # decision and a new one starts (bootstrapped from last_values = 2 at the end).
    rewards = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    values = torch.tensor([[0.5, 1.0], [0.25, 1.0], [0.5, 1.0]])
    dones = torch.tensor([[0, 0], [0, 1], [1, 0]], dtype=torch.bool)
    adv, ret = gae(rewards, values, dones, torch.tensor([9.0, 2.0]), gamma=0.5, lam=0.5)
    # Column 0: d2 = 1 - 0.5 = 0.5; d1 = 0.5 * 0.5 - 0.25 = 0; A1 = 0 + 0.25 * 0.5 = 0.125;
    #           d0 = 0.5 * 0.25 - 0.5 = -0.375; A0 = -0.375 + 0.25 * 0.125 = -0.34375.
    # Column 1: d2 = 0.5 * 2 - 1 = 0; d1 = 0 - 1 = -1 (done: no bootstrap, no carry); A1 = -1;
    #           d0 = 0.5 * 1 - 1 = -0.5; A0 = -0.5 + 0.25 * -1 = -0.75.
    expect = torch.tensor([[-0.34375, -0.75], [0.125, -1.0], [0.5, 0.0]])
    torch.testing.assert_close(adv, expect)
    torch.testing.assert_close(ret, expect + values)


def test_ppo_clipped_objective_by_hand():
    logp_old = torch.zeros(3)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -2.0])
    loss, m = ppo_loss(logp, logp_old, adv, clip=0.2)
    # min(1.5 * 1, 1.2 * 1) = 1.2; min(0.5, 0.8) = 0.5; min(-2.2, -2.2) = -2.2 -> loss = -(-0.5) / 3.
    assert loss.item() == pytest.approx(0.5 / 3, abs=1e-6)
    assert m["clip_fraction"].item() == pytest.approx(2 / 3)
    loss.backward()
    # Sample 0 is clipped (no gradient); d/dlogp of -ratio * A / 3 is -ratio * A / 3 for the others.
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, -0.5 / 3, 2.2 / 3]))
    kl = ((1.5 - 1 - math.log(1.5)) + (0.5 - 1 - math.log(0.5)) + (1.1 - 1 - math.log(1.1))) / 3
    assert m["approx_kl"].item() == pytest.approx(kl, rel=1e-5)


def test_value_loss():
    assert value_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])).item() == pytest.approx(1.25)


def test_grpo_advantages_by_hand():
    returns = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    adv = grpo_advantages(returns, groups, eps=0.0 + 1e-12)
    # Group 0: mean 0.5, std 0.5 -> +-1. Group 1: all equal -> 0. Group 2: mean 0.25,
    # std sqrt(0.25 * 0.75) = sqrt(3) / 4 -> 0.75 / (sqrt(3) / 4) = sqrt(3), -0.25 / (sqrt(3) / 4) = -1 / sqrt(3).
    s3 = math.sqrt(3)
    expect = torch.tensor([1, -1, -1, 1, 0, 0, 0, 0, s3, -1 / s3, -1 / s3, -1 / s3], dtype=torch.float32)
    torch.testing.assert_close(adv, expect)
