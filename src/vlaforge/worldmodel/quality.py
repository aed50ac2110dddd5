"""Prediction quality: PSNR and SSIM of imagined frames at several horizons, against the copy-last-frame
baseline (predict that nothing moves), on held-out episodes.

SSIM follows Wang et al. (2004): an 11 x 11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2,
C2 = (0.03 L)^2 with L = 255, computed per channel over the valid region and averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from vlaforge.worldmodel.data import Episodes, clamp_to_episode
from vlaforge.worldmodel.model import Imagination, WorldModel

HORIZONS = (1, 8, 32)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR (dB) of uint8 (..., H, W, 3) frames; identical frames give 100 dB."""
    err = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(*a.shape[:-3], -1).mean(-1)
    return np.where(err > 0, 10 * np.log10(255.0**2 / np.maximum(err, 1e-12)), 100.0)


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame SSIM of uint8 (N, H, W, 3) frames (window shrunk to the image for tiny frames)."""
    x = torch.from_numpy(a.astype(np.float64)).permute(0, 3, 1, 2).reshape(-1, 1, *a.shape[1:3])
    y = torch.from_numpy(b.astype(np.float64)).permute(0, 3, 1, 2).reshape(-1, 1, *b.shape[1:3])
    size = min(11, a.shape[1], a.shape[2])
    w = _gauss(size, 1.5)
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx**2
    syy = F.conv2d(y * y, w) - my**2
    sxy = F.conv2d(x * y, w) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return m.mean(dim=(1, 2, 3)).reshape(a.shape[0], 3).mean(1).numpy()


def prediction_quality(
    model: WorldModel,
    eps: Episodes,
    episodes: Sequence[int] | None = None,
    horizons: Sequence[int] = HORIZONS,
    stride: int = 4,
    seed: int = 0,
    pixel_residual: bool = True,
) -> dict[str, dict[str, float]]:
    """PSNR / SSIM of the model and of copy-last-frame at each horizon h, over every start s (every
    `stride`-th frame) of the episodes (default: held out) with s + h inside the episode.

    The model sees the real K frames up to s (its own stride apart) and the recorded actions from s on,
    and imagines h steps open loop (its own predictions fed back; with a stride N, a horizon that is not
    a multiple of N shows the last predicted frame); `pixel_residual` as in `Imagination`.

    Returns:
        {str(h): {"n", "psnr", "ssim", "copy_psnr", "copy_ssim"}} (means over the starts).
    """
    episodes = list(eps.heldout if episodes is None else episodes)
    gen = torch.Generator().manual_seed(seed)
    k, n, hmax = model.context, model.stride, max(horizons)
    pred_by_h: dict[int, list] = {h: [] for h in horizons}
    real_by_h: dict[int, list] = {h: [] for h in horizons}
    copy_by_h: dict[int, list] = {h: [] for h in horizons}
    model.eval()
    for e in episodes:
        a, b = eps.bounds[e]
        starts = np.arange(a, b - 1, stride)
        if not len(starts):
            continue
        true = starts[:, None] + n * np.arange(-k + 1, 1)[None, :]  # (B, K) frames up to s, n apart
        idx = clamp_to_episode(true, a)
        led = (true - n)[..., None] + np.arange(n)  # (B, K, n): the steps whose actions led to each
        pad = true - n < a
        acts = eps.actions[np.maximum(led, 0)].reshape(*pad.shape, -1)
        acts[pad] = 0
        im = Imagination(model, gen, pixel_residual)
        im.start_from(torch.from_numpy(eps.frames[idx]), torch.from_numpy(acts), torch.from_numpy(pad))
        steps = min(hmax, b - 1 - int(starts.min()))
        for t in range(steps):
            act = eps.actions[np.minimum(starts + t, b - 1)]
            frames = im.step(torch.from_numpy(act)).cpu().numpy()
            h = t + 1
            if h in pred_by_h:
                ok = starts + h < b
                pred_by_h[h].append(frames[ok])
                real_by_h[h].append(eps.frames[starts[ok] + h])
                copy_by_h[h].append(eps.frames[starts[ok]])
    out: dict[str, dict[str, float]] = {}
    for h in horizons:
        if not pred_by_h[h] or not sum(len(p) for p in pred_by_h[h]):
            out[str(h)] = {"n": 0}
            continue
        p, r, c = (np.concatenate(x[h]) for x in (pred_by_h, real_by_h, copy_by_h))
        out[str(h)] = {
            "n": int(len(p)),
            "psnr": round(float(psnr(p, r).mean()), 3),
            "ssim": round(float(ssim(p, r).mean()), 4),
            "copy_psnr": round(float(psnr(c, r).mean()), 3),
            "copy_ssim": round(float(ssim(c, r).mean()), 4),
        }
    return out


def format_quality(q: dict[str, dict[str, float]]) -> str:
    """A plain-text table of `prediction_quality`'s result."""
    rows = ["horizon      n   PSNR model   PSNR copy   SSIM model   SSIM copy"]
    for h, m in q.items():
        if not m.get("n"):
            rows.append(f"{h:>7} {0:>6}   (episodes too short)")
            continue
        rows.append(
            f"{h:>7} {m['n']:>6} {m['psnr']:>12.2f} {m['copy_psnr']:>11.2f} {m['ssim']:>12.3f} {m['copy_ssim']:>11.3f}"
        )
    return "\n".join(rows)


__all__ = ["HORIZONS", "format_quality", "prediction_quality", "psnr", "ssim"]
