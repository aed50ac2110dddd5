"""A diffusion action head: a DiT denoises the action chunk, cross-attending to the VLM's hidden states.

Diffusion Policy (Chi et al., 2023: DDPM objective, squared-cosine schedule, epsilon prediction), DDIM
sampling (Song et al., 2021), DiT blocks with adaLN-Zero (Peebles & Xie, 2023), as GR00T N1 and TRI's LBM
condition on the VLM. What is taken from each, and the choices they leave open: docs/diffusion.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vlaforge.errors import InputError
from vlaforge.head_specs import HEADS
from vlaforge.models.backbone import PrismaticBackbone
from vlaforge.models.heads import ActionHead, Context, HeadDims, standard_normal

MAX_BETA = 0.999  # squaredcos_cap_v2's cap (Nichol & Dhariwal, 2021: keeps the last step finite)
TIME_FREQ_DIM = 256  # DiT's frequency_embedding_size


# ---------------------------------------------------------------------------------------- the schedule
def squaredcos_alphas_cumprod(train_steps: int) -> torch.Tensor:
    """`squaredcos_cap_v2` (improved DDPM's cosine schedule) -> alphas_cumprod (T,), float64.

    alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2; beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T),
    0.999); alphas_cumprod = cumprod(1 - beta).
    """

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    T = train_steps
    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), MAX_BETA) for i in range(T)]
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), dim=0)


def ddim_timesteps(train_steps: int, num_steps: int) -> list[int]:
    """`num_steps` evenly spaced timesteps from T - 1 down ("trailing"): T=100, N=10 -> [99, 89, ..., 9]."""
    if not 1 <= num_steps <= train_steps:
        raise InputError(f"num_steps must be in [1, train_steps={train_steps}]; got {num_steps}")
    ratio = train_steps / num_steps
    return [round(train_steps - i * ratio) - 1 for i in range(num_steps)]


def _at(alphas_cumprod: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """a_t broadcast against `like` (B, H, D); t an int or (B,) ints; a negative t means a = 1 (clean)."""
    if isinstance(t, int):
        return (alphas_cumprod[t] if t >= 0 else alphas_cumprod.new_ones(())).to(like.dtype)
    a = alphas_cumprod.to(like.device)[t.clamp(min=0)]
    a = torch.where(t >= 0, a, torch.ones_like(a))
    return a.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, t) -> torch.Tensor:
    """The forward process q(x_t | x_0): sqrt(a_t) x0 + sqrt(1 - a_t) noise (t: int or (B,))."""
    a = _at(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor, t) -> torch.Tensor:
    """x0 from x_t and a noise estimate: (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    a = _at(alphas_cumprod, t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    t: int,
    t_prev: int,
    clip: float | None = 1.0,
) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0) from t to t_prev (< 0: to x0, a = 1).

    x0_hat is clipped to [-clip, clip] when `clip` is given (Diffusion Policy's `clip_sample`); as in
    diffusers, the model's eps (not one re-derived from the clipped x0) carries the noise direction.
    """
    x0 = predict_x0(x_t, eps, alphas_cumprod, t)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    a_prev = _at(alphas_cumprod, t_prev, x_t)
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


# ---------------------------------------------------------------------------------------- the DiT
def timestep_embedding(
    t: torch.Tensor, dim: int = TIME_FREQ_DIM, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim) float32: [cos(t f_i), sin(t f_i)], f_i geometric
    from 1 down to 1 / max_period (Transformer / DDPM / DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, H, W) normalised, then scaled by (1 + scale) and shifted; shift, scale (B, 1, W)."""
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None, else cross-attention to it."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, H, W), context (B, T, W), mask bool (B, T) True on keys that take part."""
        B, H, W = x.shape
        src = x if context is None else context
        q = self.q(x).view(B, H, self.heads, -1).transpose(1, 2)  # (B, nh, H, hs)
        k, v = self.kv(src).view(B, src.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, nh, H, hs)
        return self.out(y.transpose(1, 2).reshape(B, H, W))


class DiTBlock(nn.Module):
    """DiT block with cross-attention: three pre-norm sub-layers (self-attention, cross-attention to the
    prefix, MLP), each `x + gate * f(modulate(LN(x), shift, scale))` with shift / scale / gate from the step
    embedding (adaLN-Zero: the modulation Linear starts at zero, so gates are zero and the block is the
    identity)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.cross_attn = Attention(width, heads)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 9 * width))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """x (B, H, W) action tokens, c (B, W) step embedding, context (B, T, W), mask (B, T)."""
        s1, sc1, g1, s2, sc2, g2, s3, sc3, g3 = self.ada(c)[:, None].chunk(9, dim=-1)  # each (B, 1, W)
        x = x + g1 * self.self_attn(modulate(self.norm1(x), s1, sc1))
        x = x + g2 * self.cross_attn(modulate(self.norm2(x), s2, sc2), context, mask)
        return x + g3 * self.mlp(modulate(self.norm3(x), s3, sc3))


class DiT(nn.Module):
    """The denoiser: noisy chunk (B, H, D), steps (B,), prefix (B, T, d_llm) + mask -> eps (B, H, D)."""

    def __init__(self, action_dim: int, chunk_size: int, cond_dim: int, width: int, depth: int):
        super().__init__()
        heads = max(1, width // 64)
        while width % heads:
            heads -= 1
        self.x_in = nn.Linear(action_dim, width)
        self.pos = nn.Parameter(torch.zeros(chunk_size, width))
        self.t_mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_proj = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(DiTBlock(width, heads) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, action_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: xavier-uniform Linears with zero bias, N(0, 0.02) for the step MLP and the
        position embedding, and zeros for every adaLN modulation and the output layer (adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos, std=0.02)
        for m in (self.t_mlp[0], self.t_mlp[2]):
            nn.init.normal_(m.weight, std=0.02)
        for lin in [b.ada[-1] for b in self.blocks] + [self.ada_out[-1], self.out]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """x_t (B, H, D), t (B,) steps, context (B, T, W) already projected, mask (B, T) -> eps (B, H, D)."""
        dtype = self.x_in.weight.dtype
        x = self.x_in(x_t.to(dtype)) + self.pos  # (B, H, W)
        c = self.t_mlp(timestep_embedding(t).to(dtype))  # (B, W)
        for block in self.blocks:
            x = block(x, c, context, mask)
        shift, scale = self.ada_out(c)[:, None].chunk(2, dim=-1)
        return self.out(modulate(self.norm_out(x), shift, scale))


# ---------------------------------------------------------------------------------------- the head
class DiffusionHead(ActionHead):
    """Diffusion Policy's DDPM / DDIM over the action chunk with a cross-attending DiT (module docstring).

    Args:
        dims: D, H and the LLM width.
        num_steps: DDIM steps at inference (default of `predict`'s `num_steps`).
        train_steps: T, the DDPM training steps (the schedule's length).
        depth: DiT blocks.
        width: DiT width; 0 takes min(LLM width, 256).
        clip_sample: clip the predicted x0 to [-1, 1] at every DDIM step (Diffusion Policy).
    """

    def __init__(
        self,
        dims: HeadDims,
        num_steps: int = 10,
        train_steps: int = 100,
        depth: int = 3,
        width: int = 0,
        clip_sample: bool = True,
    ):
        super().__init__(dims.action_dim, dims.chunk_size)
        if train_steps < 1 or depth < 1 or width < 0:
            raise InputError(
                f"diffusion head needs train_steps >= 1, depth >= 1, width >= 0; got {train_steps}, {depth}, {width}"
            )
        ddim_timesteps(train_steps, num_steps)  # validates num_steps
        self.num_steps, self.train_steps, self.depth = int(num_steps), int(train_steps), int(depth)
        self.width = int(width) or min(dims.hidden_size, 256)  # the resolved width is what config() saves
        self.clip_sample = bool(clip_sample)
        self.dit = DiT(dims.action_dim, dims.chunk_size, dims.hidden_size, self.width, self.depth)
        self.register_buffer("alphas_cumprod", self._schedule(), persistent=False)

    def _schedule(self, device: torch.device | None = None) -> torch.Tensor:
        return squaredcos_alphas_cumprod(self.train_steps).to(device=device, dtype=torch.float32)

    def _apply(self, fn, recurse=True):
        # `.to(dtype)` casts buffers too; the derived schedule is rebuilt in float32 on the new device.
        super()._apply(fn, recurse)
        self.alphas_cumprod = self._schedule(self.alphas_cumprod.device)
        return self

    # -------------------------------------------------------------------- pure steps on this schedule
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """q(x_t | x_0) on this head's schedule."""
        return add_noise(x0, noise, self.alphas_cumprod, t)

    def ddim_step(self, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
        """One DDIM step on this head's schedule, with its `clip_sample`."""
        return ddim_step(x_t, eps, self.alphas_cumprod, t, t_prev, 1.0 if self.clip_sample else None)

    def timesteps(self, num_steps: int | None = None) -> list[int]:
        return ddim_timesteps(self.train_steps, self.num_steps if num_steps is None else num_steps)

    # -------------------------------------------------------------------- conditioning and denoising
    def encode(self, backbone: PrismaticBackbone, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """One LLM pass over the prefix -> (context (B, T, W) in the DiT width, valid (B, T)).

        Differentiable: training calls it with grad; inference wraps it in no_grad.
        """
        seq = backbone.assemble(ctx.images, ctx.state, ctx.prompt_ids)
        hidden, _ = backbone.run(seq)  # (B, T, d_llm)
        context = self.dit.cond_proj(hidden.to(self.dit.cond_proj.weight.dtype))  # (B, T, W)
        return context, seq.valid

    def denoise(
        self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """The noise estimate eps (B, H, D), float32."""
        return self.dit(x_t, t, context, valid).float()

    def sample(
        self,
        eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        noise: torch.Tensor,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """DDIM from `noise` (B, H, D): `eps_fn(x_t, t (B,))` at each timestep, then the clean chunk."""
        steps = self.timesteps(num_steps)
        x = noise.float()
        for t, t_prev in zip(steps, steps[1:] + [-1]):
            t_b = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            x = self.ddim_step(x, eps_fn(x, t_b), t, t_prev)
        return x

    def initial_noise(self, batch_size: int, device: torch.device, generator: torch.Generator | None):
        """x_T ~ N(0, I) (B, H, D) float32 from `generator` (drawn on its device, then moved)."""
        return standard_normal((batch_size, self.chunk_size, self.action_dim), device, generator)

    # -------------------------------------------------------------------- the ActionHead calls
    def loss(self, backbone, ctx, actions, pad):
        """DDPM's simple loss: t ~ U{0, ..., T-1}, eps ~ N(0, I), MSE between the DiT's eps and eps over
        the steps not padded. Metric `l1`: |clip(x0_hat) - x0| of the one-step x0 estimate at the drawn t
        (a training signal, not the sampler's output)."""
        x0 = actions[:, : self.chunk_size].float()  # (B, H, D)
        keep = (~pad[:, : self.chunk_size]).float()[..., None]  # (B, H, 1)
        context, valid = self.encode(backbone, ctx)
        B = x0.shape[0]
        t = torch.randint(0, self.train_steps, (B,), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.add_noise(x0, noise, t)
        eps = self.denoise(x_t, t, context, valid)
        n = (keep.sum() * self.action_dim).clamp(min=1)
        mse = ((eps - noise).square() * keep).sum() / n
        with torch.no_grad():
            x0_hat = predict_x0(x_t, eps, self.alphas_cumprod, t).clamp(-1, 1)
            l1 = ((x0_hat - x0).abs() * keep).sum() / n
        return mse, {"mse": mse.detach(), "l1": l1}

    @torch.no_grad()
    def predict(self, backbone, ctx, *, generator=None, num_steps=None):
        """DDIM from noise drawn from `generator`; the backbone runs once, the DiT `num_steps` times."""
        context, valid = self.encode(backbone, ctx)
        noise = self.initial_noise(ctx.batch_size, context.device, generator)
        return self.sample(lambda x, t: self.denoise(x, t, context, valid), noise, num_steps)

    @torch.no_grad()
    def predict_reference(
        self,
        backbone: PrismaticBackbone,
        ctx: Context,
        *,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Slow reference: the backbone re-runs at every denoising step (tests compare it with `predict`)."""

        def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            context, valid = self.encode(backbone, ctx)
            return self.denoise(x, t, context, valid)

        noise = self.initial_noise(ctx.batch_size, backbone.device, generator)
        return self.sample(eps_fn, noise, num_steps)


DiffusionHead.spec = HEADS["diffusion"]


__all__ = [
    "DiT",
    "DiffusionHead",
    "add_noise",
    "ddim_step",
    "ddim_timesteps",
    "predict_x0",
    "squaredcos_alphas_cumprod",
    "timestep_embedding",
]
