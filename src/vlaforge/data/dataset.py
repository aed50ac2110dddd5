"""The dataset interface training speaks, and `open_dataset`, which picks the implementation for a path.

`vlaforge.train.train` needs six things from a dataset, whatever its format: the robot (`Embodiment`),
the normalisation statistics (`NormStats`), where it comes from (`training_data()`), its episodes (count
and frame ranges), its tasks, and a sampler of training batches. `TrainingDataset` writes that down as a
`typing.Protocol`; `LeRobotDataset` (`vlaforge.data.lerobot`) and `RLDSDataset`
(`vlaforge.data.rlds_dataset`, RLDS / Open X-Embodiment) implement it, and `train()` does not care which.

Frames are addressed by a global index 0..N-1 over all episodes, episode by episode. Numeric columns come
whole as numpy arrays (`actions()`, `states()`, `task_indices()`); camera frames come either from a decoded
uint8 cache (`frames(camera)`, an (N, s, s, 3) array, usually a memmap) or, for datasets too big to cache,
from a picklable `FrameReader` that decodes just the frames asked for (`frame_reader(camera)`) inside
worker processes. `ChunkSampler` (`vlaforge.data.sampler`) builds the training batches from these calls
only, so every implementation gets the cached and the streaming modes, exact resume and DDP sharding.

The training-batch contract (README, "Contracts"): ``images: {camera: uint8 (B, h, w, 3)}``,
``state: float32 (B, S)``, ``instruction: list[str]``, ``actions: float32 (B, H, D)`` in robot units,
``action_pad: bool (B, H)`` (True past the episode's end), ``index: int64 (B,)``.

This module imports numpy only (plus vlaforge's pure types), so the streaming decode workers that run
`decode_job` start without torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vlaforge.errors import InputError
from vlaforge.types import Embodiment, NormStats

IMAGE_PREFIX = "observation.images."  # a camera "corner2" is the dataset feature "observation.images.corner2"


@runtime_checkable
class FrameReader(Protocol):
    """Decodes chosen frames of one camera; picklable, so it can be sent to worker processes.

    Attributes:
        frame_shape: (h, w, 3) of the frames `read` returns.
    """

    frame_shape: tuple[int, int, int]

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (B, h, w, 3): the frames at global indices `indices` (B,), in that order."""
        ...


@runtime_checkable
class BatchSampler(Protocol):
    """An infinite iterator of training batches (the contract above) with an exactly resumable position."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def __next__(self) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position: a sampler loaded with it yields exactly the batch this one yields next."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Stops any background work (decode processes); the sampler must not be used afterwards."""
        ...


@runtime_checkable
class TrainingDataset(Protocol):
    """What `vlaforge.train.train` needs from a dataset (see the module docstring).

    Attributes:
        num_frames: N, frames over all episodes.
        num_episodes: number of episodes; episode e spans the global frames `episode_frames(e)`.
        tasks: instruction strings, by task index.
        camera_names: short camera names ("corner2"), in the dataset's order.
        image_size: the square side frames are served at; None serves them at the dataset's own size.
    """

    num_frames: int
    num_episodes: int
    tasks: list[str]
    camera_names: list[str]
    image_size: int | None

    def embodiment(self) -> Embodiment:
        """The robot, with `image_size` and the normalisation mask the dataset was opened with."""
        ...

    def norm_stats(self) -> NormStats:
        """Statistics of "action" (with the embodiment's mask) and "observation.state" when present."""
        ...

    def training_data(self) -> dict[str, Any]:
        """Provenance stored with a policy: {"dataset": path, "env": ..., "episodes": [...]}."""
        ...

    def episode_frames(self, episode: int) -> range:
        """Global frame indices of `episode`."""
        ...

    def actions(self) -> np.ndarray:
        """float32 (N, D) actions in robot units."""
        ...

    def states(self) -> np.ndarray:
        """float32 (N, S) proprioceptive states; (N, 0) when the dataset has none."""
        ...

    def task_indices(self) -> np.ndarray:
        """int64 (N,) index into `tasks` of every frame."""
        ...

    def frames(self, camera: str) -> np.ndarray:
        """uint8 (N, s, s, 3) every frame of `camera` at `image_size`, from the decoded cache."""
        ...

    def frame_reader(self, camera: str) -> FrameReader:
        """A picklable reader decoding chosen frames of `camera`, bitwise equal to `frames(camera)`."""
        ...

    def cache_bytes(self, cameras: Sequence[str] | None = None) -> int:
        """Bytes the decoded cache of `cameras` (default all) takes at `image_size`."""
        ...

    def sampler(
        self,
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
        history: int = 1,
        balance: str = "frames",
    ) -> BatchSampler:
        """Training batches (see `vlaforge.data.sampler.ChunkSampler` for the arguments)."""
        ...


class ChunkSampling:
    """Mixin giving a `TrainingDataset` its `sampler()`: a `ChunkSampler` over itself (or, for a subclass, the
    sampler class `_sampler` names). The sampler module imports torch, so it is imported only when called."""

    _sampler = "vlaforge.data.sampler:ChunkSampler"

    def sampler(
        self,
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
        history: int = 1,
        balance: str = "frames",
    ) -> BatchSampler:
        """Training batches (see `vlaforge.data.sampler.ChunkSampler` for the arguments)."""
        module, _, name = self._sampler.partition(":")
        cls = getattr(importlib.import_module(module), name)
        return cls(
            self, batch_size, chunk_size, seed=seed, shuffle=shuffle, cameras=cameras, rank=rank,
            world_size=world_size, cache_max_gb=cache_max_gb, decode_workers=decode_workers, history=history,
            balance=balance,
        )  # fmt: skip


