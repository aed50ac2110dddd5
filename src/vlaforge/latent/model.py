"""The latent action model (LAM): a frame pair (t, t + H) -> a few discrete tokens -> frame t + H.

Genie (Bruce et al., 2024) and LAPA (Ye et al., 2024) learn actions from video alone this way: an encoder
sees both frames and emits a code through a vector-quantised bottleneck (VQ-VAE, van den Oord et al., 2017);
a decoder sees only frame t and the code and must predict frame t + H, so the code has to carry what changed
between the frames, and the tiny bottleneck (here 4 tokens of a codebook of 8, LAPA's sizes) keeps it to
the few things an agent causes rather than the pixels.

- `VectorQuantizer`: nearest-codebook-entry quantisation with the straight-through estimator, a commitment
  loss beta * ||z_e - sg(z_q)||^2, and the codebook updated by exponential moving averages of its assigned
  encoder outputs (VQ-VAE-2, Razavi et al., 2019: no codebook loss), plus dead-code restarts.
- `LatentActionModel`: convolutional encoder of the stacked pair (t, t + H, their difference) -> `tokens`
  vectors of `code_dim`; convolutional decoder of frame t, modulated by the quantised code (FiLM, Perez et
  al., 2018), predicting the change frame t + H - frame t (so an unchanged frame costs nothing to predict).
  LAPA's encoder/decoder are spatio-temporal transformers at 256 px; small convnets at 64 px train on a CPU.
  The reconstruction loss is the squared error summed over a frame's pixels (averaged over the batch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vlaforge.errors import InputError
from vlaforge.latent.config import LAM_CONFIG, LAM_WEIGHTS

MODEL_KEYS = ("tokens", "codebook_size", "code_dim", "width", "image_size", "commitment", "ema_decay",
              "restart_below", "horizon", "camera")  # fmt: skip


class VectorQuantizer(nn.Module):
    """Quantises (B, N, D) vectors to their nearest of `num_codes` codebook entries.

    The codebook is a buffer moved by EMA (in training mode): with n_k the vectors assigned to entry k in
    a batch and s_k their sum, N_k <- d N_k + (1 - d) n_k, S_k <- d S_k + (1 - d) s_k, e_k = S_k / N_k
    (N Laplace-smoothed by `eps`). N starts at 1 and S at the initial entries, so an entry's first update is
    the average of its old value and its batch mean weighted d : (1 - d) n_k. The first training batch
    seeds the entries with K of its vectors (as k-means is initialised). An entry whose N_k falls under
    `restart_below` is moved to a random vector of the batch (and its N_k reset to 1).

    Args:
        num_codes: codebook entries K.
        dim: entry dimension D.
        decay: EMA decay d.
        commitment: beta of the commitment loss.
        restart_below: dead-code threshold on N_k (0: never restart).
        eps: Laplace smoothing of N.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        decay: float = 0.99,
        commitment: float = 0.25,
        restart_below: float = 0.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_codes, self.dim, self.decay, self.eps = num_codes, dim, decay, eps
        self.commitment, self.restart_below = commitment, restart_below
        embed = torch.randn(num_codes, dim)
        self.register_buffer("embed", embed)  # (K, D)
        self.register_buffer("cluster_size", torch.ones(num_codes))  # (K,) EMA of assignments
        self.register_buffer("embed_sum", embed.clone())  # (K, D) EMA of assigned vectors' sums
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> int64 (B, N): index of the nearest entry (squared Euclidean distance)."""
        flat = z.reshape(-1, self.dim)
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        return dist.argmin(1).reshape(z.shape[:-1])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (z_q with straight-through gradients, int64 codes (B, N), commitment loss).

        The forward value is the codebook entry; the backward pass copies the gradient to `z` unchanged.
        """
        if self.training and not bool(self.initialised):
            self._init_from(z.detach().reshape(-1, self.dim))
        idx = self.codes(z)
        z_q = self.embed[idx]  # (B, N, D)
        if self.training:
            self._ema_update(z.detach().reshape(-1, self.dim), idx.reshape(-1))
        loss = self.commitment * F.mse_loss(z, z_q.detach())
        return z + (z_q - z).detach(), idx, loss

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        """The first training batch seeds the codebook with K of its vectors (distinct rows where it has K),
        so no entry starts far from the data the encoder produces."""
        pick = torch.randperm(len(flat), device=flat.device)[: self.num_codes]
        if len(pick) < self.num_codes:
            pick = torch.randint(len(flat), (self.num_codes,), device=flat.device)
        self.embed.copy_(flat[pick])
        self.embed_sum.copy_(flat[pick])
        self.cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, self.num_codes).to(flat.dtype)  # (M, K)
        d = self.decay
        self.cluster_size.mul_(d).add_(onehot.sum(0), alpha=1 - d)
        self.embed_sum.mul_(d).add_(onehot.t() @ flat, alpha=1 - d)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        if self.restart_below > 0:
            dead = (self.cluster_size < self.restart_below).nonzero().flatten()
            if len(dead):
                pick = torch.randint(len(flat), (len(dead),), device=flat.device)
                self.embed[dead] = flat[pick]
                self.embed_sum[dead] = flat[pick]
                self.cluster_size[dead] = 1.0


