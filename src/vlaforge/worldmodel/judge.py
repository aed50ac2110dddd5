"""`vlaforge worldmodel judge`: a success classifier of single frames, trained on recorded episodes whose
frames the simulator labelled (`observation.success`), then calibrated by Platt scaling (Platt 1999): a
scale 1 / T and a bias b, p = sigmoid(z / T + b), fitted on held-out frames by minimising the negative
log-likelihood. The bias matters here: training draws balanced batches (successful frames are rare), which
moves the logits' zero to a 50% prior, and a temperature alone (Guo et al. 2017) cannot move it back, so
the 0.5 threshold would call too many frames successes. The report gives accuracy (with the majority
answer's and the balanced accuracy beside it) and the expected calibration error (10 equal-width bins)
before and after calibration, on the held-out episodes.

With a world model (`JudgeConfig.worldmodel`) the judge learns from that model's imagined frames: every
recorded episode is replayed open loop in it from its first real frame under its own actions, and each
imagined frame keeps the label the simulator gave the real one. A judge trained on real frames reads a
world model's blurred drawings badly (an imagined drawer that opened rarely looks like a real open one);
this one is fitted and calibrated on the frames it will score. Its report adds its balanced accuracy on
the held-out episodes' real frames.
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


def _nll(z: np.ndarray, y: np.ndarray, scale: float, bias: float) -> float:
    u = scale * z + bias
    return float(np.mean(np.logaddexp(0.0, u) - y * u))  # -log-likelihood of sigmoid(u), stable


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(T, b) minimising the NLL of sigmoid(logits / T + b), with 1 / T kept in [1/20, 1/0.05]: damped
    Newton steps on (1 / T, b), where the NLL is convex, from T = 1, b = 0."""
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    lo, hi = 1 / 20.0, 1 / 0.05
    w = np.array([1.0, 0.0])
    X = np.stack([z, np.ones_like(z)], axis=1)  # (n, 2): what the scale and the bias multiply
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(w[0] * z + w[1])))
        grad = X.T @ (p - y) / len(z)
        hess = X.T @ (X * (p * (1 - p))[:, None]) / len(z) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        before, t = _nll(z, y, *w), 1.0
        while t > 1e-6:  # halve the step until the NLL does not rise (and the scale stays in bounds)
            cand = w - t * step
            cand[0] = np.clip(cand[0], lo, hi)
            if _nll(z, y, *cand) <= before:
                break
            t /= 2
        if t <= 1e-6 or np.abs(cand - w).max() < 1e-10:
            break
        w = cand
    return float(1.0 / w[0]), float(w[1])


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the accuracy on successful frames and on the others (threshold 0.5)."""
    pred, y = np.asarray(probs) >= 0.5, np.asarray(labels, bool)
    rates = [float((pred[y == c] == c).mean()) for c in (True, False) if (y == c).any()]
    return float(np.mean(rates))


def _frames(eps: Episodes, episodes: list[int]) -> np.ndarray:
    return (
        np.concatenate([np.arange(*eps.bounds[e]) for e in episodes]) if episodes else np.zeros(0, np.int64)
    )


def train_judge(cfg: JudgeConfig) -> dict:
    """Trains, calibrates and writes the judge into ``cfg.out``; returns its report."""
    device = resolve_device(cfg.device)
    camera, size, real = cfg.camera, cfg.image_size, None
    if cfg.worldmodel:
        from vlaforge.worldmodel.data import imagined_episodes
        from vlaforge.worldmodel.train import load_worldmodel

        model = load_worldmodel(cfg.worldmodel)
        for name, mine, its in (
            ("camera", camera, model.cfg["camera"]),
            ("image_size", size, model.cfg["image_size"]),
        ):
            if mine is not None and mine != its:
                raise InputError(
                    f"--{name.replace('_', '-')} {mine} differs from the world model's ({its}, {cfg.worldmodel}); "
                    "a judge of imagined frames reads the model's own: leave it out"
                )
        camera, size = model.cfg["camera"], int(model.cfg["image_size"])
    eps = load_episodes(cfg.datasets, camera, size, cfg.heldout, by_task=True)
    if cfg.worldmodel:
        real = eps.frames
        eps = imagined_episodes(model, eps, cfg.seed)
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
    logits = _logits(judge, eps.frames[eval_idx], device)
    labels = eps.success[eval_idx]
    temp, bias = fit_platt(logits, labels)
    judge.temperature.fill_(temp)
    judge.bias.fill_(bias)
    raw, cal = 1 / (1 + np.exp(-logits)), 1 / (1 + np.exp(-(logits / temp + bias)))
    report = {
        "frames": int(len(eval_idx)),
        "successful_frames": int(labels.sum()),
        "episodes": len(eps.heldout),
        "split": "held-out episodes" if len(held_idx) else "training episodes (none held out)",
        "accuracy": round(float(((cal >= 0.5) == labels).mean()), 4),
        "majority_accuracy": round(float(max(labels.mean(), 1 - labels.mean())), 4),
        "balanced_accuracy": round(balanced_accuracy(cal, labels), 4),
        "accuracy_uncalibrated": round(float(((raw >= 0.5) == labels).mean()), 4),
        "temperature": round(temp, 4),
        "bias": round(bias, 4),
        "ece_raw": round(ece(raw, labels), 4),
        "ece_calibrated": round(ece(cal, labels), 4),
        "trained_on": "imagined frames" if cfg.worldmodel else "real frames",
    }
    if real is not None:
        real_cal = 1 / (1 + np.exp(-(_logits(judge, real[eval_idx], device) / temp + bias)))
        report["balanced_accuracy_real_frames"] = round(balanced_accuracy(real_cal, labels), 4)
    meta = {"format": "vlaforge-judge/1", "width": cfg.width, "camera": eps.camera,
            "image_size": int(eps.frames.shape[1]), "datasets": cfg.datasets, "report": report,
            "frames": "imagined" if cfg.worldmodel else "real", "worldmodel": cfg.worldmodel}  # fmt: skip
    with atomic_dir(cfg.out, overwrite=True) as tmp:
        write_json(tmp / JUDGE_CONFIG, meta)
        with atomic_write(tmp / JUDGE_WEIGHTS) as w:
            save_file({k: v.detach().cpu().contiguous() for k, v in judge.state_dict().items()}, str(w))
    return report


def _logits(judge: SuccessJudge, frames: np.ndarray, device: torch.device) -> np.ndarray:
    """The judge's uncalibrated logits on uint8 frames (N, S, S, 3), 256 at a time."""
    with torch.no_grad():
        return (
            torch.cat(
                [
                    judge.logits(torch.from_numpy(frames[i : i + 256]).to(device))
                    for i in range(0, len(frames), 256)
                ]
            )
            .cpu()
            .numpy()
        )


