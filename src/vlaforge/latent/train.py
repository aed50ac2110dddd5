"""`vlaforge latent train`: a latent action model trained on a dataset's frames alone (actions never read).

Every frame t of every episode makes one pair (t, min(t + H, last frame of its episode)); a step draws
`batch_size` pairs uniformly with a generator seeded by (seed, step), so a resumed run draws exactly the
batches the uninterrupted one would have. Checkpoints reuse `vlaforge.train.checkpoint` (atomic step
directories, ``RUN/last``, optimizer as safetensors, RNG states); the model itself is ``lam_config.json`` +
``lam.safetensors`` (the codebook and its EMA statistics are buffers in the same file).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from vlaforge import metrics_log
from vlaforge.atomic import write_json
from vlaforge.data.dataset import open_dataset
from vlaforge.devices import resolve_device
from vlaforge.errors import InputError
from vlaforge.latent.config import LAM_CONFIG, LAM_WEIGHTS, LatentConfig
from vlaforge.latent.model import LatentActionModel, to_float_images
from vlaforge.train import checkpoint as ckpt
from vlaforge.train.runtime import apply_threads, plan_threads

METRICS = metrics_log.FILE


@dataclass
class FramePairs:
    """The frames of one or more datasets and, for every frame t, the index of its partner t + H.

    Attributes:
        frames: uint8 (N, S, S, 3) arrays, one per dataset (memmaps of the decoded-video cache).
        pairs: int64 (P, 3): (dataset, t, t + H) for every frame.
        episode: int64 (P,) global episode number of each pair (for per-episode evaluation).
    """

    frames: list[np.ndarray]
    pairs: np.ndarray
    episode: np.ndarray

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, S, S, 3) frames t and t + H of `rows` of `pairs`."""
        sel = self.pairs[rows]
        a = np.stack([self.frames[d][t] for d, t, _ in sel])
        b = np.stack([self.frames[d][u] for d, _, u in sel])
        return a, b


def episode_pairs(bounds: list[tuple[int, int]], horizon: int) -> np.ndarray:
    """int64 (sum of lengths, 2): (t, min(t + H, end - 1)) for every frame of every episode [start, end)."""
    out = [np.stack([np.arange(a, b), np.minimum(np.arange(a, b) + horizon, b - 1)], 1) for a, b in bounds]
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


def frame_pairs(
    datasets: str, camera: str | None, horizon: int, image_size: int | None
) -> tuple[FramePairs, str, int]:
    """Opens every dataset of the comma list `datasets`; returns (pairs, camera, image side)."""
    frames, pairs, episode = [], [], []
    side, cam, n_eps = None, camera, 0
    for i, path in enumerate(p.strip() for p in str(datasets).split(",") if p.strip()):
        ds = open_dataset(path, image_size=image_size)
        if not hasattr(ds, "episode_frames") or not hasattr(ds, "num_episodes"):
            raise InputError(f"{path}: the latent action model reads LeRobot v3.0 datasets (one per path)")
        names = list(ds.embodiment().camera_names)
        cam = cam or names[0]
        if cam not in names:
            raise InputError(f"{path}: no camera {cam!r} (cameras: {names}); choose one with --camera")
        f = ds.frames(cam)
        if side is not None and f.shape[1] != side:
            raise InputError(
                f"{path}: frames are {f.shape[1]} px, the first dataset's {side}; set --image-size"
            )
        side = int(f.shape[1])
        bounds = [(ds.episode_frames(e).start, ds.episode_frames(e).stop) for e in range(ds.num_episodes)]
        p = episode_pairs(bounds, horizon)
        frames.append(f)
        pairs.append(np.concatenate([np.full((len(p), 1), i, np.int64), p], 1))
        episode.append(np.concatenate([np.full(b - a, n_eps + e) for e, (a, b) in enumerate(bounds)]))
        n_eps += ds.num_episodes
    if not frames:
        raise InputError(f"--dataset {datasets!r}: no dataset given")
    return FramePairs(frames, np.concatenate(pairs), np.concatenate(episode).astype(np.int64)), cam, side


def model_dict(cfg: LatentConfig, camera: str, image_size: int) -> dict:
    """The sizes a LAM is rebuilt from (``lam_config.json``)."""
    d = cfg.to_dict()
    keep = (
        "tokens",
        "codebook_size",
        "code_dim",
        "width",
        "commitment",
        "ema_decay",
        "restart_below",
        "horizon",
    )
    return {**{k: d[k] for k in keep}, "camera": camera, "image_size": image_size, "format": 1}


