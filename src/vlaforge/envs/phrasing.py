"""Instruction phrasings: other ways to say each training instruction, and the augmentation that draws them.

Every environment lists, per task, patterns of phrasings next to its instructions (`EnvSpec.phrasings`;
``[a|b]`` groups expand to each choice, `expand`). `task_phrasings` expands them, adds the training
instruction itself and wraps each in task-independent frames (`FRAMES`: "please ...", "can you ..."), so
a policy learns that the words around the task do not change it. `InstructionAug` draws one phrasing per
training sample.

Held-out paraphrases (`EnvSpec.heldout_instructions`) are never a phrasing: the environments' data is
written to avoid them and `task_phrasings` refuses any phrasing equal to, or containing, one (both compared
after `normalize`), so evaluation with held-out instructions measures words the policy never trained on.

Draws come from a generator seeded by (seed, rank, step, micro-batch), like the image augmentation
(`vlaforge.train.augment`): a pure function of the training position, the same after an exact resume.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlaforge.errors import InputError

# Task-independent frames around a phrasing ("{}" is the phrasing). Short, since every byte of the prompt
# is a token of the byte-level LM (a longer prompt is a slower training step).
FRAMES: tuple[str, ...] = ("{}", "please {}", "{} please", "now {}", "can you {}", "robot, {}", "go {}")
# The chance a sample keeps its instruction word for word; otherwise a phrasing is drawn uniformly.
KEEP_ORIGINAL = 0.25
# A stream id so the draws never coincide with another use of the run seed ("LANG").
PHRASING_STREAM = 0x4C414E47

_GROUP = re.compile(r"\[([^\[\]]*)\]")


def normalize(text: str) -> str:
    """Lower case, punctuation removed (apostrophes and hyphens too), whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def expand(pattern: str) -> list[str]:
    """Every phrasing of `pattern`: each ``[a|b|c]`` group replaced by each of its choices (an empty choice
    leaves the group out), in order, spaces collapsed.

    >>> expand("[push|slide] the drawer [in|]")
    ['push the drawer in', 'push the drawer', 'slide the drawer in', 'slide the drawer']
    """
    if pattern.count("[") != pattern.count("]"):
        raise InputError(f"unbalanced [ ] in the phrasing pattern {pattern!r}")
    parts = _GROUP.split(pattern)  # text, group, text, group, ..., text
    options = [[p] if i % 2 == 0 else p.split("|") for i, p in enumerate(parts)]
    return [" ".join("".join(choice).split()) for choice in itertools.product(*options)]


def task_phrasings(spec: Any, task: str, frames: Sequence[str] = FRAMES) -> list[str]:
    """The phrasings of `task` in env `spec`: its training instruction first, then its patterns expanded,
    each in every frame; without duplicates.

    Raises:
        ValueError: a phrasing equals or contains one of the task's held-out paraphrases (a data bug).
    """
    base = [spec.instructions[task]]
    for pattern in spec.phrasings.get(task, []):
        base.extend(expand(pattern))
    out: list[str] = []
    for frame in frames:
        for text in base:
            phrase = frame.format(text)
            if phrase not in out:
                out.append(phrase)
    heldout = [normalize(h) for h in spec.heldout_instructions.get(task, [])]
    for phrase in out:
        padded = f" {normalize(phrase)} "
        leak = next((h for h in heldout if f" {h} " in padded), None)
        if leak is not None:
            raise ValueError(f"{spec.name} {task}: the phrasing {phrase!r} contains the held-out {leak!r}")
    return out


@functools.cache
def known_phrasings() -> dict[str, tuple[str, ...]]:
    """Training instruction -> its phrasings, over every registered environment's tasks."""
    from vlaforge.envs.registry import ENVS, get_env

    table: dict[str, tuple[str, ...]] = {}
    for name in ENVS:
        spec = get_env(name)
        for task in spec.tasks:
            table.setdefault(spec.instructions[task], tuple(task_phrasings(spec, task)))
    return table


class InstructionAug:
    """Replaces each sample's instruction by one of its phrasings (`known_phrasings`); an instruction no
    environment knows stays as it is.

    Args:
        instructions: the dataset's instructions; those with phrasings are augmented.
        keep: the chance a sample keeps its instruction word for word.
        dropout: the chance each word of a drawn phrasing is left out (word dropout; at least one word
            stays); 0 keeps every word.
    """

    def __init__(self, instructions: Sequence[str], keep: float = KEEP_ORIGINAL, dropout: float = 0.0):
        table = known_phrasings()
        self.table = {t: table[t] for t in instructions if t in table}
        self.keep, self.dropout = float(keep), float(dropout)

    def __bool__(self) -> bool:
        return bool(self.table)

    def draw(self, instructions: Sequence[str], seed: int) -> list[str]:
        """One phrasing per instruction, a function of (`instructions`, `seed`) alone."""
        rng = np.random.default_rng([PHRASING_STREAM, int(seed) & 0xFFFFFFFFFFFFFFFF])
        u, pick = rng.random(len(instructions)), rng.random(len(instructions))
        out = []
        for text, keep, r in zip(instructions, u, pick, strict=True):
            options = self.table.get(text)
            if options is None or keep < self.keep:
                out.append(text)
                continue
            phrase = options[1 + int(r * (len(options) - 1))]
            if self.dropout > 0:
                words = phrase.split()
                kept = [w for w, u in zip(words, rng.random(len(words)), strict=True) if u >= self.dropout]
                phrase = " ".join(kept or words[:1])
            out.append(phrase)
        return out

    def __call__(self, batch: dict[str, Any], seed: int) -> dict[str, Any]:
        if not self.table or "instruction" not in batch:
            return batch
        return {**batch, "instruction": self.draw(list(batch["instruction"]), seed)}
