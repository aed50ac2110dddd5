"""Opening a dataset: the table of formats vlaforge reads (`FORMATS`) and `open_dataset`, which uses it.

A format is a row: how to recognise its path (`detect`), what such a path looks like (for the error that
lists them), and how to open it as a `TrainingDataset` (`vlaforge.data.interface`). The first row whose
`detect` accepts a path opens it. Adding a format is adding a row; training, conversion and the CLI only
call `open_dataset`. Readers: `vlaforge.data.lerobot` (LeRobotDataset v3.0), `vlaforge.data.rlds_dataset`
(RLDS / TFDS, Open X-Embodiment), `vlaforge.data.mixture` (several datasets sampled by weight).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlaforge.data.interface import (
    IMAGE_PREFIX,
    BatchSampler,
    FrameReader,
    TrainingDataset,
    normalize_mask,
    parse_unnormalized,
)
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.data.mixture import MixtureDataset, is_mixture, mixture_statistics, parse_mixture
from vlaforge.data.rlds import is_rlds
from vlaforge.data.rlds_dataset import RLDSDataset
from vlaforge.errors import InputError


@dataclasses.dataclass(frozen=True)
class DatasetFormat:
    """One dataset format `open_dataset` reads.

    Attributes:
        name: the format's name ("lerobot", "rlds", "mixture").
        looks_like: what a path of this format is, in words (shown when no format matches).
        detect: True when a path is of this format (cheap: looks at file names, reads nothing big).
        open: opens the path with `open_dataset`'s options (see there) as a `TrainingDataset`.
    """

    name: str
    looks_like: str
    detect: Callable[[str | Path], bool]
    open: Callable[..., TrainingDataset]


def _is_lerobot(path: str | Path) -> bool:
    return (Path(path) / "meta" / "info.json").is_file()


def _open_lerobot(
    path: str | Path,
    *,
    image_size: int | None = None,
    unnormalized_actions: Sequence[str | int] | str | None = None,
    cache_dir: str | Path | None = None,
    oxe: str | None = None,
    keep_all_steps: bool = False,
) -> LeRobotDataset:
    if oxe:
        raise InputError(f"{path} is a LeRobot dataset; an Open X-Embodiment standardisation applies to RLDS")
    # keep_all_steps: a LeRobot dataset's frames are all served; there is no step selection to skip.
    return LeRobotDataset(
        path, cache_dir=cache_dir, image_size=image_size, unnormalized_actions=unnormalized_actions
    )


def _open_rlds(path: str | Path, **opts: Any) -> RLDSDataset:
    return RLDSDataset(path, **opts)


def _open_mixture(
    path: str | Path, *, cache_dir: str | Path | None = None, oxe: str | None = None, **opts: Any
) -> MixtureDataset:
    if oxe:
        raise InputError(
            f"mixture {path}: give each dataset's Open X-Embodiment standardisation in the mixture file "
            '("oxe" of its entry), not one for all'
        )
    entries = parse_mixture(path)
    datasets = [
        open_dataset(
            e.path, cache_dir=None if cache_dir is None else Path(cache_dir) / e.key, oxe=e.oxe, **opts
        )
        for e in entries
    ]
    return MixtureDataset(entries, datasets, pooled=mixture_statistics(path) == "pooled")


FORMATS: dict[str, DatasetFormat] = {
    f.name: f
    for f in [
        DatasetFormat(
            "mixture",
            'a mix.json file ({"datasets": [...]} or {"mixture": NAME, "data_dir": DIR}) or a '
            "comma-separated list of datasets",
            is_mixture,
            _open_mixture,
        ),
        DatasetFormat(
            "lerobot",
            "a LeRobot v3.0 directory with meta/info.json, data/ and videos/ (made by `vlaforge collect`, "
            "`vlaforge dataset convert --to lerobot` or LeRobot)",
            _is_lerobot,
            _open_lerobot,
        ),
        DatasetFormat(
            "rlds",
            "an RLDS / TFDS directory <name>/<version>/ (or <name>/ above it) with dataset_info.json, "
            "features.json and *.tfrecord-* shards",
            is_rlds,
            _open_rlds,
        ),
    ]
}


def detect_format(path: str | Path) -> DatasetFormat:
    """The row of `FORMATS` that reads `path`.

    Raises:
        InputError: naming the path and listing what each format looks like, when none reads it.
    """
    for fmt in FORMATS.values():
        if fmt.detect(path):
            return fmt
    what = "does not exist" if not Path(path).exists() else "is not a dataset vlaforge can read"
    kinds = "\n".join(f"  {f.name}: {f.looks_like}" for f in FORMATS.values())
    raise InputError(f"{path} {what}; pass one of:\n{kinds}")


def open_dataset(
    path: str | Path,
    *,
    image_size: int | None = None,
    unnormalized_actions: Sequence[str | int] | str | None = None,
    cache_dir: str | Path | None = None,
    oxe: str | None = None,
    keep_all_steps: bool = False,
) -> TrainingDataset:
    """Opens the dataset at `path` with the reader of its format (`FORMATS`).

    Args:
        path: a LeRobot v3.0 directory, an RLDS / TFDS directory, or a mixture (a mix.json file or a
            comma-separated list of datasets); `FORMATS` says what each looks like.
        image_size: square side frames are decoded, cached and served at; None keeps the dataset's.
        unnormalized_actions: names or indices of action dims left unnormalised (a comma-separated
            string works too); None follows the dataset's metadata (vlaforge's stored embodiment, or Open
            X-Embodiment's gripper), and normalises every dim when there is none.
        cache_dir: where decoded caches (and the RLDS index) go (default: inside the dataset directory).
        oxe: RLDS only: the Open X-Embodiment standardisation to apply (None: by the dataset's name when the
            table has it; "": none).
        keep_all_steps: RLDS with an Open X-Embodiment standardisation: serve every step, instead of the
            steps OpenVLA trains on (it drops Bridge's first and last step of every episode and DROID's
            still steps; `vlaforge.data.oxe.standardize`). Other datasets serve every frame anyway.

    Raises:
        InputError: naming the path, when it is not a dataset this version reads (listing the formats).
    """
    fmt = detect_format(path)
    return fmt.open(
        path,
        image_size=image_size,
        unnormalized_actions=unnormalized_actions,
        cache_dir=cache_dir,
        oxe=oxe,
        keep_all_steps=keep_all_steps,
    )


__all__ = [
    "FORMATS",
    "IMAGE_PREFIX",
    "BatchSampler",
    "DatasetFormat",
    "FrameReader",
    "TrainingDataset",
    "detect_format",
    "is_rlds",
    "normalize_mask",
    "open_dataset",
    "parse_unnormalized",
]
