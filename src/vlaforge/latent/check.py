"""`vlaforge latent check`: does a latent action model's code carry what changed between the frames?

On random frame pairs (t, t + H) of a dataset it measures the decoder's pixel MSE with the true code, with
the codes shuffled across the pairs, and of copying frame t. A code that matters makes the shuffled MSE
clearly worse than the true one; when both are alike, the decoder predicts frame t + H from frame t alone
and the labels say little. When the dataset has actions, the normalised mutual information (`cluster_scores`)
of the joint code (the tokens read as one base-K number) with the sign pattern of the mean (dx, dy, dz)
action over the pair (27 classes, a dim counted as still within +-0.05) and with the task says how much
of the robot's motion the code holds; the actions are read only here, never in training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vlaforge.data.dataset import open_dataset
from vlaforge.latent.model import cluster_scores, load_lam, to_float_images
from vlaforge.latent.train import episode_pairs

STILL = 0.05  # a mean action dim within +-STILL counts as not moving (for the 27 direction classes)


def check_lam(lam_path: str, dataset: str, pairs: int = 4000, seed: int = 0) -> dict[str, Any]:
    """The measurements the module docstring describes, as a JSON-safe dict."""
    lam, where = load_lam(lam_path)
    ds = open_dataset(dataset, image_size=int(lam.cfg["image_size"]))
    frames = ds.frames(str(lam.cfg["camera"]))
    bounds = [(ds.episode_frames(e).start, ds.episode_frames(e).stop) for e in range(ds.num_episodes)]
    every = episode_pairs(bounds, int(lam.cfg["horizon"]))
    rng = np.random.default_rng(seed)
    p = every[rng.choice(len(every), min(pairs, len(every)), replace=False)]
    a = to_float_images(np.asarray(frames[p[:, 0]]), "cpu")
    b = to_float_images(np.asarray(frames[p[:, 1]]), "cpu")
    with torch.no_grad():
        codes = lam.label(a, b)  # (P, tokens)
        z_q = lam.vq.embed[codes]
        shuffled = z_q[torch.from_numpy(rng.permutation(len(p)))]
        out: dict[str, Any] = {
            "lam": str(where),
            "dataset": str(dataset),
            "pairs": len(p),
            "mse": float((lam.decode(a, z_q) - b).pow(2).mean()),
            "mse_codes_shuffled": float((lam.decode(a, shuffled) - b).pow(2).mean()),
            "mse_copy_frame_t": float((a - b).pow(2).mean()),
        }
    codes_np = codes.numpy()
    joint = (codes_np * int(lam.cfg["codebook_size"]) ** np.arange(codes_np.shape[1])).sum(1)
    out["distinct_codes"] = int(len(np.unique(joint)))
    out["codes_used_per_token"] = [int(len(np.unique(codes_np[:, i]))) for i in range(codes_np.shape[1])]
    out["vs_task"] = cluster_scores(ds.task_indices()[p[:, 0]], joint)
    try:
        actions = ds.actions()
    except Exception:  # an action-free dataset: the image measurements only
        return out
    if actions.shape[1] >= 3:
        mean = np.stack([actions[t : max(u, t + 1)].mean(0) for t, u in p])
        sign = (mean[:, :3] > STILL).astype(int) - (mean[:, :3] < -STILL).astype(int) + 1  # 0, 1, 2 per dim
        out["vs_xyz_direction"] = cluster_scores(sign @ np.array([1, 3, 9]), joint)
    return out
