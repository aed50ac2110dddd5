"""`vlaforge idm label` and `vlaforge idm check`: an IDM's actions for every frame of a dataset.

Frame t's action is the first of the H actions the IDM predicts between frames t and t + H. The last H
frames of an episode have no frame H ahead, so they take the later actions of the episode's last full
window (t = end - 1 - H): frame end - 1 - H + k gets its action k (k < H), and the episode's very last
frame, which no window reaches past, repeats the action before it. An episode of H frames or fewer has no
window and is refused, naming it.

The written dataset mirrors `vlaforge latent label`: everything but `action` is the source's (camera
videos, state, other columns, instructions, ``meta/info.json["vlaforge"]``), ``action.provenance``
(int64, 1) is `PROVENANCE_IDM` (2, "inverse dynamics model"; 1 is a latent action model's) on every
labelled frame;
with `keep_actions`, the chosen episodes keep their recorded actions (provenance 0, "recorded"), and
``meta/info.json["vlaforge"]["idm_actions"]`` names the model (its path and the sha256 of its weights), the
source dataset and episodes, and the rule above.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vlaforge.data.lerobot_writer import LeRobotWriter
from vlaforge.data.relabel import kept_features, parse_episodes, relabel
from vlaforge.devices import resolve_device
from vlaforge.errors import InputError
from vlaforge.idm.config import (
    IDM_WEIGHTS,
    PROVENANCE_IDM,
    PROVENANCE_RECORDED,
    IdmLabelConfig,
)
from vlaforge.idm.model import InverseDynamicsModel, load_idm, to_float_images, window_starts
from vlaforge.idm.train import open_lerobot
from vlaforge.idm.videos import is_video_folder, load_video, video_tasks
from vlaforge.weights_hash import weights_sha256

LAST_FRAMES_RULE = (
    "the last H frames of an episode take the later actions of its last full window (the last frame repeats "
    "the action before it)"
)


def episode_actions(
    idm: InverseDynamicsModel,
    frames: np.ndarray,
    states: np.ndarray,
    start: int,
    stop: int,
    batch_size: int,
    device: torch.device,
    where: str = "",
) -> np.ndarray:
    """float32 (stop - start, A): the IDM's action for every frame of one episode (module docstring)."""
    h = idm.horizon
    starts = window_starts(start, stop, h)
    if len(starts) == 0:
        raise InputError(f"{where}: {stop - start} frames, too few for the IDM's horizon H={h}")
    if states.shape[1] != idm.state_dim:
        raise InputError(f"{where}: state has {states.shape[1]} dims, the IDM was trained on {idm.state_dim}")
    preds = []
    for i in range(0, len(starts), batch_size):
        t = starts[i : i + batch_size]
        x, y = to_float_images(frames[t], device), to_float_images(frames[t + h], device)
        preds.append(idm.predict(x, y, torch.as_tensor(states[t], device=device)).cpu().numpy())
    p = np.concatenate(preds)  # (W, H, A), W = stop - start - H
    return np.concatenate([p[:, 0], p[-1, 1:], p[-1, -1:]]).astype(np.float32)


def _open_source(
    path: str, idm: InverseDynamicsModel, idm_dir: Path, camera: str | None = None
) -> tuple[object, np.ndarray, str]:
    camera, side = camera or str(idm.cfg["camera"]), int(idm.cfg["image_size"])
    src, cam = open_lerobot(path, camera)
    from vlaforge.data.dataset import open_dataset

    frames = open_dataset(path, image_size=side).frames(cam)  # as the IDM saw them in training
    return src, frames, cam


def label_dataset(cfg: IdmLabelConfig) -> Path:
    """Writes `cfg.out`: `cfg.src`'s chosen episodes with the IDM's actions; returns its path."""
    device = torch.device(resolve_device(cfg.device))
    idm, idm_dir = load_idm(cfg.idm, device)
    if is_video_folder(cfg.src):
        return label_videos(cfg, idm, idm_dir, device)
    src, frames, cam = _open_source(cfg.src, idm, idm_dir)
    episodes = parse_episodes(cfg.episodes, src.num_episodes)
    keep = set(parse_episodes(cfg.keep_actions, src.num_episodes)) if cfg.keep_actions else set()
    recorded = src.actions() if keep else None
    if recorded is not None and recorded.shape[1] != idm.action_dim:
        raise InputError(f"{cfg.src}: actions have {recorded.shape[1]} dims, the IDM's {idm.action_dim}")
    states = src.states()[:, : idm.state_dim] if idm.state_dim == 0 else src.states()
    emb = src.embodiment()
    names = list(emb.action_names) if len(emb.action_names) == idm.action_dim else None
    features = kept_features(src, ("action", "action.provenance"))
    features["action"] = {"dtype": "float32", "shape": [idm.action_dim], "names": names}
    features["action.provenance"] = {"dtype": "int64", "shape": [1], "names": None}
    ours = dict(src.info.get("vlaforge") or {})
    src_eps = ours.get("episodes") or []
    extra = {
        **ours,
        "episodes": [src_eps[e] for e in episodes] if len(src_eps) == src.num_episodes else [],
        "idm_actions": _provenance(
            idm_dir,
            cfg.src,
            idm.horizon,
            source_episodes=episodes,
            recorded_episodes=sorted(keep & set(episodes)),
            camera=cam,
        ),
    }

    def labels(e: int, r: range) -> dict[str, np.ndarray]:
        if e in keep:
            acts, prov = recorded[r.start : r.stop], PROVENANCE_RECORDED
        else:
            where = f"{cfg.src} episode {e}"
            acts = episode_actions(idm, frames, states, r.start, r.stop, cfg.batch_size, device, where)
            prov = PROVENANCE_IDM
        return {"action": acts, "action.provenance": np.full((len(r), 1), prov, np.int64)}

    relabel(src, cfg.out, features, extra, episodes, labels, "idm label", cfg.overwrite)
    print(f"vlaforge idm label: {len(episodes)} episodes of {cfg.src} -> {cfg.out} (IDM {idm_dir})")
    return Path(cfg.out)


