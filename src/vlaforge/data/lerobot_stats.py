"""The statistics of a LeRobotDataset v3.0: gathered while writing, read back (and completed) for training.

`meta/stats.json` holds every feature's `min, max, mean, std, count, q01, q10, q50, q90, q99`, and each
episode's row of the episode index its own under `stats/<feature>/<stat>` (LeRobot's compute_stats.py;
the reductions are `vlaforge.data.stats`). Images are reduced per channel over a strided subsample of
frames, as LeRobot does, so a writer's memory stays bounded whatever the dataset's size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vlaforge.data.lerobot_format import DatasetError
from vlaforge.data.stats import compute_stats, feature_stats, sample_indices, stats_from_json
from vlaforge.types import FeatureStats, NormStats

FRAMES_PER_EPISODE = 16  # image frames kept per episode for statistics
IMAGE_SIDE = 64  # images are strided down to about this side for statistics
# Image frames kept for the global statistics: past this many, every other one is dropped, so a writer's
# memory stays bounded whatever the dataset's size (the statistics use at most 2000 frames anyway).
MAX_KEPT = 8000
NORM_KEYS = ("min", "max", "mean", "std", "q01", "q99")


class StatsCollector:
    """Gathers, episode by episode, what the dataset's statistics need.

    Args:
        image_keys: the video features; their frames are subsampled (`FRAMES_PER_EPISODE`, `IMAGE_SIDE`).
    """

    def __init__(self, image_keys: Sequence[str]) -> None:
        self.numeric: dict[str, list[np.ndarray]] = {}
        self.images: dict[str, list[np.ndarray]] = {k: [] for k in image_keys}

    def add_episode(
        self, columns: Mapping[str, np.ndarray], frames: Mapping[str, np.ndarray]
    ) -> dict[str, list]:
        """Keeps an episode's numeric `columns` (T, ...) and a subsample of its image `frames` (uint8 (T, H,
        W, 3) per video feature); returns its row entries ``{"stats/<key>/<stat>": values}``."""
        row: dict[str, list] = {}
        for key, arr in columns.items():
            self.numeric.setdefault(key, []).append(arr)
            for stat, value in feature_stats(arr).items():
                row[f"stats/{key}/{stat}"] = value.tolist()
        for key in self.images:
            video = frames[key]
            step = max(1, max(video.shape[1:3]) // IMAGE_SIDE)
            sample = video[sample_indices(len(video), FRAMES_PER_EPISODE)][:, ::step, ::step]
            self.images[key].append(np.ascontiguousarray(sample))
            if sum(len(x) for x in self.images[key]) > MAX_KEPT:  # bounded memory on huge datasets
                self.images[key] = [np.concatenate(self.images[key])[::2]]
            for stat, value in feature_stats(sample).items():
                row[f"stats/{key}/{stat}"] = value.tolist()
        return row

    def finalize(self) -> dict[str, dict[str, np.ndarray]]:
        """The whole dataset's statistics, by feature (what `meta/stats.json` holds)."""
        stats = compute_stats({k: np.concatenate(v) for k, v in self.numeric.items()})
        for key, samples in self.images.items():
            stats[key] = feature_stats(np.concatenate(samples), max_image_frames=2000)
        return stats


def load_stats(path: Path, columns: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """`meta/stats.json` at `path`; computed from the numeric `columns` when the file is missing.

    Raises:
        DatasetError: the file is not valid JSON (naming it, and that deleting it recomputes them).
    """
    if not path.is_file():
        return compute_stats(dict(columns))
    try:
        return stats_from_json(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e}); delete it to recompute statistics") from e


def feature_norm_stats(
    stats: Mapping[str, Mapping[str, np.ndarray]], columns: Mapping[str, np.ndarray], mask: Sequence[bool]
) -> NormStats:
    """NormStats of "action" (with the normalisation `mask`) and "observation.state" when the dataset has
    them, from `stats`, recomputed from `columns` for an older stats.json without quantiles."""
    out = {}
    for key in ("action", "observation.state"):
        if key not in columns:
            continue
        s = stats.get(key, {})
        if any(k not in s for k in NORM_KEYS):
            s = feature_stats(columns[key])
        out[key] = FeatureStats(
            min=s["min"],
            max=s["max"],
            mean=s["mean"],
            std=s["std"],
            q01=s["q01"],
            q99=s["q99"],
            mask=list(mask) if key == "action" else None,
        )
    return NormStats(out)
