"""The dataset interface training speaks: `TrainingDataset`, `FrameReader`, `BatchSampler`, and helpers.

`vlaforge.train.train` needs from a dataset, whatever its format: the robot (`Embodiment`), the
normalisation statistics (`NormStats`), its provenance (`training_data()`), its episodes (count and frame
ranges), its tasks, and its frames. Frames are addressed by a global index 0..N-1 over all episodes;
numeric columns come whole as numpy arrays, camera frames from a decoded uint8 cache (`frames`) or from a
picklable `FrameReader` that decodes chosen frames in worker processes (`frame_reader`). The readers
(`vlaforge.data.lerobot`, `vlaforge.data.rlds_dataset`, `vlaforge.data.mixture`) implement it,
`vlaforge.data.sampler` builds batches from it, and `vlaforge.data.dataset.open_dataset` picks a reader.

The batch contract (README, "Contracts"): ``images: {camera: uint8 (B, h, w, 3)}``, ``state: float32
(B, S)``, ``instruction: list[str]``, ``actions: float32 (B, H, D)`` in robot units, ``action_pad: bool
(B, H)`` (True past the episode's end), ``index: int64 (B,)``.

This module imports numpy and vlaforge's pure types only (no reader, no torch), so the decode workers
that run `decode_job` start fast.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vlaforge.errors import InputError
from vlaforge.types import Embodiment, NormStats

IMAGE_PREFIX = "observation.images."  # a camera "corner2" is the dataset feature "observation.images.corner2"
# A frame's own chunk target, where a dataset has one: float32 (P, D), the actions an expert would take from
# that frame's state on, run open loop (`vlaforge dagger --labels plan`), and bool (P,), True past the
# episode's end. Training takes a frame's chunk from these columns when they are there instead of cutting it
# from the `action`s of the frames after it (which, off the expert's own path, are not what it would do).
PLAN_COLUMN = "expert_plan"
PLAN_PAD_COLUMN = "expert_plan_is_pad"


@dataclass(frozen=True)
class ActionPlans:
    """Frames' own chunk targets (`PLAN_COLUMN`), for the datasets that have them.

    Attributes:
        actions: float32 (N, P, D) in robot units.
        pad: bool (N, P), True past the end of a frame's episode (the action there repeats the last one).
        present: bool (N,), False for frames without a plan (their chunk is cut from the actions after them).
    """

    actions: np.ndarray
    pad: np.ndarray
    present: np.ndarray


def action_plans_of(dataset: Any) -> ActionPlans | None:
    """`dataset.action_plans()` where the dataset has that optional method (see `TrainingDataset`), else
    None."""
    method = getattr(dataset, "action_plans", None)
    return method() if method is not None else None


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
    """What `vlaforge.train.train` needs from a dataset (see the module docstring); batches come from
    `vlaforge.data.sampler.make_sampler(dataset, ...)`. A dataset whose frames carry their own chunk
    targets (`PLAN_COLUMN`) also has ``action_plans() -> ActionPlans | None`` (optional: readers ask
    through `action_plans_of`; the LeRobot reader and mixtures have it).

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
    """Process-pool initializer: keeps this worker's copy of every camera's reader.

    The worker ignores SIGINT: Ctrl-C reaches the whole process group, and the training process handles it
    (a checkpoint, then the pool is shut down); a worker that died of it first would print its own
    KeyboardInterrupt traceback and break the pool under the checkpoint being written."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _READERS.clear()
    _READERS.update(readers)


def decode_job(camera: str, indices: np.ndarray) -> np.ndarray:
    """uint8 (B, h, w, 3): frames `indices` of `camera`, decoded in a worker process."""
    return _READERS[camera].read(indices)