def _provenance(idm_dir: Path, src: str, horizon: int, **more: object) -> dict:
    return {
        "idm": str(idm_dir),
        "idm_sha256": weights_sha256([idm_dir / IDM_WEIGHTS]),
        "source": str(Path(src).resolve()),
        **more,
        "horizon": horizon,
        "action": "frame t: the first of the H actions predicted from frames t and t + H; "
        + LAST_FRAMES_RULE,
        "provenance_column": "action.provenance",
        "provenance_values": {
            str(PROVENANCE_RECORDED): "recorded",
            str(PROVENANCE_IDM): "inverse dynamics model",
        },
    }


def label_videos(cfg: IdmLabelConfig, idm: InverseDynamicsModel, idm_dir: Path, device: torch.device) -> Path:
    """`cfg.src` is a folder of videos + tasks.json (`vlaforge.idm.videos`): one episode per video."""
    if idm.state_dim:
        raise InputError(
            f"{idm_dir}: this IDM reads the robot state, which the videos in {cfg.src} lack; "
            "train one on frames alone (`vlaforge idm train --no-use-state`)"
        )
    if cfg.keep_actions:
        raise InputError(
            f"{cfg.src}: --keep-actions needs a LeRobot dataset; videos have no recorded actions"
        )
    fps = idm.cfg.get("fps")
    if not fps:
        raise InputError(f"{idm_dir / 'idm_config.json'}: no fps; retrain the IDM with this vlaforge")
    side, cam = int(idm.cfg["image_size"]), str(idm.cfg["camera"])
    videos = video_tasks(cfg.src)
    chosen = parse_episodes(cfg.episodes, len(videos))
    key = f"observation.images.{cam}"
    features = {
        key: {"dtype": "video", "shape": [side, side, 3], "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": [idm.action_dim], "names": None},
        "action.provenance": {"dtype": "int64", "shape": [1], "names": None},
    }
    more = {"source_videos": [videos[i][0].name for i in chosen], "camera": cam, "fps": float(fps)}
    with LeRobotWriter(
        cfg.out, fps=float(fps), features=features, overwrite=cfg.overwrite,
        extra_info={"vlaforge": {"idm_actions": _provenance(idm_dir, cfg.src, idm.horizon, **more)}},
    ) as w:  # fmt: skip
        for i in tqdm(chosen, desc="idm label", unit="video"):
            path, task = videos[i]
            frames = load_video(path, side, float(fps))
            none = np.zeros((len(frames), 0), np.float32)
            acts = episode_actions(idm, frames, none, 0, len(frames), cfg.batch_size, device, str(path))
            prov = np.full((len(frames), 1), PROVENANCE_IDM, np.int64)
            w.add_episode(task, {key: frames, "action": acts, "action.provenance": prov})
    print(f"vlaforge idm label: {len(chosen)} videos of {cfg.src} -> {cfg.out} (IDM {idm_dir}, {fps:g} fps)")
    return Path(cfg.out)


def check_idm(
    idm_path: str, dataset: str, episodes: str | None, device: str = "auto", camera: str | None = None
) -> dict:
    """R^2 and mean absolute error per action dim of the IDM's labels against `dataset`'s real actions;
    `camera` reads another camera than the one the IDM was trained on (how far it transfers)."""
    dev = torch.device(resolve_device(device))
    idm, idm_dir = load_idm(idm_path, dev)
    src, frames, cam = _open_source(dataset, idm, idm_dir, camera)
    eps = parse_episodes(episodes, src.num_episodes)
    states, real = src.states(), src.actions()
    states = states[:, :0] if idm.state_dim == 0 else states
    pred, true = [], []
    for e in tqdm(eps, desc="idm check", unit="episode"):
        r = src.episode_frames(e)
        pred.append(episode_actions(idm, frames, states, r.start, r.stop, 256, dev, f"{dataset} episode {e}"))
        true.append(real[r.start : r.stop])
    p, t = np.concatenate(pred).astype(np.float64), np.concatenate(true).astype(np.float64)
    ss_res, ss_tot = ((p - t) ** 2).sum(0), ((t - t.mean(0)) ** 2).sum(0)
    r2 = 1.0 - ss_res / np.maximum(ss_tot, 1e-12)
    return {
        "idm": str(idm_dir),
        "dataset": dataset,
        "camera": cam,
        "episodes": len(eps),
        "frames": int(len(t)),
        "action_names": list(src.embodiment().action_names),
        "r2": [round(float(v), 4) for v in r2],
        "mae": [round(float(v), 4) for v in np.abs(p - t).mean(0)],
    }
