"""pi0's action expert: flow matching over the action chunk, by a second transformer that reads the LLM's
keys and values layer by layer.

Black et al., 2024, "pi0: A Vision-Language-Action Flow Model for General Robot Control" (objective, time
sampling, Euler integration, mixture-of-transformers attention). What is taken from it, the choices it
leaves open, and the no-cache reference path the tests compare against: docs/flow.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from vlaforge.errors import InputError
from vlaforge.head_specs import HEADS
from vlaforge.models.backbone import Prefix, PrismaticBackbone, additive_mask
from vlaforge.models.heads import ActionHead, Context, HeadDims, standard_normal

TIME_BETA_ALPHA = 1.5  # pi0: s ~ Beta(1.5, 1)
TIME_SCALE, TIME_MIN = 0.999, 0.001  # pi0: t = 0.999 s + 0.001, so t never reaches 0 (noise-free)
MIN_PERIOD, MAX_PERIOD = 4e-3, 4.0  # pi0's sine-cosine time embedding
NOISE_POLICY_WIDTH = 256  # the noise policy's hidden width (DSRL's latent-noise actor, a small MLP)


def flow_targets(
    actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """pi0's straight path: actions, noise (B, H, D), t (B,) -> x_t = t noise + (1 - t) actions and the
    target velocity u = noise - actions, both (B, H, D)."""
    tt = t.to(actions.dtype)[:, None, None]  # (B, 1, 1)
    return tt * noise + (1 - tt) * actions, noise - actions


def sample_time(
    n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training times (n,) float32: t = 0.999 s + 0.001, s ~ Beta(1.5, 1) drawn as U^(1/1.5) (inverse CDF).

    Drawn on the generator's device (the default device without one), then moved to `device`.
    """
    where = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=where)
    s = u.pow(1.0 / TIME_BETA_ALPHA)
    return (TIME_SCALE * s + TIME_MIN).to(device)


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sine-cosine embedding (B, dim) of t (B,): dim / 2 periods spaced geometrically from 4e-3 to 4.0,
    [sin(2 pi t / period), cos(2 pi t / period)] (pi0's `posemb_sincos`)."""
    if dim % 2:
        raise InputError(f"the time embedding needs an even width, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, device=t.device)
    period = MIN_PERIOD * (MAX_PERIOD / MIN_PERIOD) ** fraction  # (dim/2,)
    angle = t.float()[:, None] * (2 * math.pi / period)[None]  # (B, dim/2)
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T, n * hd) -> (B, n, T, hd)."""
    B, T, _ = x.shape
    return x.view(B, T, n, -1).transpose(1, 2)


class SwiGLU(nn.Module):
    """Llama / Gemma MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, width: int, mlp_width: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, mlp_width, bias=False)
        self.up_proj = nn.Linear(width, mlp_width, bias=False)
        self.down_proj = nn.Linear(mlp_width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ExpertLayer(nn.Module):
    """One expert block: pre-norm attention over [LLM prefix keys/values ++ own], then pre-norm SwiGLU.

    Its projections map its own width to the LLM's attention geometry (n_heads x head_dim queries, n_kv_heads x
    head_dim keys and values), so its queries can attend to the LLM's cached keys.
    """

    def __init__(self, width: int, mlp_width: int, n_heads: int, n_kv_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.input_norm = nn.RMSNorm(width, eps=eps)
        self.q_proj = nn.Linear(width, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, width, bias=False)
        self.post_norm = nn.RMSNorm(width, eps=eps)
        self.mlp = SwiGLU(width, mlp_width)

    def forward(
        self,
        x: torch.Tensor,
        prefix_k: torch.Tensor,
        prefix_v: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """x (B, H, width); prefix keys / values (B, n_kv, T, hd) as the LLM cached them (RoPE applied);
        rope: cos, sin (B, H, hd) of the actions' positions; mask: additive (B, 1, H, T + H)."""
        h = self.input_norm(x)
        q = _heads(self.q_proj(h), self.n_heads)  # (B, nh, H, hd)
        k = _heads(self.k_proj(h), self.n_kv_heads)  # (B, nkv, H, hd)
        v = _heads(self.v_proj(h), self.n_kv_heads)
        q, k = apply_rotary_pos_emb(q, k, *rope)
        k = torch.cat([prefix_k.to(k.dtype), k], dim=2)  # (B, nkv, T + H, hd)
        v = torch.cat([prefix_v.to(v.dtype), v], dim=2)
        rep = self.n_heads // self.n_kv_heads  # grouped-query attention: each KV head serves `rep` heads
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))  # (B, nh, H, hd)
        x = x + self.o_proj(out.transpose(1, 2).flatten(2))
        return x + self.mlp(self.post_norm(x))


class FlowHead(ActionHead):
    """pi0's flow-matching action expert (see the module docstring).

    Args:
        dims: D, H, and `dims.llm` (the LLM's `LLMSpec`: depth, heads, KV heads, width, norm epsilon).
        num_steps: Euler steps at inference (pi0: 10); `predict(num_steps=...)` overrides it per call.
        expert_width: the expert's width; 0 takes half the LLM width rounded down to a multiple of head_dim.
        noise_policy: the integration starts from x ~ N(mu(s), diag(exp(2 log_std))) instead of N(0, I),
            mu an MLP on the prefix's last hidden state and log_std an (H, D) parameter (Wagenmaker et al.,
            2025, "Steering Your Diffusion Policy with Latent Space Reinforcement Learning": RL trains only
            this noise, the expert stays as it is). Created with mu = 0 and log_std = 0, so it starts as
            exactly the plain sampler; `vlaforge rl --flow-rl latent` adds (`enable_noise_policy`) and
            trains it.
        noise_bound: with a noise policy and a bound b > 0, the start is b * tanh(x) of that Gaussian's
            draw x, so every element lies in (-b, b) (DSRL's off-policy learner bounds its noise so, at
            b = 1.5; `vlaforge rl --algo sac` sets it). 0: unbounded.
    """

    def __init__(
        self,
        dims: HeadDims,
        num_steps: int = 10,
        expert_width: int = 0,
        noise_policy: bool = False,
        noise_bound: float = 0.0,
    ):
        super().__init__(dims.action_dim, dims.chunk_size)
        llm = getattr(dims, "llm", None)
        if llm is None:
            raise InputError("the flow head needs the LLM's geometry: build it with HeadDims(llm=preset.llm)")
        if num_steps < 1:
            raise InputError(f"the flow head needs num_steps >= 1, got {num_steps}")
        n_heads, n_kv = llm.num_heads, llm.num_kv_heads or llm.num_heads
        head_dim = llm.hidden_size // n_heads
        width = int(expert_width) or max(head_dim, llm.hidden_size // 2 // head_dim * head_dim)
        if width < 2 or width % 2:
            raise InputError(f"expert_width must be even and >= 2 (the time embedding), got {width}")
        self.num_steps = int(num_steps)
        self.expert_width = width  # the resolved width is what config() saves
        self.mlp_width = max(1, round(llm.intermediate_size * width / llm.hidden_size))
        self.action_in = nn.Linear(dims.action_dim, width)
        self.time_mlp_in = nn.Linear(2 * width, width)
        self.time_mlp_out = nn.Linear(width, width)
        self.layers = nn.ModuleList(
            ExpertLayer(width, self.mlp_width, n_heads, n_kv, head_dim, llm.rms_norm_eps)
            for _ in range(llm.num_layers)
        )
        self.norm = nn.RMSNorm(width, eps=llm.rms_norm_eps)
        self.action_out = nn.Linear(width, dims.action_dim)
        self.llm_width = llm.hidden_size
        self.noise_policy = False
        if noise_bound < 0:
            raise InputError(f"noise_bound must be >= 0 (0: unbounded), got {noise_bound}")
        self.noise_bound = float(noise_bound)
        if noise_policy:
            self.enable_noise_policy()

    # -------------------------------------------------------------------- the noise policy (DSRL)
    def enable_noise_policy(self) -> None:
        """Adds the noise policy (mu = 0, log_std = 0: the plain sampler's N(0, I)) on the head's device
        and dtype; a head that has one keeps it."""
        if self.noise_policy:
            return
        H, D = self.chunk_size, self.action_dim
        like = self.action_out.weight
        self.noise_mean = nn.Sequential(
            nn.Linear(self.llm_width, NOISE_POLICY_WIDTH), nn.Tanh(), nn.Linear(NOISE_POLICY_WIDTH, H * D)
        ).to(device=like.device, dtype=like.dtype)
        nn.init.zeros_(self.noise_mean[-1].weight)
        nn.init.zeros_(self.noise_mean[-1].bias)
        self.noise_log_std = nn.Parameter(torch.zeros(H, D, device=like.device, dtype=like.dtype))
        self.noise_policy = True

    def untrained_parameters(self) -> list[nn.Parameter]:
        """The noise policy's parameters (none without one): the flow-matching loss never reads them."""
        return [*self.noise_mean.parameters(), self.noise_log_std] if self.noise_policy else []

    def noise_distribution(self, prefix: Prefix) -> tuple[torch.Tensor, torch.Tensor]:
        """The start of the integration: mean (B, H, D) and log-std (H, D), float32; zeros without a noise
        policy (N(0, I))."""
        return self.noise_moments(prefix.last_hidden)

    def noise_moments(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`noise_distribution` from the prefix's last hidden states (B, d) alone (what the noise policy
        reads; SAC's replay buffer keeps them instead of prefixes)."""
        B, H, D = hidden.shape[0], self.chunk_size, self.action_dim
        if not self.noise_policy:
            zeros = torch.zeros((B, H, D), device=hidden.device)
            return zeros, zeros[0]
        w = self.noise_mean[0].weight
        mean = self.noise_mean(hidden.to(device=w.device, dtype=w.dtype)).float().view(B, H, D)
        return mean, self.noise_log_std.float()

    def bound_noise(self, u: torch.Tensor) -> torch.Tensor:
        """A noise policy's draw u as the integration's start: `noise_bound` * tanh(u) when the bound is set,
        else u itself."""
        return self.noise_bound * torch.tanh(u) if self.noise_bound > 0 else u

    def start_noise(self, prefix: Prefix, x: torch.Tensor) -> torch.Tensor:
        """Where the integration starts, from a standard normal draw x (B, H, D): x itself without a noise
        policy; mean + exp(log_std) * x with one, then `bound_noise` of that."""
        if not self.noise_policy:
            return x
        mean, log_std = self.noise_distribution(prefix)
        return self.bound_noise(mean + torch.exp(log_std) * x.to(mean.device))

    # -------------------------------------------------------------------- the expert
    def embed(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noisy actions (B, H, D) and times (B,) -> expert input tokens (B, H, width)."""
        dtype = self.action_in.weight.dtype
        a = self.action_in(x_t.to(dtype))  # (B, H, w)
        te = time_embedding(t, self.expert_width).to(dtype)[:, None].expand_as(a)  # (B, H, w)
        return self.time_mlp_out(F.silu(self.time_mlp_in(torch.cat([a, te], dim=-1))))

    @staticmethod
    def _rope(backbone: PrismaticBackbone, x: torch.Tensor, position_ids: torch.Tensor):
        """cos, sin (B, L, hd) from the LLM's own rotary module (its frequencies and scaling)."""
        return backbone.llm.get_decoder().rotary_emb(x, position_ids)

    def velocity(
        self,
        backbone: PrismaticBackbone,
        prefix: Prefix,
        x_t: torch.Tensor,
        t: torch.Tensor,
        features: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """v_theta(x_t, t, prefix) (B, H, D): the expert on the cached prefix (the cache is only read).

        Args:
            backbone: the backbone whose LLM filled `prefix` (its rotary module gives the positions).
            prefix: the LLM's keys and values over [pads][BOS][patches][state][prompt].
            x_t: noisy normalised actions (B, H, D).
            t: flow times (B,).
            features: also return the expert's normed output tokens (B, H, width), what the velocity is
                read from (Flow-Noise's noise network reads them too, `vlaforge.rl.actor`).
        """
        B, H, _ = x_t.shape
        x = self.embed(x_t, t)
        positions = prefix.next_position[:, None] + torch.arange(H, device=x.device)[None]  # (B, H)
        rope = self._rope(backbone, x, positions)
        T = prefix.length
        allowed = torch.cat(
            [prefix.valid[:, None, :].expand(B, H, T), prefix.valid.new_ones(B, H, H)], dim=-1
        )  # (B, H, T + H): valid prefix keys and every action, both ways
        mask = additive_mask(allowed[:, None], x.dtype)
        cache = prefix.cache.layers
        if len(cache) != len(self.layers):
            raise InputError(f"the prefix cache has {len(cache)} layers; the expert has {len(self.layers)}")
        for layer, kv in zip(self.layers, cache):
            x = layer(x, kv.keys, kv.values, rope, mask)
        h = self.norm(x)
        return (self.action_out(h), h) if features else self.action_out(h)

    def velocity_reference(
        self, backbone: PrismaticBackbone, ctx: Context, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """The same velocity (B, H, D) without the cache: pi0's joint attention, layer by layer.

        Each layer projects the prefix with the LLM's weights and the actions with the expert's, runs one
        explicit-softmax attention over all T + H positions under pi0's block mask (prefix: causal over valid
        keys, never the actions; actions: valid prefix keys and all actions), and sends each part through its
        own output projection and MLP. Assumes Llama-style decoder layers.
        """
        seq = backbone.assemble(ctx.images, ctx.state, ctx.prompt_ids)
        decoder = backbone.llm.get_decoder()
        B, T, _ = seq.embeds.shape
        H = x_t.shape[1]
        dev = seq.embeds.device
        hp, ha = seq.embeds, self.embed(x_t, t)  # (B, T, d_llm), (B, H, w)
        start = seq.position_ids[:, -1:] + 1
        positions = torch.cat([seq.position_ids, start + torch.arange(H, device=dev)[None]], dim=1)
        cos, sin = self._rope(backbone, hp, positions)  # (B, T + H, hd)
        i = torch.arange(T + H, device=dev)
        is_prefix = i < T
        key_ok = torch.cat([seq.valid, torch.ones(B, H, dtype=torch.bool, device=dev)], dim=1)  # (B, T + H)
        causal = i[None, :] <= i[:, None]  # (T+H, T+H)
        rows_prefix = causal & is_prefix[None, :]  # prefix queries: earlier prefix keys only
        rows_action = torch.ones_like(causal)  # action queries: all keys
        allowed = torch.where(is_prefix[:, None], rows_prefix, rows_action)[None] & key_ok[:, None, :]
        allowed = allowed | torch.eye(T + H, dtype=torch.bool, device=dev)[None]  # pad rows see themselves
        for llm_layer, ex in zip(decoder.layers, self.layers):
            att = llm_layer.self_attn
            nh, nkv, hd = ex.n_heads, ex.n_kv_heads, ex.head_dim
            xp, xa = llm_layer.input_layernorm(hp), ex.input_norm(ha)
            q = torch.cat([_heads(att.q_proj(xp), nh), _heads(ex.q_proj(xa), nh)], dim=2)  # (B, nh, T+H, hd)
            k = torch.cat([_heads(att.k_proj(xp), nkv), _heads(ex.k_proj(xa), nkv)], dim=2)
            v = torch.cat([_heads(att.v_proj(xp), nkv), _heads(ex.v_proj(xa), nkv)], dim=2)
            q, k = apply_rotary_pos_emb(q, k, cos.to(q.dtype), sin.to(q.dtype))
            k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
            scores = (q @ k.transpose(-1, -2)) * hd**-0.5  # (B, nh, T+H, T+H)
            scores = scores.masked_fill(~allowed[:, None], float("-inf"))
            out = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)  # (B, T+H, nh * hd)
            hp = hp + att.o_proj(out[:, :T].to(hp.dtype))
            hp = hp + llm_layer.mlp(llm_layer.post_attention_layernorm(hp))
            ha = ha + ex.o_proj(out[:, T:].to(ha.dtype))
            ha = ha + ex.mlp(ex.post_norm(ha))
        return self.action_out(self.norm(ha))

    def unused_backbone_modules(self, backbone: PrismaticBackbone) -> list[nn.Module]:
        """Backbone modules whose outputs never reach this head, besides the LLM's output layer (which `Policy`
        declares for every head that does not decode tokens): everything of the LLM's last layer after its
        keys and values, and its final norm. The prefix's own outputs are never read."""
        decoder = backbone.llm.get_decoder()
        last = decoder.layers[-1]
        return [
            last.self_attn.q_proj,
            last.self_attn.o_proj,
            last.post_attention_layernorm,
            last.mlp,
            decoder.norm,
        ]

    # -------------------------------------------------------------------- the ActionHead calls
    def encode_prefix_with_grad(self, backbone: PrismaticBackbone, ctx: Context) -> Prefix:
        """The prefix as `backbone.encode_prefix` builds it, in one LLM pass that keeps gradients (training)."""
        seq = backbone.assemble(ctx.images, ctx.state, ctx.prompt_ids)
        hidden, cache = backbone.run(seq, DynamicCache())
        return Prefix(cache, seq.valid, seq.position_ids[:, -1] + 1, hidden[:, -1])

    def flow_loss(
        self,
        backbone: PrismaticBackbone,
        ctx: Context,
        actions: torch.Tensor,
        pad: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The flow-matching loss for given noise (B, H, D) and times (B,) (`loss` draws them).

        Metric `l1`: |x_t - t v - actions| of the one-step estimate of the actions at the drawn t (a training
        signal, not the sampler's output).
        """
        a = actions[:, : self.chunk_size].float()  # (B, H, D)
        keep = (~pad[:, : self.chunk_size]).float()[..., None]  # (B, H, 1)
        x_t, u = flow_targets(a, noise.float(), t.float())
        v = self.velocity(backbone, self.encode_prefix_with_grad(backbone, ctx), x_t, t).float()
        n = (keep.sum() * self.action_dim).clamp(min=1)
        mse = ((v - u).square() * keep).sum() / n
        with torch.no_grad():
            a_hat = x_t - t.float()[:, None, None] * v
            l1 = ((a_hat - a).abs() * keep).sum() / n
        return mse, {"mse": mse.detach(), "l1": l1}

    def loss(self, backbone, ctx, actions, pad):
        """pi0's loss: noise ~ N(0, I), t from the shifted Beta (`sample_time`), MSE of the velocity."""
        noise = torch.randn(actions.shape[0], self.chunk_size, self.action_dim, device=actions.device)
        t = sample_time(actions.shape[0], actions.device)
        return self.flow_loss(backbone, ctx, actions, pad, noise, t)

    def initial_noise(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """x at t = 1: `torch.randn((B, H, D), generator=generator)` float32, drawn on the generator's device
        (so a CPU generator gives the same sample on any device), then moved to `device`."""
        return standard_normal((batch_size, self.chunk_size, self.action_dim), device, generator)

    @torch.no_grad()
    def predict(self, backbone, ctx, *, generator=None, num_steps=None):
        """Euler from noise (t = 1) to t = 0 in `num_steps` steps (default `self.num_steps`); the prefix is
        encoded once and only the expert runs at every step. Normalised actions (B, H, D) float32. With a
        noise policy the start is mean + exp(log_std) * the same standard normal draw."""
        n = int(num_steps or self.num_steps)
        if n < 1:
            raise InputError(f"num_steps must be >= 1, got {n}")
        prefix = backbone.encode_prefix(ctx.images, ctx.state, ctx.prompt_ids)
        x = self.start_noise(prefix, self.initial_noise(ctx.batch_size, backbone.device, generator))
        return self.integrate(backbone, prefix, x, n)

    @torch.no_grad()
    def integrate(
        self, backbone: PrismaticBackbone, prefix: Prefix, x: torch.Tensor, num_steps: int
    ) -> torch.Tensor:
        """Euler from x (B, H, D) at t = 1 to t = 0 in `num_steps` steps on an encoded prefix."""
        n = int(num_steps)
        for i in range(n):
            t = torch.full((x.shape[0],), 1.0 - i / n, device=x.device)
            x = x + (-1.0 / n) * self.velocity(backbone, prefix, x, t).float()
        return x


FlowHead.spec = HEADS["flow"]


__all__ = ["FlowHead", "flow_targets", "sample_time", "time_embedding"]
