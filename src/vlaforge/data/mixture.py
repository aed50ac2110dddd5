"""Dataset mixtures: several datasets sampled by weight, each normalised with its own statistics.

`vlaforge train --dataset mix.json` (or `--dataset a,b`) trains on a mixture. A mixture file names its
datasets and weights::

    {"datasets": [{"path": "data/bridge_orig", "weight": 1.0},
                  {"path": "data/fractal20220817_data", "weight": 0.5, "name": "fractal"}]}

or one of Open X-Embodiment's named mixtures (`vlaforge.data.oxe`) under a directory holding the datasets::

    {"mixture": "oxe_magic_soup_plus_minus", "data_dir": "/data/oxe"}

A mixture file may also say ``"statistics": "pooled"``: every dataset is then normalised with the
statistics of all their frames together (one set, no `unnorm_key`), as when the datasets are parts of one
(DAgger's rounds, `vlaforge.dagger`); the default, ``"per-dataset"``, keeps each dataset's own.

Paths are relative to the file. `name` (default: the directory's name) is the dataset's key: its statistics
are kept apart under it, and it becomes the checkpoint's `unnorm_key`, as in OpenVLA's
dataset_statistics.json. Sampling and the rules a mixture follows: docs/datasets.md, "Mixtures".
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.data.interface import ActionPlans, TrainingDataset, action_plans_of
from vlaforge.data.stats import norm_stats_of
from vlaforge.errors import InputError
from vlaforge.types import Embodiment, NormStats

STATISTICS = ("per-dataset", "pooled")


@dataclasses.dataclass(frozen=True)
class MixtureEntry:
    """One dataset of a mixture: where it is, its weight, its key, and (RLDS) its standardisation."""

    path: Path
    weight: float = 1.0
    name: str | None = None
    oxe: str | None = None

    @property
    def key(self) -> str:
        return self.name or self.path.resolve().name


def is_mixture(spec: str | Path) -> bool:
    """True for a mixture file (*.json) or a comma-separated list of datasets."""
    s = str(spec)
    return s.endswith(".json") or "," in s


def parse_mixture(spec: str | Path) -> list[MixtureEntry]:
    """The entries of a mixture file or comma list (see the module docstring).

    Raises:
        InputError: a missing or malformed file, an unknown named mixture or dataset (with a "did you
            mean"), a weight that is not a positive number, two datasets with the same key.
    """
    s = str(spec)
    if not s.endswith(".json"):
        entries = [MixtureEntry(Path(p.strip())) for p in s.split(",") if p.strip()]
    else:
        path = Path(s)
        if not path.is_file():
            raise InputError(f"mixture file {path} does not exist")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from e
        entries = _entries_from_doc(doc, path)
    if not entries:
        raise InputError(f"mixture {s!r} names no dataset")
    keys = [e.key for e in entries]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise InputError(f'mixture {s!r}: datasets {dup} appear twice; give them distinct "name"s')
    for e in entries:
        if not (e.weight > 0 and np.isfinite(e.weight)):
            raise InputError(f"mixture {s!r}: dataset {e.key!r} has weight {e.weight}; weights must be > 0")
    return entries


def mixture_statistics(spec: str | Path) -> str:
    """How a mixture normalises: "per-dataset" (each dataset its own statistics) or "pooled" (a mixture
    file's ``"statistics"``; a comma list is always per dataset)."""
    s = str(spec)
    if not s.endswith(".json"):
        return "per-dataset"
    doc = json.loads(Path(s).read_text())  # parse_mixture has read it already
    mode = doc.get("statistics", "per-dataset") if isinstance(doc, dict) else "per-dataset"
    if mode not in STATISTICS:
        raise InputError(f'{s}: "statistics" is {mode!r}; choose one of {list(STATISTICS)}')
    return mode


def _entries_from_doc(doc: Any, path: Path) -> list[MixtureEntry]:
    base = path.parent
    if not isinstance(doc, dict) or ("datasets" not in doc and "mixture" not in doc):
        raise InputError(
            f'{path}: a mixture file is {{"datasets": [...]}} or {{"mixture": NAME, "data_dir": DIR}}'
        )
    if "mixture" in doc:
        from vlaforge.data import oxe

        if "data_dir" not in doc:
            raise InputError(f'{path}: a named mixture needs "data_dir", the directory holding its datasets')
        data_dir = base / str(doc["data_dir"])
        present = sorted(p.name for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []
        out = []
        for name, weight in oxe.get_mixture(str(doc["mixture"])):
            if name not in present:
                close = difflib.get_close_matches(name, present, n=3)
                hint = f"; did you mean {close}?" if close else f"; {data_dir} holds {present[:10]}"
                raise InputError(
                    f"{path}: dataset {name!r} of mixture {doc['mixture']!r} is not in {data_dir}{hint}"
                )
            out.append(MixtureEntry(data_dir / name, float(weight), name, name))
        return out
    out = []
    for i, item in enumerate(doc["datasets"]):
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or "path" not in item:
            raise InputError(f'{path}: datasets[{i}] needs a "path"')
        unknown = sorted(set(item) - {"path", "weight", "name", "oxe"})
        if unknown:
            raise InputError(
                f"{path}: datasets[{i}] has unknown keys {unknown}; known: path, weight, name, oxe"
            )
        try:
            weight = float(item.get("weight", 1.0))
        except (TypeError, ValueError) as e:
            raise InputError(f"{path}: datasets[{i}] weight {item.get('weight')!r} is not a number") from e
        out.append(MixtureEntry(base / str(item["path"]), weight, item.get("name"), item.get("oxe")))
    return out


class _ConcatFrames:
    """The decoded caches of one camera over all datasets, indexable by global frame index arrays."""

    def __init__(self, parts: list[np.ndarray], offsets: np.ndarray):
        self.parts, self.offsets = parts, offsets
        self.shape = (int(offsets[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        scalar = idx.ndim == 0
        idx = idx.reshape(-1)
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        for d in np.unique(which):
            sel = which == d
            out[sel] = self.parts[d][idx[sel] - self.offsets[d]]
        return out[0] if scalar else out


@dataclasses.dataclass
class MixtureFrameReader:
    """Picklable: dispatches global frame indices to each dataset's own reader."""

    readers: list[Any]
    offsets: np.ndarray

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return self.readers[0].frame_shape

    def read(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), *self.frame_shape), dtype=np.uint8)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        for d in np.unique(which):
            sel = np.nonzero(which == d)[0]
            out[sel] = self.readers[d].read(idx[sel] - self.offsets[d])
        return out


class MixtureDataset:
    """Several datasets as one `TrainingDataset` (see the module docstring).

    Args:
        entries: the datasets (`parse_mixture`).
        datasets: each entry opened (`vlaforge.data.dataset.open_dataset` does it for a mixture path).

    Attributes:
        datasets: the opened datasets; keys: their keys; weights: their weights; offsets: (K + 1,) first
        global frame of each dataset.
    """

    def __init__(
        self, entries: Sequence[MixtureEntry], datasets: Sequence[TrainingDataset], pooled: bool = False
    ) -> None:
        if len(entries) != len(datasets) or not entries:
            raise InputError(
                f"a mixture needs one opened dataset per entry; got {len(entries)} / {len(datasets)}"
            )
        self.pooled = bool(pooled)  # one set of statistics over every frame (see the module docstring)
        self.entries = list(entries)
        self.keys = [e.key for e in self.entries]
        self.weights = np.asarray([e.weight for e in self.entries], dtype=np.float64)
        self.datasets: list[TrainingDataset] = list(datasets)
        self._check_compatible()
        first = self.datasets[0]
        self.image_size = first.image_size
        self.camera_names = list(first.camera_names)
        lengths = [d.num_frames for d in self.datasets]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.num_frames = int(self.offsets[-1])
        self.num_episodes = sum(d.num_episodes for d in self.datasets)
        self._ep_offsets = np.concatenate([[0], np.cumsum([d.num_episodes for d in self.datasets])])
        self.tasks: list[str] = []
        index = {}
        self._task_maps = []
        for d in self.datasets:
            self._task_maps.append(
                np.asarray([index.setdefault(t, len(index)) for t in d.tasks], dtype=np.int64)
            )
        self.tasks = list(index)
        self.dataset_index = np.repeat(np.arange(len(self.datasets)), lengths)  # (N,) dataset of every frame

    def _check_compatible(self) -> None:
        embs = [d.embodiment() for d in self.datasets]
        a = embs[0]
        for key, e in zip(self.keys[1:], embs[1:]):
            for attr in ("camera_names", "image_size", "action_dim", "state_dim", "normalize_mask"):
                if getattr(e, attr) != getattr(a, attr):
                    raise InputError(
                        f"mixture: dataset {key!r} has {attr} {getattr(e, attr)} but {self.keys[0]!r} has "
                        f"{getattr(a, attr)}; a mixture's datasets must agree on cameras, image size, action and "
                        "state dims (standardise them, e.g. with Open X-Embodiment's table, or pass --image-size)"
                    )

    # ------------------------------------------------------------------ TrainingDataset
    def episode_frames(self, episode: int) -> range:
        d = int(np.searchsorted(self._ep_offsets, episode, side="right") - 1)
        r = self.datasets[d].episode_frames(episode - int(self._ep_offsets[d]))
        o = int(self.offsets[d])
        return range(r.start + o, r.stop + o)

    def actions(self) -> np.ndarray:
        return np.concatenate([d.actions() for d in self.datasets]).astype(np.float32)

    def action_plans(self) -> ActionPlans | None:
        """The parts' plans (`TrainingDataset`'s optional `action_plans`) over the whole mixture, None when
        no part has any; frames of parts without plans are marked absent, shorter plans padded."""
        parts = [action_plans_of(d) for d in self.datasets]
        if all(p is None for p in parts):
            return None
        horizon = max(p.actions.shape[1] for p in parts if p is not None)
        dim = self.embodiment().action_dim
        actions = np.zeros((self.num_frames, horizon, dim), np.float32)
        pad = np.ones((self.num_frames, horizon), bool)
        present = np.zeros(self.num_frames, bool)
        for k, p in enumerate(parts):
            if p is None:
                continue
            a, b, h = int(self.offsets[k]), int(self.offsets[k + 1]), p.actions.shape[1]
            actions[a:b, :h], pad[a:b, :h], present[a:b] = p.actions, p.pad, p.present
            actions[a:b, h:] = p.actions[:, -1:]  # a shorter plan: its last action repeats, as padding
        return ActionPlans(actions, pad, present)

    def states(self) -> np.ndarray:
        return np.concatenate([d.states() for d in self.datasets]).astype(np.float32)

    def task_indices(self) -> np.ndarray:
        return np.concatenate([m[d.task_indices()] for m, d in zip(self._task_maps, self.datasets)])

    def frames(self, camera: str) -> Any:
        return _ConcatFrames([d.frames(camera) for d in self.datasets], self.offsets)

    def frame_reader(self, camera: str) -> MixtureFrameReader:
        return MixtureFrameReader([d.frame_reader(camera) for d in self.datasets], self.offsets)

    def cache_bytes(self, cameras: Sequence[str] | None = None) -> int:
        return sum(d.cache_bytes(cameras) for d in self.datasets)

    def embodiment(self) -> Embodiment:
        """The first dataset's embodiment, with limits spanning every dataset's."""
        embs = [d.embodiment() for d in self.datasets]
        low = np.min([e.action_low for e in embs], axis=0)
        high = np.max([e.action_high for e in embs], axis=0)
        return dataclasses.replace(
            embs[0], action_low=low.tolist(), action_high=high.tolist(), robot_type="mixture"
        )

    def dataset_norm_stats(self) -> dict[str, NormStats]:
        """Each dataset's own statistics, by key: the policy's `unnorm_key`s ({} when pooled)."""
        if self.pooled:
            return {}
        return {k: d.norm_stats() for k, d in zip(self.keys, self.datasets)}

    def norm_stats(self) -> NormStats:
        """Statistics of the pooled frames (the per-dataset ones are `dataset_norm_stats`)."""
        return norm_stats_of(self.actions(), self.states(), self.embodiment().normalize_mask)

    def training_data(self) -> dict[str, Any]:
        parts = [d.training_data() for d in self.datasets]
        envs = {p.get("env") for p in parts}
        return {
            "dataset": "mixture",
            "env": envs.pop() if len(envs) == 1 else None,
            "episodes": [e for p in parts for e in p.get("episodes") or []],
            "datasets": [
                {"key": k, "weight": float(w), "dataset": p.get("dataset")}
                for k, w, p in zip(self.keys, self.weights, parts)
            ],
        }

    def summary(self) -> str:
        lines = [
            f"mixture of {len(self.datasets)} datasets, {self.num_frames} frames, {self.num_episodes} episodes"
        ]
        p = self.sample_probabilities()
        for k, w, d, pi in zip(self.keys, self.weights, self.datasets, p):
            lines.append(f"  {k:32s} weight {w:6.3f}  {d.num_frames:9d} frames  sampled {100 * pi:5.1f}%")
        return "\n".join(lines)

    def sample_probabilities(self) -> np.ndarray:
        """(K,) probability of drawing each dataset: weight x frames, normalised (OpenVLA's balancing)."""
        p = self.weights * np.diff(self.offsets)
        return p / p.sum()
