"""The inverse dynamics model: a small convnet over a stacked frame pair, plus the state, to H actions.

Input: frames t and t + H (uint8, stacked to 6 channels, scaled to [-1, 1]) and the state at t
(standardised). Output: the H actions t .. t + H - 1, standardised with the training data's per-dim mean
and standard deviation (kept as buffers in the weights file, so a model file is self-contained).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from vlaforge.errors import InputError
from vlaforge.idm.config import IDM_CONFIG, IDM_WEIGHTS


class InverseDynamicsModel(nn.Module):
    """cfg: ``horizon``, ``action_dim``, ``state_dim``, ``image_size``, ``width``, ``hidden`` (idm_config.json)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = dict(cfg)
        w, side = int(cfg["width"]), int(cfg["image_size"])
        self.horizon, self.action_dim = int(cfg["horizon"]), int(cfg["action_dim"])
        self.state_dim = int(cfg["state_dim"])
        layers, c_in, chans = [], 6, [w, 2 * w, 2 * w, 4 * w]
        for c in chans:
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.GroupNorm(8, c), nn.GELU()]
            c_in, side = c, side // 2
        self.conv = nn.Sequential(*layers, nn.Flatten())
        feat = c_in * side * side
        h = int(cfg["hidden"])
        self.head = nn.Sequential(
            nn.Linear(feat + self.state_dim, h),
            nn.GELU(),
            nn.Linear(h, h),
            nn.GELU(),
            nn.Linear(h, self.horizon * self.action_dim),
        )
        for name, dim in (("action", self.action_dim), ("state", self.state_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    def forward(self, x_t: torch.Tensor, x_th: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """float images (B, 3, S, S) in [-1, 1], raw state (B, state_dim) -> normalised (B, H, A)."""
        z = self.conv(torch.cat([x_t, x_th], 1))
        s = (state - self.state_mean) / self.state_std
        return self.head(torch.cat([z, s], 1)).view(-1, self.horizon, self.action_dim)

    def unnormalize(self, a: torch.Tensor) -> torch.Tensor:
        return a * self.action_std + self.action_mean

    @torch.no_grad()
    def predict(self, x_t: torch.Tensor, x_th: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Actions in robot units, (B, H, A)."""
        return self.unnormalize(self(x_t, x_th, state))


def to_float_images(frames: Any, device: torch.device | str) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> float (B, 3, S, S) in [-1, 1]."""
    x = torch.as_tensor(np.ascontiguousarray(frames), device=device).permute(0, 3, 1, 2)
    return x.float() / 127.5 - 1.0


def window_starts(start: int, stop: int, horizon: int) -> np.ndarray:
    """First frames t of the full windows (t, t + H) of the episode [start, stop): t + H <= stop - 1."""
    return np.arange(start, stop - horizon, dtype=np.int64)


def find_model_dir(path: str | Path) -> Path:
    """A run directory (its ``last``) or a model directory -> the directory holding the weights."""
    p = Path(path)
    for d in (p, p / "last"):
        if (d / IDM_WEIGHTS).is_file() and (d / IDM_CONFIG).is_file():
            return d.resolve()
    raise InputError(
        f"{p}: no {IDM_WEIGHTS} + {IDM_CONFIG} here or under last/; give `vlaforge idm train`'s --out"
    )


def load_idm(path: str | Path, device: torch.device | str = "cpu") -> tuple[InverseDynamicsModel, Path]:
    d = find_model_dir(path)
    try:
        cfg = json.loads((d / IDM_CONFIG).read_text())
        model = InverseDynamicsModel(cfg)
        model.load_state_dict(load_file(str(d / IDM_WEIGHTS)), strict=True)
    except (json.JSONDecodeError, KeyError, RuntimeError, OSError, SafetensorError) as e:
        raise InputError(f"{d / IDM_WEIGHTS}: not a readable inverse dynamics model ({e})") from e
    return model.to(device).eval(), d
