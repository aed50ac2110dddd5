"""Named training recipes: `vlaforge train --recipe NAME --dataset DIR --out RUN`.

A recipe is a set of `TrainConfig` values that together reproduce a result of vlaforge's. On the command
line it becomes the defaults of `vlaforge train`, so every flag given explicitly keeps its value; from
Python, `vlaforge.train.recipe_config(name, dataset=..., out=..., **changes)`. config.json records the
resolved values and the recipe's name, so a run says exactly what it trained with.

- `mt50` (CPU, the `tiny` preset): one language-conditioned policy for all 50 Meta-World tasks from
  `vlaforge collect --tasks mt50 --episodes 50 --image-size 64`. Flow-matching chunk head (the best of
  `bench/heads.py`), no random-shift augmentation, every task sampled equally often, AdamW at the
  preset's 1e-3 with 1,000 warm-up steps and a cosine decay to zero.
  Checkpoint selection: none. The run's last checkpoint is the one evaluated, so no evaluation seed
  ever influences which weights are reported. The recipe shifted images by up to 4 px (DrQ's 4 at 84 px,
  scaled) until MT10 showed what that costs with a fixed camera: the shift blurs where things are in the
  image (4 px is ~8 cm on the table at 64 px, more than reach's 5 cm), and without it the same data and
  budget went from 98/200 to 138/200 held-out episodes (docs/results.md). `--augment-shift 4` gives it back.
- `mt50-small` (one GPU, the `small` preset, ~40 M parameters at 128 px): the same recipe scaled up;
  collect the dataset with `--image-size 128`.
"""

from __future__ import annotations

import difflib
from typing import Any

from vlaforge.errors import InputError

RECIPES: dict[str, dict[str, Any]] = {
    "mt50": {
        "preset": "tiny",
        "head": "flow",
        "steps": 15_000,
        "batch_size": 64,
        "schedule": "cosine",
        "warmup_steps": 1_000,
        "augment_shift": 0,
        "balance": "tasks",
        "save_every": 2_000,
        "log_every": 100,
        "num_workers": 1,
        "device": "cpu",
    },
    "mt50-small": {
        "preset": "small",
        "head": "flow",
        "steps": 30_000,
        "batch_size": 128,
        "lr": 3e-4,
        "schedule": "cosine",
        "warmup_steps": 1_000,
        "augment_shift": 0,  # 8 px at 128 px before, off for the same reason (not measured at this size)
        "balance": "tasks",
        "save_every": 5_000,
        "log_every": 100,
        "num_workers": 2,
        "device": "cuda",
    },
}


def check_recipe(name: str) -> dict[str, Any]:
    """The values of recipe `name`; an unknown name is an error with a "did you mean"."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"unknown recipe {name!r}{hint} (known: {sorted(RECIPES)})")
    return dict(RECIPES[name])
