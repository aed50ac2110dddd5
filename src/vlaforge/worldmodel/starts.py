"""`vlaforge worldmodel starts RUN --starts D[,D2...] --out NEW`: the same world model, starting its
episodes from other recorded scenes.

Inside a world model an evaluation starts from the real first frame (and state) of a held-out episode,
the one recorded at the evaluation's seed when there is one (`vlaforge worldmodel train --starts`). To
evaluate at other seeds (fresh scenes, a second look at a result) the model need not be trained again:
this writes a model directory NEW with RUN's weights, and its held-out episodes and starts rebuilt from
RUN's datasets plus the new start recordings. RUN's frame judge comes along (it does not depend on the
starts); a state predictor does not (its scene starts and calibration follow the held-out episodes):
train it again on NEW with `vlaforge worldmodel state`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vlaforge.atomic import atomic_dir, write_json
from vlaforge.errors import InputError
from vlaforge.worldmodel.config import WM_CONFIG, WM_WEIGHTS, model_dir


def with_starts(run: str, starts: str, out: str, overwrite: bool = False) -> Path:
    """Writes the world model `run` with the start recordings `starts` (a comma list) to `out`; returns
    `out`'s model directory (``out/last``)."""
    from safetensors.numpy import save_file

    from vlaforge.worldmodel.data import training_episodes
    from vlaforge.worldmodel.env import judge_dir
    from vlaforge.worldmodel.train import STARTS, episode_starts, heldout_entries

    root = model_dir(run)
    if not (root / WM_CONFIG).is_file():
        raise InputError(f"{run}: no {WM_CONFIG}; give a `vlaforge worldmodel train` run")
    paths = [p.strip() for p in starts.split(",") if p.strip()]
    if not paths:
        raise InputError(
            "--starts: give one or more LeRobot v3.0 datasets recorded with `vlaforge eval --record`"
        )
    cfg = json.loads((root / WM_CONFIG).read_text())
    cfg["starts"] = [str(Path(p).resolve()) for p in paths]
    eps = training_episodes(cfg)
    cfg["heldout"] = heldout_entries(eps)
    if Path(out).exists() and any(Path(out).iterdir()) and not overwrite:
        raise InputError(f"--out {out} exists; choose another directory or pass --overwrite")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "last").mkdir()
        write_json(tmp / "last" / WM_CONFIG, cfg)
        shutil.copyfile(root / WM_WEIGHTS, tmp / "last" / WM_WEIGHTS)
        save_file(episode_starts(eps), str(tmp / "last" / STARTS))
        if (judge_dir(root) / "judge.json").is_file():
            shutil.copytree(judge_dir(root), tmp / "judge")
    return Path(out) / "last"