def on_frames(judge: SuccessJudge, eps: Episodes, episodes: list[int]) -> dict[str, dict]:
    """Per task, how the judge reads the frames of `episodes` (a world model's held-out ones, real or
    replayed in the model): its hit rate on successful frames (tpr), its false alarms on the others (fpr),
    and in how many episodes it calls a success before the simulator does (an imagined episode would end
    there)."""
    out: dict[str, dict] = {}
    for e in episodes:
        a, b = eps.bounds[e]
        p = judge.prob(torch.from_numpy(eps.frames[a:b])).cpu().numpy() >= 0.5
        task = (eps.tasks[e] if e < len(eps.tasks) else "") or eps.instructions[e]
        tally_calls(out, task, p, eps.success[a:b])
    return call_rates(out)


def tally_calls(out: dict[str, dict], task: str, calls: np.ndarray, labels: np.ndarray) -> None:
    """Adds one episode to `task`'s counts in `out`: the judge's calls (bool, the frames it read) against
    the simulator's labels of the same frames; an episode with no frame read counts as an episode."""
    first = int(np.argmax(labels)) if labels.any() else len(labels)
    r = out.setdefault(task, {"episodes": 0, "frames": 0, "successes": 0, "hits": 0, "alarms": 0, "early": 0})
    r["episodes"] += 1
    r["frames"] += len(labels)
    r["successes"] += int(labels.sum())
    r["hits"] += int((calls & labels).sum())
    r["alarms"] += int((calls & ~labels).sum())
    r["early"] += int(calls[:first].any())


def call_rates(out: dict[str, dict]) -> dict[str, dict]:
    """`tally_calls`'s counts turned into the hit rate (tpr), false-alarm rate (fpr) and the episodes
    called a success before the simulator's (`fires_before_success`), in place; returns `out`."""
    for r in out.values():
        r["tpr"] = round(r.pop("hits") / r["successes"], 4) if r["successes"] else None
        fails = r["frames"] - r["successes"]
        r["fpr"] = round(r.pop("alarms") / fails, 4) if fails else None
        r["fires_before_success"] = r.pop("early")
    return out


def load_judge(path: str | Path, device: str | torch.device = "cpu") -> tuple[SuccessJudge, dict]:
    """A trained judge and its metadata (camera, image size, report)."""
    path = Path(path)
    if not (path / JUDGE_CONFIG).is_file():
        raise InputError(f"{path}: no {JUDGE_CONFIG}; give a `vlaforge worldmodel judge` output directory")
    meta = json.loads((path / JUDGE_CONFIG).read_text())
    judge = SuccessJudge(int(meta["width"]))
    state = load_file(str(path / JUDGE_WEIGHTS))
    state.setdefault("bias", torch.zeros(()))  # a judge calibrated by temperature alone
    judge.load_state_dict(state)
    return judge.to(device).eval(), meta