def open_dataset(
    path: str | Path,
    *,
    image_size: int | None = None,
    unnormalized_actions: Sequence[str | int] | str | None = None,
    cache_dir: str | Path | None = None,
    oxe: str | None = None,
) -> TrainingDataset:
    """Opens the dataset at `path` with the reader its layout calls for.

    Args:
        path: a LeRobotDataset v3.0 directory (``meta/info.json``, ``data/``, ``videos/``), an RLDS / TFDS
            directory (``<name>/<version>/`` with ``dataset_info.json``, or ``<name>/`` above it), or a
            mixture: a ``mix.json`` file or a comma-separated list of datasets (`vlaforge.data.mixture`).
        image_size: square side frames are decoded, cached and served at; None keeps the dataset's.
        unnormalized_actions: names or indices of action dims left unnormalised (a comma-separated
            string works too); None follows the dataset's metadata (vlaforge's stored embodiment, or Open
            X-Embodiment's gripper), and normalises every dim when there is none.
        cache_dir: where decoded caches (and the RLDS index) go (default: inside the dataset directory).
        oxe: RLDS only: the Open X-Embodiment standardisation to apply (None: by the dataset's name when the
            table has it; "": none).

    Raises:
        InputError: naming the path, when it is not a dataset this version reads.
    """
    from vlaforge.data.mixture import MixtureDataset, is_mixture, parse_mixture

    if is_mixture(path):
        return MixtureDataset(
            parse_mixture(path),
            image_size=image_size,
            unnormalized_actions=unnormalized_actions,
            cache_dir=cache_dir,
        )
    root = Path(path)
    if (root / "meta" / "info.json").is_file():
        from vlaforge.data.lerobot import LeRobotDataset

        if oxe:
            raise InputError(
                f"{root} is a LeRobot dataset; an Open X-Embodiment standardisation applies to RLDS"
            )
        return LeRobotDataset(
            root, cache_dir=cache_dir, image_size=image_size, unnormalized_actions=unnormalized_actions
        )
    if not root.exists():
        raise InputError(f"dataset {root} does not exist; pass a LeRobot v3.0 or an RLDS / TFDS directory")
    if is_rlds(root):
        from vlaforge.data.rlds_dataset import RLDSDataset

        return RLDSDataset(
            root,
            image_size=image_size,
            unnormalized_actions=unnormalized_actions,
            cache_dir=cache_dir,
            oxe=oxe,
        )
    raise InputError(
        f"{root} is not a dataset vlaforge can read: a LeRobot v3.0 dataset is a directory with "
        "meta/info.json, data/ and videos/ (make one with `vlaforge collect` or LeRobot); an RLDS dataset is "
        "a TFDS directory <name>/<version>/ with dataset_info.json, features.json and *.tfrecord-* shards"
    )


def is_rlds(path: str | Path) -> bool:
    """True when `path` is a TFDS version directory or a dataset directory holding one."""
    root = Path(path)
    if (root / "dataset_info.json").is_file():
        return True
    return root.is_dir() and any((p / "dataset_info.json").is_file() for p in root.iterdir() if p.is_dir())


def parse_unnormalized(value: Sequence[str | int] | str | None) -> list[str] | None:
    """`unnormalized_actions` as a list of strings: "gripper,3" -> ["gripper", "3"]; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    out = [str(v).strip() for v in items]
    if any(not v for v in out):
        raise InputError(f"unnormalized_actions {value!r} has an empty entry; give action names or indices")
    return out


def normalize_mask(
    action_names: Sequence[str], unnormalized: Sequence[str | int] | str | None, where: str = ""
) -> list[bool]:
    """Per action dim, True when normalised: every dim but those named (or indexed) in `unnormalized`.

    Raises:
        InputError: for a name that is not an action dim or an index out of range, listing the valid ones.
    """
    names = list(action_names)
    mask = [True] * len(names)
    for item in parse_unnormalized(unnormalized) or []:
        if item in names:
            mask[names.index(item)] = False
        elif item.lstrip("-").isdigit() and 0 <= int(item) < len(names):
            mask[int(item)] = False
        else:
            raise InputError(
                f"{where}unnormalized_actions: {item!r} is not an action dim; the valid names are {names} "
                f"(or indices 0..{len(names) - 1})"
            )
    return mask


# ------------------------------------------------------------------ streaming decode workers
# The functions a `ChunkSampler` in streaming mode runs in its spawned worker processes: each worker
# receives the readers once (`init_decode_worker`), then decodes index lists (`decode_job`).

_READERS: dict[str, FrameReader] = {}


def init_decode_worker(readers: dict[str, FrameReader]) -> None:
    """Process-pool initializer: keeps this worker's copy of every camera's reader."""
    _READERS.clear()
    _READERS.update(readers)


def decode_job(camera: str, indices: np.ndarray) -> np.ndarray:
    """uint8 (B, h, w, 3): frames `indices` of `camera`, decoded in a worker process."""
    return _READERS[camera].read(indices)