def train_lam(cfg: LatentConfig) -> Path:
    """Trains (or resumes) a latent action model; returns the run directory (``out/last`` is the model)."""
    device = torch.device(resolve_device(cfg.device))
    run = Path(cfg.out)
    plan = plan_threads(cfg.threads, reserved=0)
    before = apply_threads(plan)
    try:
        return _train(cfg, device, run, plan.threads)
    finally:
        torch.set_num_threads(before)


def _train(cfg: LatentConfig, device: torch.device, run: Path, threads: int) -> Path:
    resume_from = ckpt.find_last(run) if cfg.resume else None
    if cfg.resume and resume_from is None:
        raise InputError(f"--resume: {run} holds no complete checkpoint")
    if not cfg.resume and ckpt.find_last(run) is not None:
        raise InputError(f"{run} already holds a latent action model run; --resume it or choose a new --out")
    data, camera, side = frame_pairs(cfg.dataset, cfg.camera, cfg.horizon, cfg.image_size)
    ckpt.seed_everything(cfg.seed)
    mcfg = model_dict(cfg, camera, side)
    model = LatentActionModel(mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    names = [n for n, _ in model.named_parameters()]
    step, elapsed = 0, 0.0
    if resume_from is not None:
        state = ckpt.read_trainer_state(resume_from)
        saved = LatentConfig.from_dict(state["config"]).to_dict()
        changed = [k for k, v in cfg.to_dict().items() if k not in ("resume", "device", "threads", "steps",
                   "save_every", "log_every") and saved.get(k) != v]  # fmt: skip
        if changed:
            raise InputError(
                f"cannot resume {resume_from}: settings differ from the run's ({', '.join(changed)})"
            )
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(resume_from / LAM_WEIGHTS)), strict=True)
        ckpt.load_optimizer(resume_from / ckpt.OPTIMIZER_FILE, opt, names)
        ckpt.set_rng_state(state["rng"], device)
        step, elapsed = int(state["step"]), float(state.get("elapsed_s", 0.0))
        # the lines logged after the checkpoint are logged again
        metrics_log.keep_only(run / METRICS, lambda r: r.get("step", 0) <= step)
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / "config.json", cfg.to_dict())
    print(
        f"vlaforge latent train: {len(data.pairs)} frame pairs (H={cfg.horizon}, camera {camera}, {side} px), "
        f"{cfg.tokens} tokens x codebook {cfg.codebook_size}, {sum(p.numel() for p in model.parameters())} "
        f"parameters, {threads} CPU thread(s) on {device}, "
        + (f"resuming at step {step}" if resume_from else f"{cfg.steps} steps -> {run}")
    )

    def save(at: int) -> None:
        def write_model(directory: Path) -> None:
            write_json(directory / LAM_CONFIG, mcfg)
            sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(sd, str(directory / LAM_WEIGHTS))

        state = {"step": at, "elapsed_s": elapsed, "config": cfg.to_dict(), "rng": ckpt.rng_state(device)}
        ckpt.save_checkpoint(run, at, write_model, opt, names, state, keep=2)

    model.train()
    window: list[dict[str, float]] = []
    bar = tqdm(total=cfg.steps, initial=step, desc="latent train", dynamic_ncols=True)
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            rows = np.random.default_rng([cfg.seed, step]).integers(0, len(data.pairs), cfg.batch_size)
            a, b = data.batch(rows)
            out = model(to_float_images(a, device), to_float_images(b, device))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            step += 1
            elapsed += time.perf_counter() - t0
            used = int(torch.unique(out["codes"]).numel())
            window.append({"recon": out["recon"].item(), "commit": out["commit"].item(), "codes_used": used})
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                line = {"step": step, **{k: float(np.mean([w[k] for w in window])) for k in window[0]}}
                line["elapsed_s"] = round(elapsed, 2)
                metrics_log.append(run / METRICS, line)
                bar.set_postfix(recon=f"{line['recon']:.5f}", codes=f"{line['codes_used']:.1f}")
                window = []
            if step % cfg.save_every == 0 or step == cfg.steps:
                save(step)
    finally:
        bar.close()
    print(f"vlaforge latent train: done, {step} steps in {elapsed:.0f} s; model {run / 'last'}")
    print(f"  next: vlaforge latent label DATASET --lam {run} --out LABELLED")
    return run
