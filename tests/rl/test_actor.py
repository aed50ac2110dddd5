"""The actor's log-probabilities recomputed in the update equal a direct computation from its own sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from vlaforge.envs.registry import get_env
from vlaforge.errors import InputError
from vlaforge.models.policy import Policy
from vlaforge.rl.actor import NOISE_STD_RANGE, ActorCritic
from vlaforge.rl.logprob import sde_step_moments

from .conftest import make_stats


def _obs(n, seed=0):
    rng = np.random.default_rng(seed)
    images = {"corner2": rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)}
    return images, rng.normal(size=(n, 4)).astype(np.float32), ["close the drawer"] * n


@pytest.mark.parametrize("head", ["chunk", "flow"])
def test_sampled_chunks_log_prob(head):
    emb = get_env("metaworld").embodiment(("corner2",), 64)
    torch.manual_seed(0)
    opts = {"num_steps": 3} if head == "flow" else {}
    policy = Policy.from_preset("tiny", head, emb, make_stats(4, 4), **opts)
    actor = ActorCritic(policy, init_log_std=-0.5).eval()
    ctx = actor.context(*_obs(3))
    g = torch.Generator().manual_seed(1)
    chunk, record = actor.sample(ctx, g)
    keep = torch.tensor([[True] * 8, [True] * 3 + [False] * 5, [True] + [False] * 7])
    logp, ent, value = actor.evaluate(ctx, record, keep)
    assert torch.equal(value, torch.zeros(3))  # the critic's output layer starts at zero
    with torch.no_grad():
        fwd = actor.forward_ctx(ctx)
        if head == "chunk":
            dens = Normal(fwd.mean, torch.full_like(fwd.mean, np.exp(-0.5))).log_prob(chunk)
            expect = torch.stack([dens[b][keep[b]].sum() for b in range(3)])
            assert torch.allclose(
                ent, torch.tensor([8.0, 3.0, 1.0]) * 4 * (-0.5 + 0.5 * (1 + np.log(2 * np.pi)))
            )
        else:
            # Replay the chain step by step with the head's own velocity and torch's Normal.
            expect = torch.zeros(3)
            n = 3
            for k in range(n):
                t = 1.0 - k / n
                v = policy.head.velocity(
                    policy.backbone, fwd.prefix, record[:, k], torch.full((3,), t)
                ).float()
                mean, std = sde_step_moments(record[:, k], v, t, 1 / n, np.exp(-0.5), n)
                d = Normal(mean, std).log_prob(record[:, k + 1])
                rows = keep if k == n - 1 else torch.ones_like(keep)  # the mask: last step only
                expect += torch.stack([d[b][rows[b]].sum() for b in range(3)])
            assert torch.equal(chunk, record[:, -1])
    torch.testing.assert_close(logp, expect, rtol=1e-5, atol=1e-4)
    logp.sum().backward()  # gradients reach the head
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.head.parameters())


def test_flow_noise_samples_and_scores_its_own_chain():
    """Flow-Noise: replaying the sampled chain with the head's velocity, the noise network's stds and torch's
    Normal gives the actor's log-likelihood; the stds stay in piRL's [0.08, 0.16]; gradients reach the noise
    network; the saved policy has no trace of it."""
    emb = get_env("metaworld").embodiment(("corner2",), 64)
    torch.manual_seed(0)
    policy = Policy.from_preset("tiny", "flow", emb, make_stats(4, 4), num_steps=3)
    actor = ActorCritic(policy, flow_rl="noise").eval()
    ctx = actor.context(*_obs(2, seed=3))
    chunk, record = actor.sample(ctx, torch.Generator().manual_seed(4))
    assert torch.equal(chunk, record[:, -1]) and record.shape == (2, 4, 8, 4)
    keep = torch.tensor([[True] * 8, [True] * 2 + [False] * 6])
    logp, ent, _ = actor.evaluate(ctx, record, keep)
    with torch.no_grad():
        fwd = actor.forward_ctx(ctx)
        terms = [Normal(0.0, 1.0).log_prob(record[:, 0]).sum(dim=(1, 2))]
        ents = []
        for k in range(3):
            t = torch.full((2,), 1.0 - k / 3)
            v, h = policy.head.velocity(policy.backbone, fwd.prefix, record[:, k], t, features=True)
            std = actor.noise_net(h)
            assert (
                NOISE_STD_RANGE[0] - 1e-6 <= float(std.min()) <= float(std.max()) <= NOISE_STD_RANGE[1] + 1e-6
            )
            d = Normal(record[:, k] - v.float() / 3, std).log_prob(record[:, k + 1])
            rows = keep if k == 2 else torch.ones_like(keep)
            terms.append(torch.stack([d[b][rows[b]].sum() for b in range(2)]))
            ents.append(Normal(0.0, std).entropy().sum(dim=(1, 2)))
        expect = sum(terms) / 4
    torch.testing.assert_close(logp, expect, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ent, torch.stack(ents).mean(0), rtol=1e-5, atol=1e-4)
    logp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.noise_net.parameters())
    assert not any(k.startswith("noise_net") for k in policy.state_dict())
    chunk = Policy.from_preset("tiny", "chunk", emb, make_stats(4, 4))
    with pytest.raises(InputError, match="for a flow head"):
        ActorCritic(chunk, flow_rl="noise")


def test_sde_kl_estimate_matches_a_shifted_velocity_field():
    """Flow-SDE's KL to another head: zero against an identical copy, and against a head whose velocity is
    shifted by a constant c the closed form of the chain's Gaussians: every step's mean moves by
    c (1 + sigma_t^2 (1 - t) / (2 t)) dt whatever x is, with std sigma_t sqrt(dt), so the KL is the sum over
    steps and counted rows of |shift|^2 / (2 std^2)."""
    import copy

    emb = get_env("metaworld").embodiment(("corner2",), 64)
    torch.manual_seed(0)
    n, level, B = 3, float(np.exp(-0.5)), 1024
    policy = Policy.from_preset("tiny", "flow", emb, make_stats(4, 4), num_steps=n)
    actor = ActorCritic(policy, init_log_std=-0.5).eval()
    images, state, words = _obs(4)
    reps = B // 4
    ctx = actor.context(
        {"corner2": np.repeat(images["corner2"], reps, 0)}, np.repeat(state, reps, 0), words * reps
    )
    executed = torch.arange(B) % 8 + 1  # 1..8 executed rows
    keep = torch.arange(8)[None] < executed[:, None]
    same = copy.deepcopy(policy.head)
    est = actor.sde_kl_estimate(ctx, keep, same, torch.Generator().manual_seed(3))
    assert torch.equal(est, torch.zeros(B))

    c = torch.tensor([0.3, -0.15, 0.25, 0.0])
    shifted = copy.deepcopy(policy.head)
    with torch.no_grad():
        shifted.action_out.bias.add_(c)
    est = actor.sde_kl_estimate(ctx, keep, shifted, torch.Generator().manual_seed(3))
    kl = torch.zeros(B)
    for k in range(n):
        t, dt = 1.0 - k / n, 1.0 / n
        tc = min(t, 1.0 - 1.0 / n)
        sigma = level * np.sqrt(tc / (1.0 - tc))
        shift = c * (1.0 + sigma**2 * (1.0 - t) / (2.0 * t)) * dt
        per_row = float((shift**2).sum()) / (2.0 * sigma**2 * dt)
        rows = executed.float() if k == n - 1 else torch.full((B,), 8.0)
        kl += rows * per_row
    # Per sample the estimate is KL plus a zero-mean term of variance 2 KL; allow 4 standard errors.
    assert kl.mean() > 0.5
    assert abs(est.mean() - kl.mean()) < 4 * float(torch.sqrt(2 * kl.mean() / B))
    assert abs(float(est.std()) ** 2 - 2 * float(kl.mean())) < 0.5 * 2 * float(kl.mean())


def test_latent_noise_policy_starts_as_the_plain_sampler_and_is_saved_with_the_policy(tmp_path):
    """--flow-rl latent (DSRL): a fresh noise policy (mu = 0, log-std 0) samples exactly what the policy's
    own `predict` gives from the same generator; the log-probability of the drawn noise is torch's Normal
    over all of it; only the noise policy trains (the expert and backbone stay frozen, and imitation would
    freeze it); once moved, the policy saved and loaded again samples what the actor sampled."""
    emb = get_env("metaworld").embodiment(("corner2",), 64)
    torch.manual_seed(0)
    policy = Policy.from_preset("tiny", "flow", emb, make_stats(4, 4), num_steps=3)
    obs = _obs(3, seed=5)
    plain = policy.head.predict(
        policy.backbone, policy._context(*obs), generator=torch.Generator().manual_seed(9)
    )
    actor = ActorCritic(policy, init_log_std=0.0, flow_rl="latent").eval()
    assert policy.head.noise_policy and policy.head.config()["noise_policy"] is True
    ctx = actor.context(*obs)
    chunk, w = actor.sample(ctx, torch.Generator().manual_seed(9))
    assert torch.equal(chunk, plain) and w.shape == (3, 8, 4)

    trainable = {n for n, p in actor.named_parameters() if p.requires_grad}
    assert trainable == {
        "log_std", "policy.head.noise_mean.0.weight", "policy.head.noise_mean.0.bias",
        "policy.head.noise_mean.2.weight", "policy.head.noise_mean.2.bias",
        *(n for n, _ in actor.named_parameters() if n.startswith("critic.")),
    }  # fmt: skip
    assert actor.log_std is policy.head.noise_log_std
    assert {n for n in policy.unused_parameter_names() if "noise" in n} == {
        "head.noise_log_std",
        *(f"head.noise_mean.{i}.{k}" for i in (0, 2) for k in ("weight", "bias")),
    }

    # Move the noise policy off N(0, I), then score a draw against a direct computation.
    with torch.no_grad():
        policy.head.noise_mean[2].weight.normal_(0.0, 0.05)
        policy.head.noise_mean[2].bias.copy_(torch.linspace(-0.5, 0.5, 32))
        policy.head.noise_log_std.fill_(-0.7)
        policy.head.noise_log_std[0, 0] = 0.2
    chunk, w = actor.sample(ctx, torch.Generator().manual_seed(11))
    keep = torch.tensor([[True] * 8, [True] * 2 + [False] * 6, [True] + [False] * 7])
    logp, ent, _ = actor.evaluate(ctx, w, keep)
    with torch.no_grad():
        last = actor.forward_ctx(ctx).prefix.last_hidden
        mean = policy.head.noise_mean(last).view(3, 8, 4)
        dist = Normal(mean, torch.exp(policy.head.noise_log_std).expand(3, 8, 4))
    torch.testing.assert_close(logp, dist.log_prob(w).sum(dim=(1, 2)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ent, dist.entropy().sum(dim=(1, 2)), rtol=1e-5, atol=1e-5)
    logp.sum().backward()
    assert (
        policy.head.noise_mean[0].weight.grad.abs().sum() > 0 and policy.head.noise_log_std.grad is not None
    )
    assert all(p.grad is None for p in policy.head.layers.parameters())

    policy.save_pretrained(tmp_path / "p")
    again = Policy.from_pretrained(tmp_path / "p")
    assert again.head.noise_policy
    replay = again.head.predict(
        again.backbone, again._context(*obs), generator=torch.Generator().manual_seed(11)
    )
    torch.testing.assert_close(replay, chunk, rtol=0, atol=1e-6)
    assert not torch.allclose(replay, plain, atol=1e-2)  # the noise policy moved what the policy does

    chunk_policy = Policy.from_preset("tiny", "chunk", emb, make_stats(4, 4))
    with pytest.raises(InputError, match="for a flow head"):
        ActorCritic(chunk_policy, flow_rl="latent")
    with pytest.raises(InputError, match="backbone stays frozen"):
        ActorCritic(
            Policy.from_preset("tiny", "flow", emb, make_stats(4, 4)), train_backbone=True, flow_rl="latent"
        )
