"""`vlaforge worldmodel judge`: a success classifier of single frames, trained on recorded episodes whose
frames the simulator labelled (`observation.success`), then calibrated by temperature scaling (Guo et al.
2017: one scalar T dividing the logits, fitted on held-out frames by minimising the negative
log-likelihood, here by a grid search over log T). The report gives accuracy and the expected calibration
error (10 equal-width bins) before and after calibration, on the held-out episodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from tqdm.auto import tqdm

from vlaforge.atomic import atomic_dir, atomic_write, write_json
from vlaforge.devices import resolve_device
from vlaforge.errors import InputError
from vlaforge.worldmodel.config import JUDGE_CONFIG, JUDGE_WEIGHTS, JudgeConfig
from vlaforge.worldmodel.data import Episodes, load_episodes
from vlaforge.worldmodel.model import SuccessJudge


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: sum over equal-width confidence bins of |accuracy - confidence| times
    the bin's share of the samples, with confidence = max(p, 1 - p) of the predicted class."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, bool)
    conf = np.maximum(probs, 1 - probs)
    correct = (probs >= 0.5) == labels
    edges = np.linspace(0.5, 1.0, bins + 1)
    total = 0.0
    for i in range(bins):
        m = (conf >= edges[i]) & ((conf < edges[i + 1]) if i < bins - 1 else (conf <= edges[i + 1]))
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] (log grid of 241 points) minimising the NLL of sigmoid(logits / T)."""
    z, y = torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.float64)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))
    nll = [float(F.binary_cross_entropy_with_logits(z / t, y)) for t in grid]
    return float(grid[int(np.argmin(nll))])


def _frames(eps: Episodes, episodes: list[int]) -> np.ndarray:
    return (
        np.concatenate([np.arange(*eps.bounds[e]) for e in episodes]) if episodes else np.zeros(0, np.int64)
    )


def train_judge(cfg: JudgeConfig) -> dict:
    """Trains, calibrates and writes the judge into ``cfg.out``; returns its report."""
    device = resolve_device(cfg.device)
    eps = load_episodes(cfg.datasets, cfg.camera, cfg.image_size, cfg.heldout)
    train_idx, held_idx = _frames(eps, eps.train), _frames(eps, eps.heldout)
    pos, neg = train_idx[eps.success[train_idx]], train_idx[~eps.success[train_idx]]
    if not len(pos) or not len(neg):
        raise InputError(
            f"{cfg.dataset}: the training episodes have {len(pos)} successful and {len(neg)} unsuccessful "
            "frames; a judge needs both (record failures and successes with `vlaforge eval --record`)"
        )
    torch.manual_seed(cfg.seed)
    judge = SuccessJudge(cfg.width).to(device)
    opt = torch.optim.AdamW(judge.parameters(), lr=cfg.lr)
    for step in tqdm(range(cfg.steps), desc="judge", unit="step"):
        rng = np.random.default_rng([cfg.seed, step])
        half = cfg.batch_size // 2
        idx = np.concatenate([rng.choice(pos, half), rng.choice(neg, cfg.batch_size - half)])
        x = torch.from_numpy(eps.frames[idx]).to(device)
        if rng.random() < 0.5:  # left-right flips are not used: scenes are not symmetric
            x = torch.roll(x, shifts=int(rng.integers(-2, 3)), dims=2)
        y = torch.from_numpy(eps.success[idx].astype(np.float32)).to(device)
        loss = F.binary_cross_entropy_with_logits(judge.logits(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    judge.eval()
    eval_idx = held_idx if len(held_idx) else train_idx
    with torch.no_grad():
        logits = (
            torch.cat(
                [
                    judge.logits(torch.from_numpy(eps.frames[eval_idx[i : i + 256]]).to(device))
                    for i in range(0, len(eval_idx), 256)
                ]
            )
            .cpu()
            .numpy()
        )
    labels = eps.success[eval_idx]
    temp = fit_temperature(logits, labels)
    judge.temperature.fill_(temp)
    raw, cal = 1 / (1 + np.exp(-logits)), 1 / (1 + np.exp(-logits / temp))
    report = {
        "frames": int(len(eval_idx)),
        "successful_frames": int(labels.sum()),
        "episodes": len(eps.heldout),
        "split": "held-out episodes" if len(held_idx) else "training episodes (none held out)",
        "accuracy": round(float(((cal >= 0.5) == labels).mean()), 4),
        "majority_accuracy": round(float(max(labels.mean(), 1 - labels.mean())), 4),
        "temperature": round(temp, 4),
        "ece_raw": round(ece(raw, labels), 4),
        "ece_calibrated": round(ece(cal, labels), 4),
    }
    meta = {"format": "vlaforge-judge/1", "width": cfg.width, "camera": eps.camera,
            "image_size": int(eps.frames.shape[1]), "datasets": cfg.datasets, "report": report}  # fmt: skip
    with atomic_dir(cfg.out, overwrite=True) as tmp:
        write_json(tmp / JUDGE_CONFIG, meta)
        with atomic_write(tmp / JUDGE_WEIGHTS) as w:
            save_file({k: v.detach().cpu().contiguous() for k, v in judge.state_dict().items()}, str(w))
    return report


def load_judge(path: str | Path, device: str | torch.device = "cpu") -> tuple[SuccessJudge, dict]:
    """A trained judge and its metadata (camera, image size, report)."""
    path = Path(path)
    if not (path / JUDGE_CONFIG).is_file():
        raise InputError(f"{path}: no {JUDGE_CONFIG}; give a `vlaforge worldmodel judge` output directory")
    meta = json.loads((path / JUDGE_CONFIG).read_text())
    judge = SuccessJudge(int(meta["width"]))
    judge.load_state_dict(load_file(str(path / JUDGE_WEIGHTS)))
    return judge.to(device).eval(), meta
