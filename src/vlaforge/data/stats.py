"""Per-feature statistics as LeRobotDataset v3.0 stores them in `meta/stats.json`.

Every feature gets `min, max, mean, std, count, q01, q10, q50, q90, q99`. Numeric features are reduced over
the frame axis, so an (N, D) column gives (D,) statistics (an (N,) column gives (1,)). Images, as in
LeRobot's `compute_stats.py`, are reduced per channel over a subsample of frames after scaling to [0, 1],
and their statistics are shaped (3, 1, 1) so they broadcast against channel-first images.

Quantiles are numpy's linear-interpolation quantiles over all frames (numeric features). `std` is the
population standard deviation (ddof=0), as LeRobot computes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlaforge.errors import InputError
from vlaforge.types import FeatureStats, NormStats

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STATS_KEYS = ("min", "max", "mean", "std", "count", *QUANTILES)


def is_image_array(arr: np.ndarray) -> bool:
    """True for uint8 frames (N, H, W, 3): the layout vlaforge uses for camera images."""
    return arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3


def sample_indices(n: int, max_frames: int) -> np.ndarray:
    """Evenly spaced frame indices, all of them when n <= max_frames."""
    if n <= max_frames:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_frames).round().astype(np.int64))


def _reduce(values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics over axis 0 of a float64 array (N, ...)."""
    out = {
        "min": values.min(axis=0),
        "max": values.max(axis=0),
        "mean": values.mean(axis=0),
        "std": values.std(axis=0),
    }
    qs = np.quantile(values, list(QUANTILES.values()), axis=0)  # (5, ...)
    for i, key in enumerate(QUANTILES):
        out[key] = qs[i]
    return out


def feature_stats(arr: np.ndarray, max_image_frames: int = 100) -> dict[str, np.ndarray]:
    """Statistics of one feature's frames.

    Args:
        arr: (N,), (N, D) or (N, H, D) numeric/bool values, or uint8 images (N, H, W, 3).
        max_image_frames: images are reduced over at most this many evenly spaced frames.

    Returns:
        {stat: np.ndarray}: the feature's shape for numeric features ((D,), (1,) for (N,), (H, D) for
            (N, H, D), reduced over frames only, as LeRobot's compute_stats), (3, 1, 1) in [0, 1] for images;
        "count" is a (1,) int64 array holding the number of frames used.

    Raises:
        ValueError: for an empty array or a non-numeric dtype.
    """
    arr = np.asarray(arr)
    if arr.shape[0] == 0:
        raise InputError("cannot compute statistics of an empty feature (0 frames)")
    if is_image_array(arr):
        idx = sample_indices(arr.shape[0], max_image_frames)
        pixels = arr[idx].reshape(-1, 3).astype(np.float64) / 255.0  # (n * H * W, 3)
        out = {k: v.reshape(3, 1, 1) for k, v in _reduce(pixels).items()}
        out["count"] = np.array([len(idx)], dtype=np.int64)
        return out
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"cannot compute statistics of dtype {arr.dtype}")
    values = arr.astype(np.float64).reshape(arr.shape[0], -1)  # (N, D)
    out = _reduce(values)
    if arr.ndim > 2:  # a feature of shape (H, D), e.g. an action plan: its statistics keep that shape
        out = {k: v.reshape(arr.shape[1:]) for k, v in out.items()}
    out["count"] = np.array([arr.shape[0]], dtype=np.int64)
    return out


def compute_stats(arrays: Mapping[str, np.ndarray], max_image_frames: int = 100) -> dict[str, dict]:
    """Statistics of every feature in `arrays` (feature name -> all its frames); see `feature_stats`."""
    return {key: feature_stats(arr, max_image_frames=max_image_frames) for key, arr in arrays.items()}


def norm_stats_of(actions: np.ndarray, states: np.ndarray, mask: Sequence[bool]) -> NormStats:
    """NormStats of "action" (N, D) with the normalisation `mask`, and of "observation.state" (N, S) when S > 0."""
    out = {}
    for key, arr in (("action", actions), ("observation.state", states)):
        if arr.shape[1]:
            s = feature_stats(arr)
            out[key] = FeatureStats(
                **{k: s[k] for k in ("min", "max", "mean", "std", "q01", "q99")},
                mask=list(mask) if key == "action" else None,
            )
    return NormStats(out)


def stats_to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """numpy statistics -> JSON-able nested lists (shapes kept)."""
    return {f: {k: np.asarray(v).tolist() for k, v in s.items()} for f, s in stats.items()}


def stats_from_json(data: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """JSON statistics -> numpy arrays (float64, "count" int64)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for f, s in data.items():
        if not isinstance(s, Mapping):
            continue
        out[f] = {
            k: np.asarray(v, dtype=np.int64 if k == "count" else np.float64)
            for k, v in s.items()
            if isinstance(v, (list, int, float))
        }
    return out
