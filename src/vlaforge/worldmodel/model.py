"""The world model's networks: a frame autoencoder, a latent dynamics model and the success judge.

- `FrameAutoencoder`: conv encoder to a (C, S/4, S/4) latent grid (tanh-bounded) and a mirrored decoder.
- `LatentDynamics`: predicts the next latent frame from the K previous ones and their K actions (causal:
  only the past is read). With a stride S > 1 the frames are S steps apart, the next one is S steps on,
  and each frame's "action" is the S actions taken from it. With the "flow" objective it is a
  flow-matching velocity field over the normalised latent change d = (z_{t+1} - z_t) / delta_std, the
  convention of pi0's action expert (x_s = s * noise + (1 - s) * d, target noise - d, Euler from s = 1
  to 0); with "mse" it regresses d.
  Conditioning (actions and the flow time) enters every residual block by FiLM. With "mse" the loss can
  be unrolled R steps on the model's own predictions (`rollout_loss`).
- `SuccessJudge`: a small conv classifier of one frame, with a fitted temperature.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class FrameAutoencoder(nn.Module):
    def __init__(self, latent_channels: int = 8, width: int = 32):
        super().__init__()
        w, c = width, latent_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, w, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, c, 3, padding=1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(c, 2 * w, 3, padding=1), nn.GELU(),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.GELU(),
            nn.ConvTranspose2d(w, w, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w, 3, 3, padding=1),
        )  # fmt: skip

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, C, S/4, S/4) in (-1, 1)."""
        return torch.tanh(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, S/4, S/4) -> (B, 3, S, S), roughly [-1, 1] (clamp before turning into pixels)."""
        return self.decoder(z)


def sincos(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) in [0, 1] -> (B, dim) sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), half, device=t.device))
    angles = t[:, None] * freqs[None, :] * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _Block(nn.Module):
    def __init__(self, width: int, cond: int):
        super().__init__()
        self.norm = nn.GroupNorm(8 if width % 8 == 0 else 1, width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.film = nn.Linear(cond, 2 * width)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)
        h = self.norm(x) * (1 + scale) + shift
        return x + self.conv2(F.gelu(self.conv1(F.gelu(h))))


class LatentDynamics(nn.Module):
    def __init__(self, latent_channels: int, context: int, action_dim: int, width: int = 64, blocks: int = 4):
        super().__init__()
        c, cond = latent_channels, 4 * width
        self.context = context
        self.inp = nn.Conv2d(c * (context + 1), width, 3, padding=1)
        self.cond = nn.Sequential(
            nn.Linear(context * action_dim + 64, cond), nn.GELU(), nn.Linear(cond, cond)
        )
        self.blocks = nn.ModuleList([_Block(width, cond) for _ in range(blocks)])
        self.out = nn.Conv2d(width, c, 3, padding=1)

    def forward(
        self, ctx: torch.Tensor, actions: torch.Tensor, x: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """ctx (B, K, C, h, w) latents, actions (B, K, A) normalised, x (B, C, h, w) the noisy change at
        flow time t (B,) -> (B, C, h, w) velocity (flow) or the change itself (mse, x = 0, t = 0)."""
        b, k, c, h, w = ctx.shape
        hcur = self.inp(torch.cat([ctx.reshape(b, k * c, h, w), x], dim=1))  # (B, width, h, w)
        cond = self.cond(torch.cat([actions.reshape(b, -1), sincos(t, 64)], dim=1))
        for block in self.blocks:
            hcur = block(hcur, cond)
        return self.out(F.gelu(hcur))


class WorldModel(nn.Module):
    """Autoencoder + dynamics + the normalisers (buffers, saved with the weights)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.ae = FrameAutoencoder(cfg["latent_channels"], cfg["width"])
        self.dyn = LatentDynamics(
            cfg["latent_channels"],
            cfg["context"],
            cfg["action_dim"] * self.stride,
            cfg["dyn_width"],
            cfg["dyn_blocks"],
        )
        self.register_buffer("action_mean", torch.zeros(cfg["action_dim"]))
        self.register_buffer("action_std", torch.ones(cfg["action_dim"]))
        self.register_buffer("delta_std", torch.ones(()))

    @property
    def context(self) -> int:
        return int(self.cfg["context"])

    @property
    def stride(self) -> int:
        """Steps between the frames the model predicts (models saved before strides existed: 1)."""
        return int(self.cfg.get("stride", 1))

    def norm_actions(self, a: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """Robot-unit actions (..., A), or groups of them flattened (..., n * A), normalised per dim;
        positions marked in `pad` (...) become zeros."""
        dim = self.action_mean.shape[0]
        out = ((a.unflatten(-1, (-1, dim)) - self.action_mean) / self.action_std).flatten(-2)
        return out if pad is None else out.masked_fill(pad[..., None], 0.0)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (..., S, S, 3) -> latents (..., C, S/4, S/4)."""
        lead = frames.shape[:-3]
        x = to_unit(frames.reshape(-1, *frames.shape[-3:]))
        z = self.ae.encode(x)
        return z.reshape(*lead, *z.shape[1:])

    def decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        """latents (B, C, h, w) -> uint8 (B, S, S, 3)."""
        return to_uint8(self.ae.decode(z))

    def flow_loss(
        self, ctx: torch.Tensor, actions: torch.Tensor, target: torch.Tensor, gen: torch.Generator | None
    ) -> torch.Tensor:
        """The dynamics loss of one batch (latents detached by the caller)."""
        d = (target - ctx[:, -1]) / self.delta_std
        b = d.shape[0]
        if self.cfg["objective"] == "mse":
            zero = torch.zeros(b, device=d.device)
            return F.mse_loss(self.dyn(ctx, actions, torch.zeros_like(d), zero), d)
        noise = torch.randn(d.shape, generator=gen, device="cpu").to(d.device)
        beta = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0))
        s = beta.sample((b,)) if gen is None else _beta_sample(b, gen)
        t = (0.999 * s + 0.001).to(d.device)  # pi0's time distribution, toward the noisy end
        x = t[:, None, None, None] * noise + (1 - t[:, None, None, None]) * d
        return F.mse_loss(self.dyn(ctx, actions, x, t), noise - d)

    def rollout_loss(self, ctx: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The "mse" loss unrolled on the model's own predictions (latents detached by the caller).

        ctx (B, K, C, h, w) real latents, actions (B, K + R - 1, A) normalised (those taken at the context
        frames, then at the first R - 1 targets), targets (B, R, C, h, w) the next R real latents. Step r
        predicts the change from the last latent of its context (its own prediction after the first step)
        and regresses the change that reaches target r from there, so open-loop errors are corrected
        instead of compounding; gradients flow back through the rollout. The loss averages the R steps;
        R = 1 is the one-step "mse" loss exactly.
        """
        k, b = ctx.shape[1], ctx.shape[0]
        zero = torch.zeros(b, device=ctx.device)
        losses = []
        for r in range(targets.shape[1]):
            last = ctx[:, -1]
            d = self.dyn(ctx, actions[:, r : r + k], torch.zeros_like(last), zero)
            losses.append(F.mse_loss(d, (targets[:, r] - last) / self.delta_std))
            nxt = (last + d * self.delta_std).clamp(-1, 1)
            ctx = torch.cat([ctx[:, 1:], nxt[:, None]], dim=1)
        return torch.stack(losses).mean()

    @torch.no_grad()
    def predict(
        self, ctx: torch.Tensor, actions: torch.Tensor, gen: torch.Generator | None = None
    ) -> torch.Tensor:
        """The next latent (B, C, h, w) from ctx (B, K, C, h, w) and normalised actions (B, K, A)."""
        last = ctx[:, -1]
        b = last.shape[0]
        if self.cfg["objective"] == "mse":
            d = self.dyn(ctx, actions, torch.zeros_like(last), torch.zeros(b, device=last.device))
        else:
            d = torch.randn(last.shape, generator=gen, device="cpu").to(last.device)
            n = int(self.cfg["flow_steps"])
            for i in range(n):
                t = torch.full((b,), 1.0 - i / n, device=last.device)
                d = d - self.dyn(ctx, actions, d, t) / n
        return (last + d * self.delta_std).clamp(-1, 1)


def _beta_sample(n: int, gen: torch.Generator) -> torch.Tensor:
    """Beta(1.5, 1) by inverse CDF (F(s) = s^1.5), from a seeded generator."""
    return torch.rand(n, generator=gen) ** (1 / 1.5)


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> float (B, 3, S, S) in [-1, 1]."""
    return frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, S, S) in [-1, 1] -> uint8 (B, S, S, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


class SuccessJudge(nn.Module):
    """Frame -> success logit z; calibrated probability sigmoid(z / `temperature` + `bias`) (buffers fitted
    on held-out frames, `vlaforge.worldmodel.judge.fit_platt`)."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 1),
        )  # fmt: skip
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("bias", torch.zeros(()))

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) -> raw logits (B,)."""
        return self.net(to_unit(frames)).squeeze(1)

    @torch.no_grad()
    def prob(self, frames: torch.Tensor) -> torch.Tensor:
        """Calibrated success probabilities (B,)."""
        return torch.sigmoid(self.logits(frames) / self.temperature + self.bias)


class Imagination:
    """A batch of imagined episodes: the last K latents and actions, stepped by `step(actions)`.

    `start(frames)` begins from real frames (B, S, S, 3): the context is that frame repeated with zero
    (padding) actions, as the model saw an episode's first frames in training.

    A model with a stride N > 1 predicts after every N-th step, from the N actions of those steps; the
    steps between return the last frame again (a camera running N times slower than the control loop, what
    a policy executing chunks of N actions open loop looks at anyway).

    Frames are decoded as changes (`pixel_residual`): the next frame is the current one plus
    decode(z_next) - decode(z_now), so the autoencoder's own reconstruction error, the same in both
    terms, cancels, and a still scene stays exactly the real first frame. Off, each frame is decode(z).
    """

    def __init__(self, model: WorldModel, gen: torch.Generator | None = None, pixel_residual: bool = True):
        self.model, self.gen, self.pixel_residual = model, gen, pixel_residual
        self.device = next(model.parameters()).device

    def _anchor(self, frame: torch.Tensor) -> None:
        """The current frame (pixels in [-1, 1]) and its decoded latent, for `pixel_residual`."""
        self.frame = to_unit(frame.to(self.device))
        self.decoded = self.model.ae.decode(self.z[:, -1])

    @torch.no_grad()
    def start(self, frames: torch.Tensor) -> None:
        z = self.model.encode_frames(frames.to(self.device))  # (B, C, h, w)
        k = self.model.context
        self.z = z[:, None].repeat(1, k, 1, 1, 1)  # (B, K, C, h, w)
        a = int(self.model.cfg["action_dim"]) * self.model.stride
        self.actions = torch.zeros(z.shape[0], k, a, device=self.device)  # normalised; 0 at padding
        self.pending: list[torch.Tensor] = []
        self._anchor(frames)

    @torch.no_grad()
    def start_from(self, frames: torch.Tensor, actions: torch.Tensor, pad: torch.Tensor) -> None:
        """Begins from real context: frames (B, K, S, S, 3) ending at the current frame, the model's
        stride apart, and the actions (B, K, stride * A, robot units) that led to each of them (the
        group taken from the context frame before); `pad` (B, K) marks padding positions."""
        self.z = self.model.encode_frames(frames.to(self.device))
        self.actions = self.model.norm_actions(actions.to(self.device).float(), pad.to(self.device))
        self.pending = []
        self._anchor(frames[:, -1])

    @torch.no_grad()
    def step(self, actions: torch.Tensor) -> torch.Tensor:
        """Applies (B, A) robot-unit actions; returns the imagined next frames uint8 (B, S, S, 3) (the
        current ones again until a stride's actions are in)."""
        self.pending.append(actions.to(self.device).float())
        if len(self.pending) < self.model.stride:
            return to_uint8(self.frame if self.pixel_residual else self.decoded)
        a = self.model.norm_actions(torch.cat(self.pending, dim=1))
        self.pending = []
        self.actions = torch.cat([self.actions[:, 1:], a[:, None]], dim=1)
        nxt = self.model.predict(self.z, self.actions, self.gen)
        self.z = torch.cat([self.z[:, 1:], nxt[:, None]], dim=1)
        decoded = self.model.ae.decode(nxt)
        if self.pixel_residual:
            self.frame = (self.frame + decoded - self.decoded).clamp(-1, 1)
        self.decoded = decoded
        return to_uint8(self.frame if self.pixel_residual else decoded)


def imagine(
    model: WorldModel, first: np.ndarray, actions: np.ndarray, gen: torch.Generator | None
) -> np.ndarray:
    """uint8 (1 + N, S, S, 3): the real frame `first` (S, S, 3), then the N frames the model imagines open
    loop under `actions` (N, A, robot units), one step each."""
    im = Imagination(model, gen)
    im.start(torch.from_numpy(first[None]))
    frames = [first]
    for t in range(len(actions)):
        frames.append(im.step(torch.from_numpy(actions[t : t + 1]))[0].cpu().numpy())
    return np.stack(frames)
