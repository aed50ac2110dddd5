"""The policy as an RL actor: its head's mean chunk with exploration noise and a log-probability, and a
critic on the backbone's pooled features.

- chunk head: a ~ N(mu(s), diag(exp(2 log_std))) in normalised action units, `log_std` a learned (H, D)
  parameter that depends on neither the state nor the sample (`vlaforge.rl.logprob.gaussian_log_prob`).
- flow head, ``flow_rl="sde"``: Flow-SDE sampling, the chain of denoising states kept so its log-likelihood
  can be recomputed with gradients (`vlaforge.rl.logprob.flow_sde_chain_log_prob`); the noise level is
  exp(`log_std`), a scalar kept fixed (piRL treats it as a hyperparameter).
- flow head, ``flow_rl="noise"``: Flow-Noise, Euler steps plus noise whose std `NoiseNet` predicts from the
  expert's output tokens, learned with the policy (`vlaforge.rl.logprob.flow_noise_chain_log_prob`). It
  exists only while RL runs: the saved policy samples with the plain ODE, as piRL evaluates.
- flow head, ``flow_rl="latent"``: DSRL. The flow expert is frozen; the head's noise policy
  (`FlowHead.enable_noise_policy`) gives the integration's starting noise w ~ N(mu(s), diag(exp(2
  log_std))), the plain ODE maps it to the chunk, and the log-probability is the Gaussian's over all of w
  (every element of w moves every row). It is part of the policy, so the saved policy samples as it trained.

The critic: the mean of the LLM's final hidden states over the valid prefix positions (image patches,
state, prompt), then a two-layer MLP to one value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache

from vlaforge.errors import InputError
from vlaforge.models.backbone import Prefix
from vlaforge.models.heads import ChunkHead, Context
from vlaforge.rl.logprob import (
    flow_noise_chain_log_prob,
    flow_sde_chain_log_prob,
    flow_sde_sample,
    gaussian_entropy,
    gaussian_log_prob,
)

SUPPORTED_HEADS = ("chunk", "flow")
FLOW_RL = ("sde", "noise", "latent")
CRITIC_WIDTH = 256
# Flow-Noise's noise network, as piRL sets it for pi0: hidden widths, tanh, stds bounded in [0.08, 0.16].
NOISE_HIDDEN = (128, 64)
NOISE_STD_RANGE = (0.08, 0.16)


class NoiseNet(nn.Module):
    """Flow-Noise's std: the expert's output tokens (B, H, width) -> stds (B, H, D) in `NOISE_STD_RANGE`,
    through a tanh that places the log-variance between the bounds' log-variances."""

    def __init__(self, width: int, action_dim: int, std_range: tuple[float, float] = NOISE_STD_RANGE):
        super().__init__()
        dims = [width, *NOISE_HIDDEN, action_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.Tanh())
        self.mlp = nn.Sequential(*layers)
        lo, hi = (2.0 * float(np.log(s)) for s in std_range)
        self.register_buffer("logvar_min", torch.tensor(lo), persistent=False)
        self.register_buffer("logvar_max", torch.tensor(hi), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(self.mlp(features.float()))
        logvar = self.logvar_min + (self.logvar_max - self.logvar_min) * (z + 1.0) / 2.0
        return torch.exp(0.5 * logvar)


@dataclass
class Forward:
    """What one forward pass gives: the mean chunk (chunk head), the pooled features, and for the flow head
    the prefix (cache) its velocity reads."""

    mean: torch.Tensor | None
    features: torch.Tensor
    prefix: Prefix | None


class ActorCritic(nn.Module):
    """A `Policy` with exploration noise, log-probabilities and a value head.

    Args:
        policy: the policy to improve (chunk or flow head).
        init_log_std: initial log-std (chunk) or log noise level (flow).
        train_backbone: also update the backbone (else it is frozen; the head trains).
        flow_rl: how a flow head explores (`vlaforge.rl.config.RLConfig.flow_rl`).
        noise_bound: ``latent`` only: the bound a noise policy the run adds gets (`FlowHead.noise_bound`; 0:
            unbounded); a policy that has one keeps its own.
    """

    def __init__(
        self,
        policy: Any,
        init_log_std: float = -1.0,
        train_backbone: bool = False,
        flow_rl: str = "sde",
        noise_bound: float = 0.0,
    ):
        super().__init__()
        kind = policy.head.kind
        if flow_rl not in FLOW_RL:
            raise InputError(f"flow_rl must be one of {list(FLOW_RL)}; got {flow_rl!r}")
        if flow_rl in ("noise", "latent") and kind != "flow":
            raise InputError(f"--flow-rl {flow_rl} is for a flow head; this policy has a {kind!r} head")
        if flow_rl == "latent" and train_backbone:
            raise InputError("--flow-rl latent trains only the noise policy; the backbone stays frozen")
        if policy.family is not None or kind not in SUPPORTED_HEADS:
            raise InputError(
                f"vlaforge rl improves policies with a {' or '.join(SUPPORTED_HEADS)} head; this one has "
                f"{kind!r}{' (' + policy.family + ')' if policy.family else ''}"
            )
        if kind == "flow" and flow_rl == "sde" and policy.head.num_steps < 2:
            raise InputError(
                f"Flow-SDE needs a flow head with at least 2 integration steps; this one has "
                f"{policy.head.num_steps} (its noise level is 0 at the one step, so nothing explores)"
            )
        self.policy = policy
        self.kind = kind
        self.flow_rl = flow_rl if kind == "flow" else None
        H, D = policy.head.chunk_size, policy.head.action_dim
        shape = (H, D) if kind == "chunk" else ()
        self.log_std = nn.Parameter(torch.full(shape, float(init_log_std)), requires_grad=kind == "chunk")
        if self.flow_rl == "noise":
            self.noise_net = NoiseNet(policy.head.expert_width, D)
        width = policy.backbone.hidden_size
        self.critic = nn.Sequential(
            nn.Linear(width, CRITIC_WIDTH), nn.Tanh(), nn.Linear(CRITIC_WIDTH, CRITIC_WIDTH), nn.Tanh(),
            nn.Linear(CRITIC_WIDTH, 1),
        )  # fmt: skip
        nn.init.zeros_(self.critic[-1].weight)
        nn.init.zeros_(self.critic[-1].bias)
        for p in policy.backbone.parameters():
            p.requires_grad_(bool(train_backbone))
        for name in policy.unused_parameter_names():
            policy.get_parameter(name).requires_grad_(False)
        if self.flow_rl == "latent":  # DSRL: only the noise policy (and the critic) train
            head = policy.head
            fresh = not head.noise_policy
            head.enable_noise_policy()
            if fresh:
                with torch.no_grad():
                    head.noise_log_std.fill_(float(init_log_std))
                head.noise_bound = float(noise_bound)
            for p in head.parameters():
                p.requires_grad_(False)
            for p in head.untrained_parameters():
                p.requires_grad_(True)
            del self.log_std
            self.log_std = head.noise_log_std  # the same parameter: metrics read the noise's log-std here

    # ------------------------------------------------------------------ inputs
    def context(
        self, images: dict[str, np.ndarray], state: np.ndarray | None, instructions: list[str]
    ) -> Context:
        return self.policy._context(images, state, instructions)

    def normalized_to_robot(self, norm: np.ndarray) -> np.ndarray:
        """Normalised (B, H, D) -> robot units, clipped to the limits (as `Policy.predict_action_batch`)."""
        action_norm, _ = self.policy._norms_for(None)
        return np.clip(action_norm.unnormalize(norm), self.policy._low, self.policy._high).astype(np.float32)

    # ------------------------------------------------------------------ forward
    def forward_ctx(self, ctx: Context, head: Any = None) -> Forward:
        """One pass of the backbone and `head` (None: the policy's own; another chunk head, e.g. the initial
        policy's, reads the same backbone)."""
        backbone, head = self.policy.backbone, head if head is not None else self.policy.head
        if isinstance(head, ChunkHead):
            B, K = ctx.batch_size, head.placeholders.shape[0]
            suffix = head.placeholders[None].expand(B, -1, -1)  # (B, H*D, d)
            seq = backbone.assemble(
                ctx.images, ctx.state, ctx.prompt_ids, suffix=suffix, bidirectional_suffix=head.bidirectional
            )
            hidden, _ = backbone.run(seq)  # (B, T + K, d)
            mean = head.mlp(hidden[:, -K:].to(head.placeholders.dtype)).view(B, head.chunk_size, -1).float()
            valid = seq.valid[:, :-K]
            pooled = _masked_mean(hidden[:, :-K], valid)
            return Forward(mean, pooled, None)
        seq = backbone.assemble(ctx.images, ctx.state, ctx.prompt_ids)
        hidden, cache = backbone.run(seq, DynamicCache())
        prefix = Prefix(cache, seq.valid, seq.position_ids[:, -1] + 1, hidden[:, -1])
        return Forward(None, _masked_mean(hidden, seq.valid), prefix)

    def value(self, fwd: Forward) -> torch.Tensor:
        return self.critic(fwd.features.float()).squeeze(-1)  # (B,)

    @torch.no_grad()
    def sample(self, ctx: Context, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A sampled normalised chunk (B, H, D) and what its log-probability is recomputed from: the chunk
        itself (chunk head), the denoising chain (B, N + 1, H, D) (Flow-SDE, Flow-Noise) or the starting
        noise (B, H, D) (latent)."""
        return self._sample_from(self.forward_ctx(ctx), ctx.batch_size, generator)

    def _sample_from(
        self, fwd: Forward, B: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`sample` on an existing forward pass `fwd` of B observations."""
        head = self.policy.head
        if self.kind == "chunk":
            eps = torch.randn(fwd.mean.shape, generator=generator, device=generator.device)
            a = fwd.mean + torch.exp(self.log_std.float()) * eps.to(fwd.mean.device)
            return a, a
        x1 = torch.randn((B, head.chunk_size, head.action_dim), generator=generator, device=generator.device)
        backbone = self.policy.backbone
        if self.flow_rl == "latent":
            w = head.start_noise(fwd.prefix, x1)
            return head.integrate(backbone, fwd.prefix, w, head.num_steps), w
        if self.flow_rl == "noise":
            chain = self._noise_chain(fwd.prefix, x1.to(backbone.device), generator)
            return chain[:, -1], chain

        def velocity(x, t):
            return head.velocity(backbone, fwd.prefix, x, t)

        chain = flow_sde_sample(
            velocity, x1.to(backbone.device), head.num_steps, self.noise_level(), generator
        )
        return chain[:, -1], chain

    def _noise_steps(self, prefix: Prefix, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow-Noise's step k from x (B, H, D): the Euler mean x - v / N and the noise network's stds."""
        head = self.policy.head
        n = head.num_steps
        t = torch.full((x.shape[0],), 1.0 - k / n, device=x.device)
        v, h = head.velocity(self.policy.backbone, prefix, x, t, features=True)
        return x - v.float() / n, self.noise_net(h)

    @torch.no_grad()
    def _noise_chain(self, prefix: Prefix, x1: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        xs, x = [x1], x1
        for k in range(self.policy.head.num_steps):
            mean, std = self._noise_steps(prefix, x, k)
            eps = torch.randn(x.shape, generator=generator, device=generator.device)
            x = mean + std * eps.to(x.device)
            xs.append(x)
        return torch.stack(xs, dim=1)

    def noise_level(self) -> float:
        return float(torch.exp(self.log_std.detach()))

    def evaluate(
        self, ctx: Context, record: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities (B,), entropies (B,) (zeros for Flow-SDE) and values (B,), with gradients.

        Args:
            ctx: the observations the chunks were sampled from.
            record: what `sample` returned second (chunks or chains).
            keep: bool (B, H), the executed rows.
        """
        fwd = self.forward_ctx(ctx)
        value = self.value(fwd)
        if self.kind == "chunk":
            log_std = self.log_std.float()
            logp = gaussian_log_prob(record, fwd.mean, log_std, keep)
            ent = gaussian_entropy(log_std, keep)
            return logp, ent, value
        if self.flow_rl == "latent":  # record: the starting noise w (B, H, D); all of it acts
            if self.policy.head.noise_bound > 0:
                raise InputError(
                    "this policy's noise policy is bounded (noise_bound > 0): it trains with --algo sac, "
                    "whose log-probabilities account for the bound"
                )
            mean, log_std = self.policy.head.noise_distribution(fwd.prefix)
            return gaussian_log_prob(record, mean, log_std), gaussian_entropy(log_std).expand_as(value), value
        n = record.shape[1] - 1
        if self.flow_rl == "noise":
            steps = [self._noise_steps(fwd.prefix, record[:, k], k) for k in range(n)]
            means, stds = [m for m, _ in steps], [s for _, s in steps]
            logp = flow_noise_chain_log_prob(record, means, stds, keep)
            # The steps' Gaussian entropies, averaged over the steps (as the log-likelihood is).
            ent = torch.stack([gaussian_entropy(torch.log(s)) for s in stds]).mean(0)
            return logp, ent, value
        logp = self._sde_log_prob(fwd.prefix, record, keep, self.policy.head)
        return logp, torch.zeros_like(logp), value

    def _sde_log_prob(
        self, prefix: Prefix, chain: torch.Tensor, keep: torch.Tensor, head: Any
    ) -> torch.Tensor:
        """Flow-SDE log-likelihood (B,) of chains (B, N + 1, H, D) under `head`'s velocity on `prefix`."""
        n = chain.shape[1] - 1
        vels = []
        for k in range(n):
            t = torch.full((chain.shape[0],), 1.0 - k / n, device=chain.device)
            vels.append(head.velocity(self.policy.backbone, prefix, chain[:, k], t).float())
        return flow_sde_chain_log_prob(chain, vels, self.noise_level(), keep)

    @torch.no_grad()
    def sde_kl_estimate(
        self, ctx: Context, keep: torch.Tensor, reference: Any, generator: torch.Generator
    ) -> torch.Tensor:
        """Flow-SDE: log p(chain) - log p_ref(chain) (B,) for one chain per observation sampled from this
        policy; its mean estimates KL(this || reference) (the executed rows of `keep` (B, H) as the
        log-likelihood counts them). `reference`: another flow head on this backbone (a frozen backbone),
        or a whole `ActorCritic` (the backbone trains)."""
        if self.flow_rl != "sde":
            raise InputError(f"the KL estimate is for Flow-SDE; this actor is {self.kind}/{self.flow_rl}")
        fwd = self.forward_ctx(ctx)  # one backbone pass: sampling and both scores read its prefix
        _, chain = self._sample_from(fwd, ctx.batch_size, generator)
        logp = self._sde_log_prob(fwd.prefix, chain, keep, self.policy.head)
        if isinstance(reference, ActorCritic):  # its own backbone: its own pass
            ref = reference.evaluate(ctx, chain, keep)[0]
        else:
            ref = self._sde_log_prob(fwd.prefix, chain, keep, reference)
        return logp - ref


def _masked_mean(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of hidden (B, T, d) over the valid positions (B, T) -> (B, d) float32."""
    w = valid.to(torch.float32)[..., None]
    return (hidden.float() * w).sum(1) / w.sum(1).clamp(min=1)


__all__ = ["FLOW_RL", "NOISE_STD_RANGE", "ActorCritic", "Forward", "NoiseNet", "SUPPORTED_HEADS"]
