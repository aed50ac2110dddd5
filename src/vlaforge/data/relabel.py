"""Rewriting a dataset with new actions: the episode choice and the copy loop that `vlaforge idm label` and
`vlaforge latent label` share.

A relabelled dataset keeps everything of its source but what the labeller replaces: the camera videos
(decoded and re-encoded at their own size), the state and other per-frame columns, the instructions and
``meta/info.json["vlaforge"]``. The labeller gives the new features (at least ``action`` and
``action.provenance``) and, per episode, their values; `relabel` does the rest.

Torch-free at import (the config modules re-export `parse_episodes` for the CLI's torch-free path); the
writer and its pyarrow dependencies load when `relabel` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlaforge.errors import InputError

if TYPE_CHECKING:
    import numpy as np


def parse_episodes(spec: str | None, num_episodes: int) -> list[int]:
    """``A:B``, ``i,j,k`` or ``@FILE`` (a file holding either) -> sorted episode indices in range."""
    if spec is None or str(spec).strip() == "":
        return list(range(num_episodes))
    spec = str(spec).strip()
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise InputError(f"--episodes {spec!r}: no file {path}")
        spec = path.read_text().strip()
    try:
        if ":" in spec:
            a, _, b = spec.partition(":")
            chosen = list(range(int(a or 0), int(b) if b else num_episodes))
        else:
            chosen = sorted({int(x) for x in spec.replace("\n", ",").split(",") if x.strip()})
    except ValueError as e:
        raise InputError(f"--episodes {spec[:60]!r}: give A:B or a comma list of episode indices") from e
    bad = [e for e in chosen if not 0 <= e < num_episodes]
    if bad:
        raise InputError(f"--episodes: {bad[:5]} out of range (the dataset has {num_episodes} episodes)")
    if not chosen:
        raise InputError(f"--episodes {spec!r}: no episode chosen")
    return chosen


def kept_features(src: Any, replaced: Iterable[str]) -> dict[str, dict]:
    """`src`'s features minus LeRobot's bookkeeping columns and the `replaced` ones, without ``info``."""
    from vlaforge.data.lerobot_format import DEFAULT_FEATURES

    drop = set(replaced)
    return {
        key: {kk: vv for kk, vv in ft.items() if kk != "info"}
        for key, ft in src.features.items()
        if key not in DEFAULT_FEATURES and key not in drop
    }


def relabel(
    src: Any,
    out: str | Path,
    features: dict[str, dict],
    extra: dict[str, Any],
    episodes: list[int],
    labels: Callable[[int, range], dict[str, np.ndarray]],
    desc: str,
    overwrite: bool = False,
) -> None:
    """Writes `out`: `src`'s `episodes` in order, each with `labels(e, frames)`'s columns in place of the
    source's (`frames`: the episode's global frame range); every other feature is copied from `src`.

    `features` are the output's (`kept_features` + the labeller's); `extra` is stored as
    ``meta/info.json["vlaforge"]``.
    """
    import numpy as np
    from tqdm.auto import tqdm

    from vlaforge.data.lerobot_writer import LeRobotWriter

    video_keys = [key for key, ft in features.items() if ft["dtype"] == "video"]
    columns = [key for key in features if key not in video_keys and key in src._columns]  # noqa: SLF001
    with LeRobotWriter(
        out,
        fps=src.fps,
        features=features,
        robot_type=str(src.info.get("robot_type") or "unknown"),
        overwrite=overwrite,
        extra_info={"vlaforge": extra},
    ) as w:
        for e in tqdm(episodes, desc=desc, unit="episode"):
            r = src.episode_frames(e)
            new = labels(e, r)
            frames = {key: np.asarray(src.video_frames(key)[r.start : r.stop]) for key in video_keys}
            frames.update({key: src.column(key)[r.start : r.stop] for key in columns if key not in new})
            frames.update(new)
            w.add_episode(src.tasks[int(src.task_indices()[r.start])], frames)


__all__ = ["kept_features", "parse_episodes", "relabel"]
