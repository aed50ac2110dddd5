"""Log-probabilities of the chunk Gaussian and of Flow-SDE chains, against direct computations."""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal

from vlaforge.rl.logprob import (
    flow_noise_chain_log_prob,
    flow_sde_chain_log_prob,
    flow_sde_sample,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
)


def test_gaussian_kl_matches_torch_distributions_over_the_kept_rows():
    from torch.distributions import kl_divergence

    g = torch.Generator().manual_seed(1)
    mean, mean0 = torch.randn(3, 4, 2, generator=g), torch.randn(3, 4, 2, generator=g)
    log_std, log_std0 = torch.randn(4, 2, generator=g) * 0.3, torch.full((4, 2), -0.5)
    keep = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    per = kl_divergence(
        Normal(mean, torch.exp(log_std).expand(3, 4, 2)), Normal(mean0, torch.exp(log_std0).expand(3, 4, 2))
    )
    expect = torch.stack([per[b][keep[b]].sum() for b in range(3)])
    torch.testing.assert_close(gaussian_kl(mean, log_std, mean0, log_std0, keep), expect)
    torch.testing.assert_close(gaussian_kl(mean, log_std, mean0, log_std0), per.sum(dim=(1, 2)))
    assert torch.equal(gaussian_kl(mean, log_std, mean, log_std), torch.zeros(3))


def test_gaussian_chunk_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, 2, generator=g)
    log_std = torch.randn(4, 2, generator=g) * 0.3
    a = mean + torch.randn(3, 4, 2, generator=g)
    keep = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    got = gaussian_log_prob(a, mean, log_std, keep)
    dens = Normal(mean, log_std.exp()).log_prob(a)  # (3, 4, 2)
    expect = torch.stack([dens[b, : int(keep[b].sum())].sum() for b in range(3)])
    torch.testing.assert_close(got, expect)
    # One hand-checked value: x = mean + 1, log_std = 0 -> -0.5 - 0.5 log(2 pi) per element.
    one = gaussian_log_prob(torch.ones(1, 1, 1), torch.zeros(1, 1, 1), torch.zeros(1, 1))
    assert abs(one.item() - (-0.5 - 0.5 * math.log(2 * math.pi))) < 1e-6


def test_gaussian_entropy_matches_torch_distributions_shared_and_per_sample():
    g = torch.Generator().manual_seed(1)
    keep = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    shared = torch.randn(4, 2, generator=g) * 0.3  # the chunk head's log-std
    per = Normal(0.0, shared.exp()).entropy()  # (4, 2)
    torch.testing.assert_close(
        gaussian_entropy(shared, keep), torch.stack([per[: int(k.sum())].sum() for k in keep])
    )
    torch.testing.assert_close(gaussian_entropy(shared), per.sum())
    sample = torch.randn(3, 4, 2, generator=g) * 0.3  # a Flow-Noise step's log-std, per sample
    torch.testing.assert_close(gaussian_entropy(sample), Normal(0.0, sample.exp()).entropy().sum(dim=(1, 2)))


def _velocity(x, t):
    # Any smooth field will do for the density test.
    return 0.7 * x - 0.3 * t[:, None, None]


def test_flow_sde_chain_log_prob_by_hand():
    """N = 2 steps, written out: t0 = 1 (sigma at t = 1/2), t1 = 1/2, dt = 1/2, level 0.4."""
    g = torch.Generator().manual_seed(1)
    chain = torch.randn(2, 3, 2, 1, generator=g)  # (B, N + 1, H, D)
    level, dt = 0.4, 0.5
    vels = [_velocity(chain[:, k], torch.full((2,), 1.0 - k / 2)) for k in range(2)]
    got = flow_sde_chain_log_prob(chain, vels, level)
    total = torch.zeros(2)
    for k, t in enumerate([1.0, 0.5]):
        tc = min(t, 0.5)
        sigma = level * math.sqrt(tc / (1 - tc))
        x, v = chain[:, k], vels[k]
        mean = x - dt * (v + sigma**2 / (2 * t) * (x + (1 - t) * v))
        total += Normal(mean, sigma * math.sqrt(dt)).log_prob(chain[:, k + 1]).sum(dim=(1, 2))
    torch.testing.assert_close(got, total)
    # Unexecuted rows drop out of the last step's density only (earlier steps shape the executed rows).
    keep = torch.tensor([[True, False], [True, True]])
    part = flow_sde_chain_log_prob(chain, vels, level, keep)
    sigma = level * math.sqrt(0.5 / (1 - 0.5))
    x, v = chain[0, 1], vels[1][0]
    mean = x - dt * (v + sigma**2 / (2 * 0.5) * (x + 0.5 * v))
    dropped = Normal(mean[1], sigma * math.sqrt(dt)).log_prob(chain[0, 2, 1]).sum()
    torch.testing.assert_close(part[0], got[0] - dropped)
    torch.testing.assert_close(part[1], got[1])


def test_flow_noise_chain_log_prob_by_hand():
    """N = 2 steps: log N(x_1; 0, I) plus each step's N(x_k - v_k / 2, std_k^2), averaged over the 3 terms."""
    g = torch.Generator().manual_seed(2)
    chain = torch.randn(2, 3, 2, 1, generator=g)  # (B, N + 1, H, D)
    vels = [_velocity(chain[:, k], torch.full((2,), 1.0 - k / 2)) for k in range(2)]
    means = [chain[:, k] - 0.5 * vels[k] for k in range(2)]
    stds = [0.08 + 0.08 * torch.rand(2, 2, 1, generator=g) for _ in range(2)]
    got = flow_noise_chain_log_prob(chain, means, stds)
    terms = [Normal(0.0, 1.0).log_prob(chain[:, 0]).sum(dim=(1, 2))]
    terms += [Normal(means[k], stds[k]).log_prob(chain[:, k + 1]).sum(dim=(1, 2)) for k in range(2)]
    torch.testing.assert_close(got, sum(terms) / 3)
    # The executed-rows mask applies to the last step only, as for Flow-SDE.
    keep = torch.tensor([[True, False], [True, True]])
    part = flow_noise_chain_log_prob(chain, means, stds, keep)
    dropped = Normal(means[1][0, 1], stds[1][0, 1]).log_prob(chain[0, 2, 1]).sum()
    torch.testing.assert_close(part[0], got[0] - dropped / 3)
    torch.testing.assert_close(part[1], got[1])


def test_flow_sde_keeps_the_ode_marginals():
    """Actions ~ N(m, s^2): the straight path's exact velocity is known, and Flow-SDE (unlike the ODE with
    noise added and no drift correction) must still end at N(m, s^2)."""
    m, s = 0.5, 0.3

    def exact_velocity(x, t):
        tt = t[:, None, None]
        var = tt**2 + (1 - tt) ** 2 * s**2
        return (tt - (1 - tt) * s**2) * (x - (1 - tt) * m) / var - m

    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(20000, 1, 1, generator=g)
    chain = flow_sde_sample(exact_velocity, x1, num_steps=100, level=0.3, generator=g)
    final = chain[:, -1].flatten()
    assert abs(final.mean().item() - m) < 0.02
    assert abs(final.std().item() - s) < 0.02
