"""Instruction suites: which words each evaluation episode is given, beside the training instruction.

An evaluation runs one or more suites on the same episodes (same tasks, seeds, scenes), each with its own
rate and Wilson interval (`EvalConfig.instructions`):

- `train`: the task's training instruction (the first column, what `--compare` and the overall rate use);
- `heldout`: the env's held-out paraphrases, never trained on, cycled by episode index;
- `distractor`, `word-order`, `typo`: the training instruction perturbed by `perturb` (rules below), a
  function of (the evaluation seed, task, episode) alone;
- `custom`: phrasings from a JSON file {task: [phrasing, ...]}, cycled by episode index.

`--instructions` takes `both` (train + heldout, the default), `perturb` (train, heldout and the three
perturbations), `train` or `heldout` alone, or the path of a JSON file (train + custom).

Perturbation rules (each draws from numpy's PCG64 seeded with [PERTURB_STREAM, rule id, episode seed]):
- distractor: `N_DISTRACTORS` words from `DISTRACTORS` (drawn with replacement) are inserted, one at a
  time, each before a word position drawn uniformly from 0..len(words) (len: appended at the end);
- word-order: one pair of adjacent words, drawn uniformly, swaps places (a one-word instruction stays);
- typo: `N_TYPOS` distinct words of at least 3 letters are drawn uniformly (the same word again when too
  few) and one edit applied to each at a uniformly drawn letter: `swap` (with the next letter), `drop` (deleted) or `double` (written twice).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.errors import InputError

SUITES = ("train", "heldout", "distractor", "word-order", "typo", "custom")
PERTURBATIONS = ("distractor", "word-order", "typo")
MODES = {
    "both": ("train", "heldout"),
    "perturb": ("train", "heldout", *PERTURBATIONS),
    "train": ("train",),
    "heldout": ("heldout",),
}
ABOUT = {
    "train": "the training instruction",
    "heldout": "held-out paraphrases, never seen in training",
    "distractor": "training instruction with distractor words inserted",
    "word-order": "training instruction with two adjacent words swapped",
    "typo": "training instruction with typos (letters swapped, dropped or doubled)",
    "custom": "phrasings from a JSON file",
}
DISTRACTORS = ("carefully", "slowly", "gently", "okay", "then", "quickly", "really", "just")
N_DISTRACTORS = 2
N_TYPOS = 2
TYPO_EDITS = ("swap", "drop", "double")
PERTURB_STREAM = 0x50455254  # "PERT"


def _rng(rule: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([PERTURB_STREAM, PERTURBATIONS.index(rule), int(seed) & 0xFFFFFFFF])


def add_distractors(text: str, seed: int) -> str:
    """`text` with `N_DISTRACTORS` distractor words inserted at drawn positions (module docstring)."""
    rng, words = _rng("distractor", seed), text.split()
    for _ in range(N_DISTRACTORS):
        word = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
        words.insert(int(rng.integers(len(words) + 1)), word)
    return " ".join(words)


def swap_words(text: str, seed: int) -> str:
    """`text` with one drawn pair of adjacent words swapped."""
    rng, words = _rng("word-order", seed), text.split()
    if len(words) < 2:
        return text
    i = int(rng.integers(len(words) - 1))
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def add_typos(text: str, seed: int) -> str:
    """`text` with `N_TYPOS` typos, each in a drawn word of >= 3 letters (module docstring)."""
    rng, words = _rng("typo", seed), text.split()
    long = [k for k, w in enumerate(words) if len(w) >= 3]
    if not long:
        return text
    # distinct words while there are enough, so that one typo never undoes another
    picks = rng.permutation(long)[:N_TYPOS] if len(long) >= N_TYPOS else [long[0]] * N_TYPOS
    for k in picks:
        k = int(k)
        w = words[k]
        edit = TYPO_EDITS[int(rng.integers(len(TYPO_EDITS)))]
        if edit == "swap":
            j = int(rng.integers(len(w) - 1))
            words[k] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
        else:
            j = int(rng.integers(len(w)))
            words[k] = w[:j] + w[j + 1 :] if edit == "drop" else w[: j + 1] + w[j:]
    return " ".join(words)


PERTURB = {"distractor": add_distractors, "word-order": swap_words, "typo": add_typos}


def perturb(rule: str, text: str, seed: int) -> str:
    """The perturbation `rule` ("distractor", "word-order", "typo") of `text` under `seed`."""
    return PERTURB[rule](text, seed)


def parse_mode(value: str) -> tuple[tuple[str, ...], str | None]:
    """(the suites, the JSON file or None) of an `--instructions` value."""
    value = str(value)
    if value in MODES:
        return MODES[value], None
    if value.endswith(".json") or Path(value).is_file():
        return ("train", "custom"), value
    close = difflib.get_close_matches(value, list(MODES), n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise InputError(
        f"--instructions {value!r}{hint} Use {', '.join(MODES)}, or a JSON file mapping tasks to phrasings."
    )


def load_phrasings(path: str | Path, spec: Any, tasks: list[str]) -> dict[str, list[str]]:
    """A JSON file {task: [phrasing, ...]} checked against the env: every evaluated task needs at least one
    phrasing (task names may leave out the env's suffix, e.g. "-v3")."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--instructions {path}: no such file (a JSON object {{task: [phrasing, ...]}})")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"--instructions {path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise InputError(f"--instructions {path}: expected a JSON object {{task: [phrasing, ...]}}")
    out: dict[str, list[str]] = {}
    for name, texts in raw.items():
        try:
            task = spec.check_task(str(name))
        except InputError as e:
            raise InputError(f"--instructions {path}: {e}") from None
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InputError(f"--instructions {path}: {name!r} must map to a list of strings")
        texts = [t.strip() for t in texts if t.strip()]
        if not texts:
            raise InputError(f"--instructions {path}: {name!r} has no phrasings (an empty list)")
        out[task] = texts
    missing = [t for t in tasks if t not in out]
    if missing:
        raise InputError(
            f"--instructions {path}: no phrasings for the evaluated task(s) {', '.join(missing)}; add them or "
            "choose the tasks with --tasks"
        )
    return out


def instruction_for(
    suite: str, spec: Any, task: str, episode: int, seed: int, custom: dict[str, list[str]] | None = None
) -> str:
    """The words episode `episode` (its `seed`: the episode seed) of `task` gets in `suite`."""
    if suite == "train":
        return spec.instruction(task, "train")
    if suite == "heldout":
        return spec.instruction(task, "heldout", episode)
    if suite in PERTURB:
        return perturb(suite, spec.instruction(task, "train"), seed)
    if suite == "custom":
        options = (custom or {})[task]
        return options[episode % len(options)]
    raise InputError(f"unknown instruction suite {suite!r}; use one of {SUITES}")
