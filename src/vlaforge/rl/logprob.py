"""Log-probabilities of action chunks, per head, for policy-gradient updates.

- Chunk (regression) head: the action is a Gaussian around the predicted chunk, N(mu(s), diag(sigma^2)),
  with a learned log-std that depends on neither the state nor the sample (one value per (step, dim) of the
  chunk). The log-probability of a chunk sums over the executed steps only: the rest never reached the env.
- Flow head, Flow-SDE (the SDE variant of piRL, Chen et al. 2025, as Flow-GRPO, Liu et al. 2025, defines
  it): the Euler ODE sampler from t = 1 (noise) to t = 0 becomes an SDE with the same marginals. For our
  path x_t = t n + (1 - t) a and velocity v = n - a, the predicted endpoints are a_hat = x_t - t v and
  n_hat = x_t + (1 - t) v, and one step from t to t - dt is the Gaussian

      x_{t-dt} ~ N(x_t - [v + sigma_t^2 / (2 t) n_hat] dt,  sigma_t^2 dt),  sigma_t = level sqrt(t / (1 - t)),

  (the score of x_t is -n_hat / t). sigma_t is evaluated at min(t, 1 - 1/N) since it diverges at t = 1.
  The chunk's log-likelihood is the sum of the N step log-probabilities (over the executed rows).
- Flow head, Flow-Noise (piRL's other variant, after ReinFlow): every Euler step keeps its deterministic
  mean x_t - v dt and adds Gaussian noise whose std a small learned network predicts per (row, dim) from
  the expert's output tokens, bounded in [0.08, 0.16] (piRL's range) through a tanh on the log-variance.
  The denoising is a discrete-time chain with tractable transitions; its joint log-likelihood is the
  initial noise's N(0, I) density plus the N step densities, averaged over those N + 1 terms as piRL does
  (the policy ratio is then a geometric mean per step, which keeps PPO's clip on the scale of one step).
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(
    actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of elementwise N(mean, exp(log_std)^2) log-densities over (H, D), counting only kept rows.

    Args:
        actions, mean: (B, H, D).
        log_std: broadcastable to (B, H, D) (the chunk head's (H, D) parameter, or per-step stds).
        keep: bool (B, H), True on the executed steps (None: all).
    Returns:
        (B,) log-probabilities.
    """
    log_std = log_std.expand_as(mean)
    z = (actions - mean) * torch.exp(-log_std)
    per = -0.5 * z.square() - log_std - 0.5 * LOG_2PI  # (B, H, D)
    if keep is not None:
        per = per * keep[..., None].to(per.dtype)
    return per.sum(dim=(1, 2))


def gaussian_entropy(log_std: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy of a diagonal Gaussian over a chunk's rows: log_std (H, D) shared by the batch (the chunk
    head's) or (B, H, D) per sample (a Flow-Noise step's); summed over the kept rows of bool keep (B, H)
    to (B,), or over every row when keep is None ((B,), or a scalar for a shared (H, D))."""
    per = log_std + 0.5 * (1 + LOG_2PI)
    if keep is None:
        return per.sum(dim=(-2, -1))
    return (keep[..., None].to(per.dtype) * per).sum(dim=(1, 2))


def gaussian_kl(
    mean: torch.Tensor,
    log_std: torch.Tensor,
    mean0: torch.Tensor,
    log_std0: torch.Tensor,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(N(mean, exp(log_std)^2) || N(mean0, exp(log_std0)^2)) of diagonal Gaussians over a chunk, summed
    over (H, D) counting only kept rows. mean, mean0: (B, H, D); log-stds broadcastable to them; keep: bool
    (B, H) (None: all). Returns (B,)."""
    per = (
        log_std0
        - log_std
        + (torch.exp(2 * log_std) + (mean - mean0).square()) / (2 * torch.exp(2 * log_std0))
        - 0.5
    )
    if keep is not None:
        per = per * keep[..., None].to(per.dtype)
    return per.sum(dim=(1, 2))


