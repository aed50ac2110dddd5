"""Action and state normalisation with the statistics that travel with a checkpoint.

Modes:
- ``q99`` (OpenVLA's BOUNDS_Q99): ``clip(2 (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)``; the inverse is
  ``0.5 (x + 1) (q99 - q01) + q01``. Quantiles rather than min/max keep one outlier from squashing a dim.
- ``min_max``: the same map with min/max as the bounds.
- ``mean_std``: ``(x - mean) / (std + 1e-8)``, not clipped (diffusion-style heads).

Dims whose mask is False pass through unchanged in every mode: OpenVLA leaves the gripper unmasked,
because it is already in a fixed range and a binary open/close signal must not be stretched.
Pure numpy; broadcasts over any leading dims.
"""

from __future__ import annotations

import numpy as np

from vlaforge.errors import InputError
from vlaforge.types import FeatureStats

EPS = 1e-8
MODES = ("q99", "min_max", "mean_std")


class Normalizer:
    """Normalises one feature (e.g. "action") with its statistics.

    Args:
        stats: the feature's statistics; `stats.mask` (True = normalise) is used when present.
        mode: "q99" (default, OpenVLA), "min_max" or "mean_std".
        mask: overrides `stats.mask`; None with no mask in the stats means every dim is normalised.
    """

    def __init__(self, stats: FeatureStats, mode: str = "q99", mask: np.ndarray | None = None):
        if mode not in MODES:
            raise InputError(f"unknown normalisation mode {mode!r}; choose one of {MODES}")
        self.mode = mode
        self.dim = stats.dim
        mask = stats.mask if mask is None else np.asarray(mask, dtype=bool)
        self.mask = np.ones(self.dim, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if self.mask.shape != (self.dim,):
            raise InputError(
                f"normalisation mask has shape {self.mask.shape}; the stats have {self.dim} dims"
            )
        if mode == "q99":
            self.low, self.high = stats.q01.astype(np.float64), stats.q99.astype(np.float64)
        elif mode == "min_max":
            self.low, self.high = stats.min.astype(np.float64), stats.max.astype(np.float64)
        else:
            self.mean, self.std = stats.mean.astype(np.float64), stats.std.astype(np.float64)

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape[-1:] != (self.dim,):
            raise InputError(f"expected values with last dim {self.dim}, got shape {x.shape}")
        return x

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Robot units (..., D) -> normalised (..., D) float32."""
        x = self._check(x)
        if self.mode == "mean_std":
            y = (x - self.mean) / (self.std + EPS)
        else:
            y = np.clip(2.0 * (x - self.low) / (self.high - self.low + EPS) - 1.0, -1.0, 1.0)
        return np.where(self.mask, y, x).astype(np.float32)

    def unnormalize(self, y: np.ndarray) -> np.ndarray:
        """Normalised (..., D) -> robot units (..., D) float32."""
        y = self._check(y)
        if self.mode == "mean_std":
            x = y * self.std + self.mean
        else:
            x = 0.5 * (y + 1.0) * (self.high - self.low) + self.low
        return np.where(self.mask, x, y).astype(np.float32)
