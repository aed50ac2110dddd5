"""The training sampler: random frames with their future action chunk, as ready torch batches.

Action chunking (ACT, Zhao et al. 2023; OpenVLA-OFT, Kim et al. 2025; pi0) trains a policy to predict
`H` future actions `a[t..t+H-1]` from the observation at `t`. A chunk never crosses into the next
episode: past the episode's end the last action is repeated and `action_pad` marks those steps, so a
loss can ignore them (as LeRobot's `action_is_pad`).

Design choices:

- Everything is precomputed: the numeric columns live in memory as numpy, images come from the decoded
  uint8 memmap caches, and a batch is a handful of vectorised fancy-indexing gathers, so training never
  waits on data and no worker processes are needed.
- The stream of samples is a chain of epochs, each a permutation drawn from a generator seeded by
  `(seed, epoch)`; a batch may straddle two epochs. `state_dict()` is (epoch, position, seed), so a
  resumed run continues with exactly the same next batch.
- DDP: every rank draws the same permutation and takes every `world_size`-th element starting at `rank`
  (after trimming to a multiple of `world_size`), so the shards are disjoint and equally long.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from vlaforge.data.lerobot import IMAGE_PREFIX, LeRobotDataset
from vlaforge.errors import InputError


class ChunkSampler:
    """Infinite iterator of training batches with action chunks.

    Args:
        dataset: the LeRobot v3.0 dataset.
        batch_size: B, samples per batch.
        chunk_size: H, future actions per sample (1 for single-step policies).
        seed: seeds the per-epoch permutations.
        shuffle: False walks the frames in order (still sharded by rank).
        cameras: short names ("corner2") or full keys; default: every camera of the dataset.
        rank, world_size: this process's shard for distributed training.

    Yields:
        {"images": {camera: uint8 (B, h, w, 3)}, "state": float32 (B, S), "instruction": list[str],
        "actions": float32 (B, H, D), "action_pad": bool (B, H), "index": int64 (B,)}.
    """

    def __init__(
        self,
        dataset: LeRobotDataset,
        batch_size: int,
        chunk_size: int,
        seed: int = 0,
        shuffle: bool = True,
        cameras: list[str] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or chunk_size < 1:
            raise InputError(f"batch_size ({batch_size}) and chunk_size ({chunk_size}) must be >= 1")
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} must be in [0, world_size={world_size})")
        self.dataset = dataset
        self.batch_size, self.chunk_size = int(batch_size), int(chunk_size)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        n = dataset.num_frames
        self.shard_len = n // world_size
        if self.shard_len == 0:
            raise InputError(f"the dataset has {n} frames, fewer than world_size={world_size}")
        self.cameras = self._resolve_cameras(cameras)
        self.action = np.ascontiguousarray(dataset.column("action"), dtype=np.float32).reshape(
            n, -1
        )  # (N, D)
        if "observation.state" in dataset.features:
            self.state = np.ascontiguousarray(dataset.column("observation.state"), dtype=np.float32).reshape(
                n, -1
            )
        else:
            self.state = np.zeros((n, 0), dtype=np.float32)
        # End (exclusive) of each frame's episode, so chunks stop at the episode boundary.
        self.episode_end = np.empty(n, dtype=np.int64)
        for e in range(dataset.num_episodes):
            r = dataset.episode_frames(e)
            self.episode_end[r.start : r.stop] = r.stop
        self.task_index = np.asarray(dataset.column("task_index"), dtype=np.int64)
        self.tasks = list(dataset.tasks)
        self.images = {short: dataset.video_frames(key) for short, key in self.cameras.items()}
        self._offsets = np.arange(self.chunk_size, dtype=np.int64)
        self.epoch = 0
        self.position = 0  # samples of the current epoch's shard already yielded

    def _resolve_cameras(self, cameras: list[str] | None) -> dict[str, str]:
        keys = self.dataset.camera_keys
        if cameras is None:
            return {k[len(IMAGE_PREFIX) :] if k.startswith(IMAGE_PREFIX) else k: k for k in keys}
        out = {}
        for cam in cameras:
            key = cam if cam in keys else IMAGE_PREFIX + cam
            if key not in keys:
                raise InputError(f"camera {cam!r} is not in the dataset; it has {keys}")
            out[key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else key] = key
        return out

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's frame indices for `epoch`, in the order they are served."""
        n = self.dataset.num_frames
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n)
        else:
            order = np.arange(n)
        return order[: self.shard_len * self.world_size][self.rank :: self.world_size]

    def batch_from_indices(self, idx: np.ndarray) -> dict[str, Any]:
        """Builds the batch for global frame indices `idx` (B,)."""
        idx = np.asarray(idx, dtype=np.int64)
        steps = idx[:, None] + self._offsets[None, :]  # (B, H)
        end = self.episode_end[idx][:, None]  # (B, 1)
        pad = steps >= end
        steps = np.minimum(steps, end - 1)  # repeat the episode's last action past its end
        actions = self.action[steps]  # (B, H, D)
        images = {}
        for cam, frames in self.images.items():
            order = np.argsort(idx)  # sorted reads are kinder to the page cache
            gathered = np.empty((len(idx), *frames.shape[1:]), dtype=np.uint8)  # (B, h, w, 3)
            gathered[order] = frames[idx[order]]
            images[cam] = torch.from_numpy(gathered)
        return {
            "images": images,
            "state": torch.from_numpy(self.state[idx]),
            "instruction": [self.tasks[t] for t in self.task_index[idx]],
            "actions": torch.from_numpy(actions),
            "action_pad": torch.from_numpy(pad),
            "index": torch.from_numpy(idx.copy()),
        }

    def next_indices(self) -> np.ndarray:
        """The frame indices of the next batch, advancing the sampler's position."""
        parts, need = [], self.batch_size
        while need > 0:
            order = self._order_cache(self.epoch)
            take = order[self.position : self.position + need]
            parts.append(take)
            need -= len(take)
            self.position += len(take)
            if self.position >= len(order):
                self.epoch += 1
                self.position = 0
        return np.concatenate(parts)

    def _order_cache(self, epoch: int) -> np.ndarray:
        cached = getattr(self, "_cached_order", None)
        if cached is None or cached[0] != epoch:
            self._cached_order = (epoch, self.epoch_order(epoch))
        return self._cached_order[1]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.batch_from_indices(self.next_indices())

    def __next__(self) -> dict[str, Any]:
        return self.batch_from_indices(self.next_indices())

    @property
    def batches_per_epoch(self) -> float:
        """Batches per pass over this rank's shard."""
        return self.shard_len / self.batch_size

    def state_dict(self) -> dict[str, int]:
        """JSON-able position: a sampler loaded with it yields exactly the batch this one would yield next."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_frames": self.dataset.num_frames,
        }

    def load_state_dict(self, d: dict) -> None:
        """Restores a position saved by `state_dict` (the dataset must have the same number of frames)."""
        if int(d.get("num_frames", self.dataset.num_frames)) != self.dataset.num_frames:
            raise InputError(
                f"sampler state is for a dataset of {d['num_frames']} frames; this one has "
                f"{self.dataset.num_frames}: resuming on a different dataset cannot continue exactly"
            )
        if int(d.get("world_size", self.world_size)) != self.world_size:
            raise InputError(
                f"sampler state has world_size {d['world_size']}; this run has {self.world_size}"
            )
        self.epoch, self.position, self.seed = int(d["epoch"]), int(d["position"]), int(d["seed"])
        self._cached_order = None