def _conv_stack(c_in: int, width: int, image_size: int) -> tuple[nn.Sequential, int]:
    """Stride-2 4x4 convolutions halving `image_size` until it is at most 8 px, then a 3x3 one."""
    layers: list[nn.Module] = []
    c, side = c_in, image_size
    while side > 8:
        layers += [nn.Conv2d(c, width, 4, stride=2, padding=1), nn.GELU()]
        c, side = width, side // 2
    layers += [nn.Conv2d(c, width, 3, padding=1), nn.GELU()]
    return nn.Sequential(*layers), side


class LatentActionModel(nn.Module):
    """Frame pair -> `tokens` codes from a codebook of `codebook_size` -> predicted frame t + H.

    Images are float in [0, 1], (B, 3, S, S). See the module docstring for the design.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = {k: cfg[k] for k in MODEL_KEYS}
        s, w = int(cfg["image_size"]), int(cfg["width"])
        self.tokens, self.code_dim = int(cfg["tokens"]), int(cfg["code_dim"])
        self.enc, side = _conv_stack(9, w, s)  # (B, w, side, side) from [x_t, x_tH, x_tH - x_t]
        self.to_code = nn.Linear(w * side * side, self.tokens * self.code_dim)
        self.vq = VectorQuantizer(
            int(cfg["codebook_size"]),
            self.code_dim,
            decay=float(cfg["ema_decay"]),
            commitment=float(cfg["commitment"]),
            restart_below=float(cfg["restart_below"]),
        )
        self.dec_in, _ = _conv_stack(3, w, s)  # frame t's features (B, w, side, side)
        self.film = nn.Linear(self.tokens * self.code_dim, 2 * w)
        self.mix = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.GELU())
        up: list[nn.Module] = []
        while side < s:
            up += [nn.ConvTranspose2d(w, w, 4, stride=2, padding=1), nn.GELU()]
            side *= 2
        self.up = nn.Sequential(*up, nn.Conv2d(w, 3, 3, padding=1))

    def encode(self, x_t: torch.Tensor, x_th: torch.Tensor) -> torch.Tensor:
        """Continuous encoder output z_e, (B, tokens, code_dim)."""
        h = self.enc(torch.cat([x_t, x_th, x_th - x_t], 1)).flatten(1)
        return self.to_code(h).view(-1, self.tokens, self.code_dim)

    def decode(self, x_t: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        """Predicted frame t + H from frame t and the quantised code (B, tokens, code_dim)."""
        h = self.dec_in(x_t)
        scale, shift = self.film(z_q.flatten(1)).chunk(2, dim=1)  # (B, w) each
        h = self.mix(h * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
        return x_t + self.up(h)

    def forward(self, x_t: torch.Tensor, x_th: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses and codes of a batch of pairs: {"loss", "recon", "commit", "codes" (B, tokens)}."""
        z_q, codes, commit = self.vq(self.encode(x_t, x_th))
        recon = F.mse_loss(self.decode(x_t, z_q), x_th)  # per pixel, for the logs
        # The loss sums the squared error over a frame's pixels (VQ-VAE's reconstruction term is a sum
        # over pixels): with a per-pixel mean the commitment term outweighs it by the pixel count, and on
        # Meta-World, where a frame pair differs by ~0.003 MSE, the encoder collapsed onto a single code.
        loss = recon * x_th[0].numel() + commit
        return {"loss": loss, "recon": recon, "commit": commit, "codes": codes}

    @torch.no_grad()
    def label(self, x_t: torch.Tensor, x_th: torch.Tensor) -> torch.Tensor:
        """int64 (B, tokens): the latent action of each pair (no codebook update)."""
        return self.vq.codes(self.encode(x_t, x_th))