def sde_sigma(t: torch.Tensor, level: float | torch.Tensor, num_steps: int) -> torch.Tensor:
    """Flow-SDE's noise scale sigma_t = level sqrt(t / (1 - t)), t capped at 1 - 1/N."""
    tc = t.clamp(max=1.0 - 1.0 / num_steps)
    return level * torch.sqrt(tc / (1.0 - tc))


def sde_step_moments(
    x: torch.Tensor, v: torch.Tensor, t: float, dt: float, level: float | torch.Tensor, num_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (B, H, D) and std (scalar tensor) of x_{t-dt} given x_t = x and velocity v (module docstring)."""
    tt = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    sigma = sde_sigma(tt, level, num_steps)
    n_hat = x + (1.0 - t) * v
    mean = x - (v + sigma.square() / (2.0 * t) * n_hat) * dt
    return mean, sigma * math.sqrt(dt)


def flow_sde_chain_log_prob(
    chain: torch.Tensor,
    velocities: list[torch.Tensor],
    level: float | torch.Tensor,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-likelihood (B,) of a sampled denoising chain under Flow-SDE.

    Args:
        chain: (B, N + 1, H, D): x at t = 1, 1 - 1/N, ..., 0 (chain[:, 0] is the initial noise).
        velocities: N tensors (B, H, D), v(x at step k, t_k) (with gradients when training).
        level: the SDE's noise level (a float or a scalar tensor, e.g. exp of a learned log).
        keep: bool (B, H): the executed rows. It applies to the last step only: the expert attends
            across rows, so an intermediate step's unexecuted rows shape the executed actions, and leaving
            their densities out would bias the policy gradient; the last step's unexecuted rows affect
            nothing that runs.
    """
    n = len(velocities)
    total = chain.new_zeros(chain.shape[0])
    for k, v in enumerate(velocities):
        t = 1.0 - k / n
        mean, std = sde_step_moments(chain[:, k], v, t, 1.0 / n, level, n)
        rows = keep if k == n - 1 else None
        total = total + gaussian_log_prob(chain[:, k + 1], mean, torch.log(std), rows)
    return total


def flow_noise_chain_log_prob(
    chain: torch.Tensor,
    means: list[torch.Tensor],
    stds: list[torch.Tensor],
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Joint log-likelihood (B,) of a denoising chain under Flow-Noise, averaged over its N + 1 terms.

    Args:
        chain: (B, N + 1, H, D): the initial noise, then x after each of the N steps.
        means: N tensors (B, H, D), the Euler means x_k - v_k / N (with gradients when training).
        stds: N tensors (B, H, D), the noise network's stds at each step.
        keep: bool (B, H), the executed rows; as for Flow-SDE it masks the last step only.
    """
    n = len(means)
    zero = torch.zeros((), dtype=chain.dtype, device=chain.device)
    total = gaussian_log_prob(chain[:, 0], torch.zeros_like(chain[:, 0]), zero)
    for k in range(n):
        rows = keep if k == n - 1 else None
        total = total + gaussian_log_prob(chain[:, k + 1], means[k], torch.log(stds[k]), rows)
    return total / (n + 1)


@torch.no_grad()
def flow_sde_sample(
    velocity, x1: torch.Tensor, num_steps: int, level: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Samples a chain (B, N + 1, H, D) from noise x1 with `velocity(x, t_vector) -> v` (Flow-SDE)."""
    xs = [x1]
    x = x1
    n = num_steps
    for k in range(n):
        t = 1.0 - k / n
        v = velocity(x, torch.full((x.shape[0],), t, device=x.device)).float()
        mean, std = sde_step_moments(x, v, t, 1.0 / n, level, n)
        eps = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device)
        x = mean + std * eps.to(x.device)
        xs.append(x)
    return torch.stack(xs, dim=1)


__all__ = [
    "flow_noise_chain_log_prob",
    "flow_sde_chain_log_prob",
    "flow_sde_sample",
    "gaussian_entropy",
    "gaussian_kl",
    "gaussian_log_prob",
    "sde_sigma",
    "sde_step_moments",
]
