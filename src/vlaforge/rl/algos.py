"""The update rules, as pure functions on tensors: GAE, PPO's clipped objective, GRPO's advantages.

- GAE (Schulman et al., 2016): delta_t = r_t + gamma V(s_{t+1}) (1 - done_t) - V(s_t),
  A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}; returns = A + V.
- PPO (Schulman et al., 2017): ratio = exp(logp - logp_old),
  loss = -mean(min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)).
- GRPO (Shao et al., 2024): no critic; each episode's return is normalised within its group of episodes
  that started from the same initial state: A = (R - mean_group) / (std_group + eps).
"""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_values: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (T, N) for T decisions of N parallel episodes.

    Args:
        rewards, values, dones: (T, N); dones[t] is True when decision t ended its episode (success or
            truncation: a truncated episode is not bootstrapped, as its horizon is part of the task).
        last_values: (N,) V of the state after the last decision (used where it did not end).
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(last_values)
    next_value = last_values
    for t in reversed(range(T)):
        alive = 1.0 - dones[t].to(rewards.dtype)
        delta = rewards[t] + gamma * next_value * alive - values[t]
        next_adv = delta + gamma * lam * alive * next_adv
        adv[t] = next_adv
        next_value = values[t]
    return adv, adv + values


def ppo_loss(
    logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (to minimise) and its clip fraction and approximate KL (old || new)."""
    log_ratio = logp - logp_old
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    loss = -torch.minimum(unclipped, clipped).mean()
    with torch.no_grad():
        clip_frac = ((ratio - 1.0).abs() > clip).float().mean()
        approx_kl = ((ratio - 1.0) - log_ratio).mean()  # k3 estimator, >= 0
    return loss, {"clip_fraction": clip_frac, "approx_kl": approx_kl}


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """0.5 * mean squared error of the critic."""
    return 0.5 * (values - returns).square().mean()


def grpo_advantages(returns: torch.Tensor, groups: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(R - mean) / (std + eps) within each group (episodes from one initial state); std is the population
    std (divide by the group size). A group whose returns are all equal gets zero advantages.

    Args:
        returns: (N,) episode returns.
        groups: (N,) integer group ids.
    """
    out = torch.zeros_like(returns)
    for g in torch.unique(groups):
        sel = groups == g
        r = returns[sel]
        out[sel] = (r - r.mean()) / (r.std(unbiased=False) + eps)
    return out


__all__ = ["gae", "grpo_advantages", "ppo_loss", "value_loss"]
