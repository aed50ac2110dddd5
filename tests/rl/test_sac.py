"""DSRL's soft actor-critic on the starting noise (`vlaforge.rl.sac`): the bounded noise's density, the
saved policy sampling as the run did, the transitions a rollout gives, the buffer, and a bandit it solves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import AffineTransform, TanhTransform

from vlaforge.envs.registry import get_env
from vlaforge.errors import InputError
from vlaforge.models.policy import Policy
from vlaforge.rl.actor import ActorCritic
from vlaforge.rl.config import RLConfig
from vlaforge.rl.loop import RLRun
from vlaforge.rl.rollout import Decision
from vlaforge.rl.sac import (
    ReplayBuffer,
    SACModules,
    sac_losses,
    sample_noise,
    tanh_gaussian_log_prob,
    transitions,
)

from .conftest import make_stats


def _obs(n, seed=0):
    rng = np.random.default_rng(seed)
    images = {"corner2": rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)}
    return images, rng.normal(size=(n, 4)).astype(np.float32), ["close the drawer"] * n


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    """Against torch's own change of variables, also where tanh saturates (|u| up to 12, where
    log(1 - tanh(u)^2) computed directly is -inf)."""
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(5, 3, 2, generator=g) * 3
    log_std = torch.randn(3, 2, generator=g) * 0.5
    u = torch.cat([torch.randn(4, 3, 2, generator=g) * 2, torch.full((1, 3, 2), 12.0)])
    for bound in (1.0, 1.5):
        got = tanh_gaussian_log_prob(u, mean, log_std, bound)
        base = Normal(mean.double(), torch.exp(log_std).double().expand_as(mean))
        dist = TransformedDistribution(base, [TanhTransform(), AffineTransform(0.0, bound)])
        want = dist.log_prob(bound * torch.tanh(u.double())).sum(dim=(1, 2))
        torch.testing.assert_close(got[:4].double(), want[:4], rtol=1e-5, atol=1e-4)
        # At u = 12, tanh(u) rounds to 1 in float64 and torch's density is -inf; ours stays finite and equal
        # to the exact expression log N(u) - log(b) - log(1 - tanh(u)^2), with 1 - tanh^2 = sech^2.
        exact = base.log_prob(u.double())[4] - np.log(bound) - 2 * torch.log(1 / torch.cosh(u[4].double()))
        torch.testing.assert_close(got[4].double(), exact.sum(), rtol=1e-6, atol=1e-3)


def test_bounded_noise_policy_is_saved_and_samples_as_the_actor(tmp_path):
    """--algo sac's actor draws w = 1.5 tanh(u) within the bound; the policy saved and loaded again
    samples the same chunk from the same generator (evaluation runs what trained); PPO's update refuses a
    bounded noise policy (its density ignores the bound)."""
    emb = get_env("metaworld").embodiment(("corner2",), 64)
    torch.manual_seed(0)
    policy = Policy.from_preset("tiny", "flow", emb, make_stats(4, 4), num_steps=3)
    actor = ActorCritic(policy, init_log_std=0.5, flow_rl="latent", noise_bound=1.5).eval()
    assert policy.head.config()["noise_bound"] == 1.5
    with torch.no_grad():
        policy.head.noise_mean[2].bias.copy_(torch.linspace(-3, 3, 32))
    ctx = actor.context(*_obs(3, seed=2))
    chunk, w = actor.sample(ctx, torch.Generator().manual_seed(4))
    assert w.abs().max() < 1.5 and w.abs().max() > 1.2  # means up to 3 pre-tanh: near the bound
    policy.save_pretrained(tmp_path / "p")
    again = Policy.from_pretrained(tmp_path / "p")
    assert again.head.noise_bound == 1.5
    replay = again.head.predict(
        again.backbone, again._context(*_obs(3, seed=2)), generator=torch.Generator().manual_seed(4)
    )
    torch.testing.assert_close(replay, chunk, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="--algo sac"):
        actor.evaluate(ctx, w, torch.ones(3, 8, dtype=torch.bool))
    with pytest.raises(InputError, match="--flow-rl latent"):
        RLConfig(init="x", algo="sac")
    unbounded = Policy.from_preset("tiny", "flow", emb, make_stats(4, 4), num_steps=3, noise_policy=True)
    with pytest.raises(InputError, match="unbounded"):
        RLRun(RLConfig(init="x", algo="sac", flow_rl="latent"), unbounded, "cpu")
    with pytest.raises(InputError, match="success flag"):
        RLConfig(init="x", algo="sac", flow_rl="latent", reward="dense")


def _decision(slot, reward=0.0, done=False, success=False, w=0.0):
    return Decision(slot, {}, None, "", torch.full((2, 1), float(w)), 1, reward, done, success)


def test_transitions_pair_each_decision_with_the_next_of_its_episode():
    """Episodes interleaved as rollouts append them: slot 0 succeeds at its 3rd decision, slot 1 runs out
    of steps at its 2nd; both end in a terminal transition, and a decision of an episode still running
    at the end of the batch (slot 2, never done) gives none."""
    decisions = [
        _decision(0, w=0), _decision(1, w=10),
        _decision(0, w=1), _decision(1, done=True, w=11),
        _decision(0, reward=1.0, done=True, success=True, w=2),
        _decision(2, w=20),
    ]  # fmt: skip
    features = torch.arange(6, dtype=torch.float32)[:, None] * 100
    t = transitions(decisions, features)
    assert t["noise"][:, 0, 0].tolist() == [0, 10, 1, 11, 2]
    assert t["features"][:, 0].tolist() == [0, 100, 200, 300, 400]
    assert t["next_features"][:3, 0].tolist() == [200, 300, 400]
    assert t["terminal"].tolist() == [0, 0, 0, 1, 1] and t["reward"].tolist() == [0, 0, 0, 0, 1]


def test_replay_buffer_ring_and_restore():
    buf = ReplayBuffer(3, 1, (1, 1))
    for i in range(5):
        f = torch.tensor([[float(i)]])
        buf.add(features=f, noise=f[:, :, None], reward=f[:, 0], terminal=f[:, 0] * 0, next_features=f)
    assert buf.size == 3 and buf.pos == 2 and buf.data["features"][:, 0].tolist() == [3, 4, 2]
    at_once = ReplayBuffer(3, 1, (1, 1))  # one batch larger than the ring: the same rows, the same place
    f = torch.arange(5.0)[:, None]
    at_once.add(features=f, noise=f[:, :, None], reward=f[:, 0], terminal=f[:, 0] * 0, next_features=f)
    assert all(torch.equal(at_once.data[k], buf.data[k]) for k in buf.KEYS)
    assert (at_once.size, at_once.pos) == (buf.size, buf.pos)
    tensors, meta = buf.state()
    other = ReplayBuffer(3, 1, (1, 1))
    other.restore(tensors, meta)
    assert all(torch.equal(other.data[k], buf.data[k]) for k in buf.KEYS) and other.pos == 2
    with pytest.raises(InputError, match="--buffer-size"):
        ReplayBuffer(4, 1, (1, 1)).restore(tensors, meta)


def test_sac_learns_a_one_step_bandit():
    """One decision per episode (terminal), reward = (w[0, 0] + 1.5) / 3 (in (0, 1)): the critic must learn
    Q(s, w) = that from the buffer and the actor push w[0, 0] to the bound, leaving
    the other elements alone. 600 gradient steps, seeded; fails without the actor's Q term (the mean would
    stay at 0) or with a critic that does not fit."""
    emb = get_env("metaworld").embodiment(("corner2",), 64)
    torch.manual_seed(0)
    policy = Policy.from_preset("tiny", "flow", emb, make_stats(4, 4), num_steps=1)
    ActorCritic(policy, init_log_std=0.0, flow_rl="latent", noise_bound=1.5)
    head, d = policy.head, policy.backbone.hidden_size
    sac = SACModules(2 * d, 32, init_alpha=0.01)
    g = torch.Generator().manual_seed(0)
    n = 2048
    feats = torch.randn(n, 2 * d, generator=g)
    w = 1.5 * torch.tanh(torch.randn(n, 8, 4, generator=g))
    buf = ReplayBuffer(n, 2 * d, (8, 4))
    reward = (w[:, 0, 0] + 1.5) / 3  # in (0, 1), as a discounted chance of success is
    buf.add(features=feats, noise=w, reward=reward, terminal=torch.ones(n), next_features=feats)
    params = [*head.untrained_parameters()]
    opt = torch.optim.Adam([
        {"params": params, "lr": 3e-3}, {"params": list(sac.q.parameters()), "lr": 1e-3},
        {"params": [sac.log_alpha], "lr": 3e-4},
    ])  # fmt: skip
    for _ in range(600):
        loss, _ = sac_losses(sac, head, buf.sample(128, g), d, 0.99, 0.0, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sac.update_targets(0.005)
    probe = torch.randn(256, 2 * d, generator=g)
    w_probe = 1.5 * torch.tanh(torch.randn(256, 8, 4, generator=g))  # the buffer's distribution, fresh draws
    with torch.no_grad():
        drawn, _ = sample_noise(head, probe[:, :d], g)
        q = sac.values(probe, w_probe).mean(0)
    assert drawn[:, 0, 0].mean() > 1.2, drawn[:, 0, 0].mean()
    assert drawn[:, 1:].mean().abs() < 0.3
    assert (q - (w_probe[:, 0, 0] + 1.5) / 3).abs().mean() < 0.1
    r = np.corrcoef(q.numpy(), w_probe[:, 0, 0].numpy())[0, 1]
    assert r > 0.9, r