def to_float_images(frames: Any, device: torch.device | str) -> torch.Tensor:
    """uint8 (B, S, S, 3) numpy -> float (B, 3, S, S) in [0, 1] on `device`."""
    return torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def load_lam(path: str | Path, device: torch.device | str = "cpu") -> tuple[LatentActionModel, Path]:
    """A trained LAM from a run directory (its ``last``) or a checkpoint; returns (model, checkpoint dir)."""
    path = Path(path)
    if (path / "last").exists() and not (path / LAM_WEIGHTS).is_file():
        path = path / "last"
    path = path.resolve()
    if not (path / LAM_CONFIG).is_file() or not (path / LAM_WEIGHTS).is_file():
        raise InputError(
            f"{path}: not a latent action model (needs {LAM_CONFIG} and {LAM_WEIGHTS}); give the directory "
            "`vlaforge latent train --out` wrote, or one of its checkpoints"
        )
    cfg = json.loads((path / LAM_CONFIG).read_text())
    missing = [k for k in MODEL_KEYS if k not in cfg]
    if missing:
        raise InputError(f"{path / LAM_CONFIG}: keys {missing} are missing")
    model = LatentActionModel(cfg)
    model.load_state_dict(load_file(str(path / LAM_WEIGHTS)), strict=True)
    return model.to(device).eval(), path


def one_hot_actions(codes: torch.Tensor | Any, codebook_size: int) -> Any:
    """int (N, tokens) codes -> float32 numpy (N, tokens * codebook_size): token i's one-hot in block i."""
    codes = torch.as_tensor(codes)
    return F.one_hot(codes.long(), codebook_size).flatten(1).float().numpy()


def cluster_scores(labels: Any, codes: Any) -> dict[str, float]:
    """How well discrete codes recover known classes: purity (each code votes its majority class) and the
    normalised mutual information I(labels; codes) / ((H(labels) + H(codes)) / 2) (arithmetic normalisation,
    scikit-learn's default). Purity is 1 whenever no code mixes classes, even if a class is split over
    several codes; NMI is 1 only for a one-to-one match and penalises the split: hence both."""
    import numpy as np

    labels, codes = np.asarray(labels).reshape(-1), np.asarray(codes).reshape(-1)
    _, li = np.unique(labels, return_inverse=True)
    _, ci = np.unique(codes, return_inverse=True)
    joint = np.zeros((li.max() + 1, ci.max() + 1))
    np.add.at(joint, (li, ci), 1.0)
    p = joint / joint.sum()
    pl, pc = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pl, pc)[nz])).sum())
    h = float(-(pl * np.log(pl)).sum() - (pc * np.log(pc)).sum()) / 2
    return {"purity": float(joint.max(0).sum() / joint.sum()), "nmi": mi / h if h > 0 else 1.0}
