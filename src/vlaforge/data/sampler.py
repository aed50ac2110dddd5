"""The training sampler: random frames with their future action chunk, as ready torch batches.

Action chunking (ACT, Zhao et al. 2023; OpenVLA-OFT, Kim et al. 2025; pi0) trains a policy to predict `H`
future actions `a[t..t+H-1]` from the observation at `t`; a chunk never crosses into the next episode
(past its end the last action repeats and `action_pad` marks it, as LeRobot's `action_is_pad`). The
sampler reads a dataset only through `vlaforge.data.interface.TrainingDataset`, serves frames from the
decoded cache or decodes them in worker processes (streaming), resumes exactly and shards across DDP ranks;
`make_sampler` picks `MixtureSampler` for a mixture. How each of these works: docs/datasets.md, "Sampler".
"""

from __future__ import annotations

import multiprocessing
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np
import torch

from vlaforge.data.interface import (
    IMAGE_PREFIX,
    TrainingDataset,
    action_plans_of,
    decode_job,
    init_decode_worker,
)
from vlaforge.data.mixture import MixtureDataset
from vlaforge.errors import InputError

GB = 1e9  # cache_max_gb counts decimal gigabytes
BALANCES = ("frames", "tasks")


class ChunkSampler:
    """Infinite iterator of training batches with action chunks.

    Args:
        dataset: any `TrainingDataset` (e.g. a `LeRobotDataset`); images are served at its `image_size`.
        batch_size: B, samples per batch.
        chunk_size: H, future actions per sample (1 for single-step policies).
        seed: seeds the per-epoch permutations.
        shuffle: False walks the frames in order (still sharded by rank).
        cameras: short names ("corner2") or full keys; default: every camera of the dataset.
        rank, world_size: this process's shard for distributed training.
        cache_max_gb: stream (decode in worker processes) instead of caching when the decoded caches of
            the cameras would take more than this many GB (1e9 bytes); 0 always streams, None never does.
        decode_workers: worker processes decoding frames in streaming mode.
        prefetch: batches decoded ahead in streaming mode (default: 2 per worker).
        history: T, observations per sample (the current one and the T - 1 before it); 1: the current only.
        balance: "frames" (every frame once per epoch) or "tasks" (every task equally often per epoch).

    Attributes:
        streaming: whether frames are decoded on the fly (else read from the cache).
        cache_bytes: bytes the caches of the chosen cameras take (or would take).

    Yields:
        {"images": {camera: uint8 (B, h, w, 3)}, "state": float32 (B, S), "instruction": list[str],
        "actions": float32 (B, H, D), "action_pad": bool (B, H), "index": int64 (B,)}; with history T > 1
        the images are (B, T, h, w, 3), the state (B, T, S), and "history_pad" bool (B, T) is added.
    """

    def __init__(
        self,
        dataset: TrainingDataset,
        batch_size: int,
        chunk_size: int,
        seed: int = 0,
        shuffle: bool = True,
        cameras: list[str] | None = None,
        rank: int = 0,
        world_size: int = 1,
        cache_max_gb: float | None = None,
        decode_workers: int = 2,
        prefetch: int | None = None,
        history: int = 1,
        balance: str = "frames",
    ) -> None:
        if balance not in BALANCES:
            raise InputError(f"balance must be one of {list(BALANCES)}; got {balance!r}")
        if int(history) < 1:
            raise InputError(f"history must be >= 1 (observations per sample); got {history}")
        if batch_size < 1 or chunk_size < 1:
            raise InputError(f"batch_size ({batch_size}) and chunk_size ({chunk_size}) must be >= 1")
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} must be in [0, world_size={world_size})")
        if decode_workers < 1 or (prefetch is not None and prefetch < 1):
            raise InputError(f"decode_workers ({decode_workers}) and prefetch ({prefetch}) must be >= 1")
        if cache_max_gb is not None and not cache_max_gb >= 0:
            raise InputError(f"cache_max_gb={cache_max_gb}: must be >= 0 (0 streams), or None (never stream)")
        self.dataset = dataset
        self.batch_size, self.chunk_size = int(batch_size), int(chunk_size)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        n = dataset.num_frames
        self.shard_len = n // world_size
        if self.shard_len == 0:
            raise InputError(f"the dataset has {n} frames, fewer than world_size={world_size}")
        self.cameras = self._resolve_cameras(cameras)
        self.action = np.ascontiguousarray(dataset.actions(), dtype=np.float32).reshape(n, -1)  # (N, D)
        self.state = np.ascontiguousarray(dataset.states(), dtype=np.float32).reshape(n, -1)  # (N, S)
        # End (exclusive) of each frame's episode, so chunks stop at the episode boundary.
        self.episode_end = np.empty(n, dtype=np.int64)
        self.episode_start = np.empty(n, dtype=np.int64)
        for e in range(dataset.num_episodes):
            r = dataset.episode_frames(e)
            self.episode_end[r.start : r.stop] = r.stop
            self.episode_start[r.start : r.stop] = r.start
        self.history = int(history)
        self._history_offsets = np.arange(1 - self.history, 1, dtype=np.int64)  # (T,), oldest first
        self.task_index = np.asarray(dataset.task_indices(), dtype=np.int64)
        self.tasks = list(dataset.tasks)
        self.balance = balance
        self._offsets = np.arange(self.chunk_size, dtype=np.int64)
        # Frames with their own chunk target (`vlaforge.data.interface.PLAN_COLUMN`) take it from there.
        self.plans = action_plans_of(dataset)
        self.epoch = 0
        self.position = 0  # samples of the current epoch's shard already drawn
        self.cache_bytes = int(dataset.cache_bytes(self.cameras))
        self.streaming = cache_max_gb is not None and self.cache_bytes > cache_max_gb * GB
        self.decode_workers = int(decode_workers)
        self.prefetch = int(prefetch) if prefetch is not None else 2 * self.decode_workers
        self.images: dict[str, np.ndarray] = {}
        self.readers: dict[str, Any] = {}
        if self.streaming:
            self.readers = {cam: dataset.frame_reader(cam) for cam in self.cameras}
        else:
            self.images = {cam: dataset.frames(cam) for cam in self.cameras}
        # Streaming: batches drawn but not yet handed out, as
        # (position before, indices, their positions in the sorted unique frames, {camera: jobs}).
        self._pending: deque[tuple[dict[str, Any], np.ndarray, np.ndarray, dict[str, list[Future]]]] = deque()
        self._pool: ProcessPoolExecutor | None = None

    def _resolve_cameras(self, cameras: list[str] | None) -> list[str]:
        names = list(self.dataset.camera_names)
        if cameras is None:
            return names
        out = []
        for cam in cameras:
            short = cam[len(IMAGE_PREFIX) :] if cam.startswith(IMAGE_PREFIX) else cam
            if short not in names:
                raise InputError(f"camera {cam!r} is not in the dataset; it has {names}")
            out.append(short)
        return out

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's frame indices for `epoch`, in the order they are served."""
        n = self.dataset.num_frames
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            order = self._balanced_order(rng) if self.balance == "tasks" else rng.permutation(n)
        else:
            order = np.arange(n)
        return order[: self.shard_len * self.world_size][self.rank :: self.world_size]

    def _balanced_order(self, rng: np.random.Generator) -> np.ndarray:
        """N frame indices, every task present getting N // tasks of them (+1 for the first N % tasks),
        each task's drawn from back-to-back permutations of its frames, then shuffled together."""
        n = self.dataset.num_frames
        present = np.unique(self.task_index)
        share = np.full(len(present), n // len(present), dtype=np.int64)
        share[: n % len(present)] += 1
        parts = []
        for t, k in zip(present.tolist(), share.tolist()):
            frames = np.flatnonzero(self.task_index == t)
            reps = -(-k // len(frames))  # ceil
            parts.append(np.concatenate([rng.permutation(frames) for _ in range(reps)])[:k])
        return rng.permutation(np.concatenate(parts))

    def history_indices(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) frame indices of each sample's observations, oldest first, clamped to its episode's first
        frame, and the (B, T) mask of the clamped (repeated) ones."""
        h = idx[:, None] + self._history_offsets[None, :]
        start = self.episode_start[idx][:, None]
        return np.maximum(h, start), h < start

    def _frames_of(self, idx: np.ndarray) -> np.ndarray:
        """The frames a batch's images come from: (B,) without history, (B * T,) with it."""
        return idx if self.history == 1 else self.history_indices(idx)[0].reshape(-1)

    def _shape_images(self, frames: np.ndarray) -> torch.Tensor:
        """(B, h, w, 3) or, with history, (B * T, ...) -> (B, T, h, w, 3)."""
        t = torch.from_numpy(frames)
        return t if self.history == 1 else t.view(-1, self.history, *t.shape[1:])

    def batch_from_indices(self, idx: np.ndarray) -> dict[str, Any]:
        """Builds the batch for global frame indices `idx` (B,) (streaming: decoded in this process)."""
        idx = np.asarray(idx, dtype=np.int64)
        frames_idx = self._frames_of(idx)
        if self.streaming:
            images = {
                cam: self._shape_images(reader.read(frames_idx)) for cam, reader in self.readers.items()
            }
        else:
            images = {
                cam: self._shape_images(self._gather(frames, frames_idx))
                for cam, frames in self.images.items()
            }
        return self._assemble(idx, images)

    @staticmethod
    def _gather(frames: np.ndarray, idx: np.ndarray) -> np.ndarray:
        order = np.argsort(idx)  # sorted reads are kinder to the page cache
        gathered = np.empty((len(idx), *frames.shape[1:]), dtype=np.uint8)  # (B, h, w, 3)
        gathered[order] = frames[idx[order]]
        return gathered

    def _assemble(self, idx: np.ndarray, images: dict[str, torch.Tensor]) -> dict[str, Any]:
        steps = idx[:, None] + self._offsets[None, :]  # (B, H)
        end = self.episode_end[idx][:, None]  # (B, 1)
        pad = steps >= end
        steps = np.minimum(steps, end - 1)  # repeat the episode's last action past its end
        actions = self.action[steps]  # (B, H, D)
        if self.plans is not None:
            actions, pad = self._planned(idx, actions, pad)
        batch = {
            "images": images,
            "state": torch.from_numpy(self.state[idx]),
            "instruction": [self.tasks[t] for t in self.task_index[idx]],
            "actions": torch.from_numpy(actions),
            "action_pad": torch.from_numpy(pad),
            "index": torch.from_numpy(idx.copy()),
        }
        if self.history > 1:
            hist, hist_pad = self.history_indices(idx)
            batch["state"] = torch.from_numpy(self.state[hist])  # (B, T, S)
            batch["history_pad"] = torch.from_numpy(hist_pad)
        return batch

    def _planned(
        self, idx: np.ndarray, actions: np.ndarray, pad: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """`actions` (B, H, D) and `pad` (B, H) with the chunks of planned frames taken from their plans (a
        plan shorter than H: the rest is its last action, padded)."""
        plans = self.plans
        rows = np.flatnonzero(plans.present[idx])
        if not len(rows):
            return actions, pad
        k = min(self.chunk_size, plans.actions.shape[1])
        actions, pad = actions.copy(), pad.copy()
        frames = idx[rows]
        actions[rows, :k] = plans.actions[frames, :k]
        pad[rows, :k] = plans.pad[frames, :k]
        if k < self.chunk_size:
            actions[rows, k:] = plans.actions[frames, k - 1 : k]
            pad[rows, k:] = True
        return actions, pad

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
            yield next(self)

    def __next__(self) -> dict[str, Any]:
        if not self.streaming:
            return self.batch_from_indices(self.next_indices())
        self._fill()
        _, idx, inverse, jobs = self._pending.popleft()
        images = {}
        for cam, futures in jobs.items():
            frames = np.concatenate([f.result() for f in futures])  # (U, h, w, 3), sorted by index
            images[cam] = self._shape_images(frames[inverse])  # (B, h, w, 3) or (B, T, h, w, 3)
        self._fill()  # keep the workers busy while the trainer uses this batch
        return self._assemble(idx, images)

    # ------------------------------------------------------------------ streaming
    def _start_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a fork of a process holding torch / CUDA / OpenMP threads is unsafe.
            self._pool = ProcessPoolExecutor(
                max_workers=self.decode_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_decode_worker,
                initargs=(self.readers,),
            )
            self._finalizer = weakref.finalize(self, _shutdown, self._pool)
        return self._pool

    def _fill(self) -> None:
        """Draws batches and submits their decode jobs until `prefetch` batches are pending."""
        pool = self._start_pool()
        while len(self._pending) < self.prefetch:
            before = self._position()
            idx = self.next_indices()
            # Sorted unique frames (neighbours share files and keyframes); `inverse` maps them back to the
            # batch's order: (B,) positions in `uniq`.
            uniq, inverse = np.unique(self._frames_of(idx), return_inverse=True)
            pieces = [p for p in np.array_split(uniq, self.decode_workers) if len(p)]
            jobs = {cam: [pool.submit(decode_job, cam, p) for p in pieces] for cam in self.readers}
            self._pending.append((before, idx, inverse, jobs))

    def _drop_pending(self) -> None:
        for *_, jobs in self._pending:
            for futures in jobs.values():
                for f in futures:
                    f.cancel()
        self._pending.clear()

    def close(self) -> None:
        """Stops the decode workers (streaming mode); safe to call twice."""
        self._drop_pending()
        if self._pool is not None:
            self._finalizer()
            self._pool = None

    @property
    def batches_per_epoch(self) -> float:
        """Batches per pass over this rank's shard."""
        return self.shard_len / self.batch_size

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position: a sampler loaded with it yields exactly the batch this one would yield next.

        In streaming mode that is the position before the first prefetched batch not yet handed out.
        """
        pos = self._pending[0][0] if self._pending else self._position()
        return {
            **pos,
            "balance": self.balance,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_frames": self.dataset.num_frames,
        }

    def _position(self) -> dict[str, Any]:
        """Where the index stream is (JSON-able); a subclass with another stream overrides both methods."""
        return {"epoch": self.epoch, "position": self.position}

    def _restore_position(self, pos: dict[str, Any]) -> None:
        self.epoch, self.position = int(pos["epoch"]), int(pos["position"])
        self._cached_order = None

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
        if d.get("balance", "frames") != self.balance:
            raise InputError(
                f"sampler state was saved with balance={d.get('balance', 'frames')!r}; this sampler has "
                f"balance={self.balance!r}"
            )
        self._drop_pending()
        self.seed = int(d["seed"])
        self._restore_position(d)


class MixtureSampler(ChunkSampler):
    """`ChunkSampler` whose samples draw their dataset by weight, then the next frame of its permutation.

    Dataset d is drawn with probability proportional to weight_d x frames_d (OpenVLA's balancing, see
    `vlaforge.data.mixture`) from a stream seeded by (seed, rank, batch); each dataset has its own
    permutation per epoch, seeded by (seed, dataset, epoch), sharded across ranks as `ChunkSampler` does.
    The position is the batch count plus every dataset's (epoch, position), so resume is exact.
    """

    def __init__(self, dataset: MixtureDataset, *args: Any, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        if self.balance != "frames":
            raise InputError(
                f"balance={self.balance!r} is not available for a mixture: its samples are drawn by dataset "
                "weight (set the weights in the mix.json instead)"
            )
        self.mixture = dataset
        self.probs = dataset.sample_probabilities()
        lengths = np.diff(dataset.offsets)
        self.sub_len = lengths // self.world_size
        if (self.sub_len == 0).any():
            small = [k for k, n in zip(dataset.keys, self.sub_len) if n == 0]
            raise InputError(f"datasets {small} have fewer frames than world_size={self.world_size}")
        self.batches = 0
        self.streams = [[0, 0] for _ in lengths]  # per dataset: (epoch, position in this rank's shard)
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def _dataset_order(self, d: int, epoch: int) -> np.ndarray:
        key = (d, epoch)
        if key not in self._orders:
            n = int(self.mixture.offsets[d + 1] - self.mixture.offsets[d])
            if self.shuffle:
                order = np.random.default_rng([self.seed, d, epoch]).permutation(n)
            else:
                order = np.arange(n)
            shard = order[: int(self.sub_len[d]) * self.world_size][self.rank :: self.world_size]
            self._orders = {k: v for k, v in self._orders.items() if k[0] != d}  # one epoch per dataset kept
            self._orders[key] = shard + int(self.mixture.offsets[d])
        return self._orders[key]

    def next_indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.rank, self.batches])
        which = rng.choice(len(self.probs), size=self.batch_size, p=self.probs)  # (B,) dataset per sample
        out = np.empty(self.batch_size, dtype=np.int64)
        for i, d in enumerate(which.tolist()):
            epoch, pos = self.streams[d]
            out[i] = self._dataset_order(d, epoch)[pos]
            pos += 1
            if pos >= self.sub_len[d]:
                epoch, pos = epoch + 1, 0
            self.streams[d] = [epoch, pos]
        self.batches += 1
        return out

    def _assemble(self, idx: np.ndarray, images: dict[str, torch.Tensor]) -> dict[str, Any]:
        batch = super()._assemble(idx, images)
        if not self.mixture.pooled:  # pooled statistics: every sample is normalised alike
            batch["dataset"] = [self.mixture.keys[d] for d in self.mixture.dataset_index[idx]]
        return batch

    def _position(self) -> dict[str, Any]:
        return {"batches": self.batches, "streams": [list(s) for s in self.streams]}

    def _restore_position(self, pos: dict[str, Any]) -> None:
        self.batches = int(pos["batches"])
        self.streams = [[int(e), int(p)] for e, p in pos["streams"]]
        if len(self.streams) != len(self.mixture.datasets):
            raise InputError(
                f"sampler state has {len(self.streams)} datasets; this mixture has {len(self.mixture.datasets)}"
            )


def make_sampler(
    dataset: TrainingDataset,
    batch_size: int,
    chunk_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    cameras: list[str] | None = None,
    rank: int = 0,
    world_size: int = 1,
    cache_max_gb: float | None = None,
    decode_workers: int = 2,
    prefetch: int | None = None,
    history: int = 1,
    balance: str = "frames",
) -> ChunkSampler:
    """The training sampler for `dataset`: a `MixtureSampler` for a mixture (datasets drawn by weight),
    else a `ChunkSampler` (arguments: see `ChunkSampler`)."""
    cls = MixtureSampler if isinstance(dataset, MixtureDataset) else ChunkSampler
    return cls(
        dataset, batch_size, chunk_size, seed=seed, shuffle=shuffle, cameras=cameras, rank=rank,
        world_size=world_size, cache_max_gb=cache_max_gb, decode_workers=decode_workers, prefetch=prefetch,
        history=history, balance=balance,
    )  # fmt: skip


def _shutdown(pool: ProcessPoolExecutor) -> None:
    pool.shutdown(wait=True, cancel_futures=True)
