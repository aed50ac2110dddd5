"""`vlaforge latent label`: a LeRobot v3.0 dataset whose `action` column is a latent action model's code.

The action of frame t is the code of the pair (t, min(t + H, last frame)), as one-hot blocks: token i's
one-hot over the codebook in dims [i K, (i + 1) K), so a LAM of 4 tokens and a codebook of 8 gives a
32-dim float action whose entries are 0 or 1. One-hot rather than the codebook vectors: the vectors' scale
is whatever the encoder drifted to, while a one-hot target is bounded, the same for every LAM, and its
blocks are the class probabilities a policy's regression head approaches. The dims are stored unnormalised
(`Embodiment.normalize_mask`), since a rare code's standard deviation would blow its dim up.

Everything else is the source's: camera videos (decoded and re-encoded at their own size), the state and
any other per-frame column except `action`, the instructions and, in ``meta/info.json["vlaforge"]``, the
environment and each episode's task and seed. Provenance: the column ``latent.codes`` (int64, tokens) holds
the code indices, ``action.provenance`` (int64, 1) is 1 on every frame ("latent action model"), and
``meta/info.json["vlaforge"]["latent_actions"]`` names the model (its path and the sha256 of its weights,
`vlaforge.weights_hash`), the source dataset and its episodes, and the layout of the action.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vlaforge.data.dataset import open_dataset
from vlaforge.data.relabel import kept_features, parse_episodes, relabel
from vlaforge.devices import resolve_device
from vlaforge.errors import InputError
from vlaforge.latent.config import LAM_WEIGHTS, LabelConfig
from vlaforge.latent.model import LatentActionModel, load_lam, one_hot_actions, to_float_images
from vlaforge.latent.train import episode_pairs
from vlaforge.types import Embodiment
from vlaforge.weights_hash import weights_sha256

PROVENANCE_LATENT = 1  # the value of `action.provenance` on frames labelled by a latent action model


def action_names(tokens: int, codebook_size: int) -> list[str]:
    """Names of the one-hot action dims: ``z{i}={k}`` is token i taking code k."""
    return [f"z{i}={k}" for i in range(tokens) for k in range(codebook_size)]


def episode_codes(
    lam: LatentActionModel, frames: np.ndarray, start: int, stop: int, batch_size: int, device: torch.device
) -> np.ndarray:
    """int64 (stop - start, tokens): the code of every frame's pair (t, t + H) in one episode."""
    pairs = episode_pairs([(start, stop)], int(lam.cfg["horizon"]))
    out = []
    for i in range(0, len(pairs), batch_size):
        p = pairs[i : i + batch_size]
        a, b = to_float_images(frames[p[:, 0]], device), to_float_images(frames[p[:, 1]], device)
        out.append(lam.label(a, b).cpu().numpy())
    return np.concatenate(out).astype(np.int64)


def label_dataset(cfg: LabelConfig) -> Path:
    """Writes `cfg.out`, `cfg.src`'s chosen episodes with latent actions; returns its path."""
    device = torch.device(resolve_device(cfg.device))
    lam, lam_dir = load_lam(cfg.lam, device)
    side, camera = int(lam.cfg["image_size"]), str(lam.cfg["camera"])
    tokens, k = int(lam.cfg["tokens"]), int(lam.cfg["codebook_size"])
    src = open_dataset(cfg.src)
    if not hasattr(src, "episode_frames") or not hasattr(src, "features"):
        raise InputError(f"{cfg.src}: `vlaforge latent label` reads a LeRobot v3.0 dataset")
    seen = open_dataset(cfg.src, image_size=side)  # the frames as the LAM saw them in training
    emb = src.embodiment()
    if camera not in emb.camera_names:
        raise InputError(f"{cfg.src}: no camera {camera!r}, the one the LAM at {lam_dir} was trained on")
    episodes = parse_episodes(cfg.episodes, src.num_episodes)
    dim = tokens * k
    features = kept_features(src, ("action",))
    names = action_names(tokens, k)
    features["action"] = {"dtype": "float32", "shape": [dim], "names": names}
    features["latent.codes"] = {
        "dtype": "int64",
        "shape": [tokens],
        "names": [f"z{i}" for i in range(tokens)],
    }
    features["action.provenance"] = {"dtype": "int64", "shape": [1], "names": None}
    new_emb = Embodiment.from_dict(
        {
            **emb.to_dict(),
            "action_dim": dim,
            "action_names": names,
            "normalize_mask": [False] * dim,
            "action_low": [0.0] * dim,
            "action_high": [1.0] * dim,
        }
    )
    ours = dict(src.info.get("vlaforge") or {})
    src_eps = ours.get("episodes") or []
    weights = lam_dir / LAM_WEIGHTS
    extra = {
        **ours,
        "embodiment": new_emb.to_dict(),
        "episodes": [src_eps[e] for e in episodes] if len(src_eps) == src.num_episodes else [],
        "latent_actions": {
            "lam": str(lam_dir),
            "lam_sha256": weights_sha256([weights]),
            "source": str(Path(cfg.src).resolve()),
            "source_episodes": episodes,
            "camera": camera,
            "horizon": int(lam.cfg["horizon"]),
            "tokens": tokens,
            "codebook_size": k,
            "action": "one-hot per token: dim i * codebook_size + c is 1 when token i has code c",
            "provenance_column": "action.provenance",
            "provenance_values": {str(PROVENANCE_LATENT): "latent action model"},
        },
    }
    lam_frames = seen.frames(camera)

    def labels(e: int, r: range) -> dict[str, np.ndarray]:
        codes = episode_codes(lam, lam_frames, r.start, r.stop, cfg.batch_size, device)
        return {
            "action": one_hot_actions(codes, k),
            "latent.codes": codes,
            "action.provenance": np.full((len(r), 1), PROVENANCE_LATENT, np.int64),
        }

    relabel(src, cfg.out, features, extra, episodes, labels, "latent label", cfg.overwrite)
    print(
        f"vlaforge latent label: {len(episodes)} episodes of {cfg.src} -> {cfg.out} ({dim}-dim latent actions)"
    )
    return Path(cfg.out)
