"""`vlaforge idm train`: an inverse dynamics model fitted to a labelled dataset's first N episodes.

Every window (t, t + H) lying inside one episode is a sample; the target is the H actions t .. t + H - 1,
standardised per dim with the training episodes' mean and standard deviation; the loss is L1. A step
draws `batch_size` windows with a generator seeded by (seed, step). The model is written once, at the end,
atomically to ``OUT/last`` (``idm_config.json`` + ``idm.safetensors``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from vlaforge import metrics_log
from vlaforge.atomic import atomic_dir, write_json
from vlaforge.data.dataset import open_dataset
from vlaforge.devices import resolve_device
from vlaforge.errors import InputError
from vlaforge.idm.config import IDM_CONFIG, IDM_WEIGHTS, IdmConfig
from vlaforge.idm.model import InverseDynamicsModel, to_float_images, window_starts
from vlaforge.train.runtime import apply_threads, plan_threads

METRICS = metrics_log.FILE


@dataclass
class Windows:
    """A dataset's arrays and the start frame of every full window of the chosen episodes."""

    frames: np.ndarray  # uint8 (N, S, S, 3)
    states: np.ndarray  # float32 (N, state_dim)
    actions: np.ndarray  # float32 (N, A)
    starts: np.ndarray  # int64 (W,)
    camera: str
    fps: float


def open_lerobot(path: str, camera: str | None) -> tuple[object, str]:
    """Opens a LeRobot v3.0 dataset and picks its camera, naming `path` in every error."""
    if not (Path(path) / "meta" / "info.json").is_file():
        raise InputError(f"{path}: no meta/info.json; `vlaforge idm` reads LeRobot v3.0 datasets")
    ds = open_dataset(path)
    if not hasattr(ds, "episode_frames") or not hasattr(ds, "features"):
        raise InputError(f"{path}: `vlaforge idm` reads a LeRobot v3.0 dataset (one directory)")
    names = list(ds.embodiment().camera_names)
    cam = camera or (names[0] if names else None)
    if cam not in names:
        raise InputError(f"{path}: no camera {cam!r} (cameras: {names}); choose one with --camera")
    return ds, cam


def training_windows(cfg: IdmConfig) -> Windows:
    ds, cam = open_lerobot(cfg.dataset, cfg.camera)
    n = ds.num_episodes if cfg.labelled is None else min(cfg.labelled, ds.num_episodes)
    starts = [
        window_starts(ds.episode_frames(e).start, ds.episode_frames(e).stop, cfg.horizon) for e in range(n)
    ]
    starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    if len(starts) == 0:
        raise InputError(f"{cfg.dataset}: no episode of the first {n} has more than H={cfg.horizon} frames")
    return Windows(ds.frames(cam), ds.states(), ds.actions(), starts, cam, float(ds.fps))


def shift_images(
    x: torch.Tensor, y: torch.Tensor, pad: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random shift of up to `pad` pixels (edge padding), the same for both frames of a pair; the batch
    is split in 4 groups with one shift each (a per-sample loop costs more than the network here)."""
    if pad == 0:
        return x, y
    s = x.shape[-1]
    both = torch.nn.functional.pad(torch.cat([x, y], 1), (pad,) * 4, mode="replicate")
    parts = []
    for g in torch.arange(len(x)).chunk(4):
        oy, ox = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
        parts.append(both[g, :, oy : oy + s, ox : ox + s])
    out = torch.cat(parts)
    return out[:, :3], out[:, 3:]


def train_idm(cfg: IdmConfig) -> Path:
    """Trains an IDM; returns the model directory (``OUT/last``)."""
    device = torch.device(resolve_device(cfg.device))
    run = Path(cfg.out)
    if (run / "last" / IDM_WEIGHTS).exists():
        raise InputError(f"{run} already holds an inverse dynamics model; choose a new --out")
    before = apply_threads(plan_threads(cfg.threads, reserved=0))
    try:
        return _train(cfg, device, run)
    finally:
        torch.set_num_threads(before)


def _train(cfg: IdmConfig, device: torch.device, run: Path) -> Path:
    data = training_windows(cfg)
    torch.manual_seed(cfg.seed)
    h = cfg.horizon
    used = np.unique((data.starts[:, None] + np.arange(h)[None]).ravel())
    mcfg = {
        "horizon": h,
        "action_dim": int(data.actions.shape[1]),
        "state_dim": int(data.states.shape[1]) if cfg.use_state else 0,
        "image_size": int(data.frames.shape[1]),
        "width": cfg.width,
        "hidden": cfg.hidden,
        "camera": data.camera,
        "fps": data.fps,
        "format": 1,
    }
    model = InverseDynamicsModel(mcfg)
    a_mean, a_std = data.actions[used].mean(0), data.actions[used].std(0) + 1e-6
    s_rows = data.starts
    s_mean = data.states[s_rows].mean(0) if mcfg["state_dim"] else np.zeros(0, np.float32)
    s_std = data.states[s_rows].std(0) + 1e-6 if mcfg["state_dim"] else np.ones(0, np.float32)
    for name, v in (
        ("action_mean", a_mean),
        ("action_std", a_std),
        ("state_mean", s_mean),
        ("state_std", s_std),
    ):
        getattr(model, name).copy_(torch.as_tensor(v, dtype=torch.float32))
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / "config.json", cfg.to_dict())
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"vlaforge idm train: {len(data.starts)} windows (H={h}, camera {data.camera}, {mcfg['image_size']} px), "
        f"{n_params} parameters, {cfg.steps} steps on {device} -> {run}"
    )
    am, asd = torch.as_tensor(a_mean, device=device), torch.as_tensor(a_std, device=device)
    gen = torch.Generator().manual_seed(cfg.seed)
    window: list[float] = []
    elapsed = 0.0
    with tqdm(total=cfg.steps, desc="idm train", dynamic_ncols=True) as bar:
        for step in range(1, cfg.steps + 1):
            t0 = time.perf_counter()
            t = data.starts[
                np.random.default_rng([cfg.seed, step]).integers(0, len(data.starts), cfg.batch_size)
            ]
            x = to_float_images(data.frames[t], device)
            y = to_float_images(data.frames[t + h], device)
            x, y = shift_images(x, y, cfg.shift, gen)
            state = torch.as_tensor(data.states[t][:, : mcfg["state_dim"]], device=device)
            target = torch.as_tensor(data.actions[t[:, None] + np.arange(h)[None]], device=device)
            loss = (model(x, y, state) - (target - am) / asd).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            elapsed += time.perf_counter() - t0
            window.append(loss.item())
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                line = {"step": step, "l1": float(np.mean(window)), "elapsed_s": round(elapsed, 2)}
                metrics_log.append(run / METRICS, line)
                bar.set_postfix(l1=f"{line['l1']:.4f}")
                window = []
    with atomic_dir(run / "last", overwrite=True) as d:
        write_json(d / IDM_CONFIG, mcfg)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(d / IDM_WEIGHTS)
        )
    print(f"vlaforge idm train: done, {cfg.steps} steps in {elapsed:.0f} s; model {run / 'last'}")
    print(f"  next: vlaforge idm label SRC --idm {run} --out LABELLED")
    return run / "last"
