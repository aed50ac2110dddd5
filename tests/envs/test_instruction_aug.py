"""Instruction augmentation: the phrasings of every task never include a held-out paraphrase, and the draw
is a function of the seed alone."""

from __future__ import annotations

from collections import Counter

import pytest

from vlaforge.envs.phrasing import (
    KEEP_ORIGINAL,
    InstructionAug,
    expand,
    known_phrasings,
    normalize,
    task_phrasings,
)
from vlaforge.envs.registry import ENVS, get_env
from vlaforge.errors import InputError


def _all_tasks():
    return [(name, task) for name in ENVS for task in get_env(name).tasks]


def test_every_task_has_phrasings_and_none_is_held_out():
    pairs = _all_tasks()
    assert len(pairs) == 51  # the 50 Meta-World tasks and robosuite lift
    for name, task in pairs:
        spec = get_env(name)
        phrasings = task_phrasings(spec, task)
        assert phrasings[0] == spec.instructions[task]
        assert len(set(phrasings)) == len(phrasings) >= 20, (task, len(phrasings))
        heldout = {normalize(h) for h in spec.heldout_instructions[task]}
        said = {normalize(p) for p in phrasings}
        assert not heldout & said, (task, heldout & said)
        # stricter: no phrasing contains a held-out paraphrase (e.g. "please" + a held-out one)
        for p in said:
            assert not any(f" {h} " in f" {p} " for h in heldout), (task, p)


def test_normalize_and_expand():
    assert normalize("Push the coffee-maker's button,  NOW!") == "push the coffee maker s button now"
    assert expand("[push|slide] the drawer [in|]") == [
        "push the drawer in",
        "push the drawer",
        "slide the drawer in",
        "slide the drawer",
    ]
    with pytest.raises(InputError, match="unbalanced"):
        expand("[push the drawer")


def test_a_held_out_phrasing_is_refused():
    spec = get_env("metaworld")
    task = "drawer-close-v3"
    leaky = type("Spec", (), {})()
    leaky.name, leaky.instructions = "metaworld", spec.instructions
    leaky.heldout_instructions = spec.heldout_instructions
    leaky.phrasings = {task: ["[close|shut] the drawer"]}  # "shut the drawer" is held out
    with pytest.raises(ValueError, match="shut the drawer"):
        task_phrasings(leaky, task)


def test_draws_are_deterministic_given_the_seed():
    table = known_phrasings()
    texts = ["close the drawer", "open the drawer", "not an env instruction", "lift the red cube"] * 50
    aug = InstructionAug(texts)
    first = aug.draw(texts, seed=123)
    assert aug.draw(texts, seed=123) == first
    assert aug.draw(texts, seed=124) != first
    assert first[2::4] == ["not an env instruction"] * 50  # unknown words stay as they are
    for original, drawn in zip(texts, first, strict=True):
        if original in table:
            assert drawn in table[original]
    # about KEEP_ORIGINAL of the known ones keep their words; the rest spread over many phrasings
    known = [(o, d) for o, d in zip(texts, first, strict=True) if o in table]
    kept = sum(o == d for o, d in known) / len(known)
    assert abs(kept - KEEP_ORIGINAL) < 0.12
    assert len(Counter(d for o, d in known if o == "close the drawer")) >= 15
    batch = {"instruction": texts[:4], "state": 1}
    assert aug(batch, 7) == {"instruction": aug.draw(texts[:4], 7), "state": 1}


def test_word_dropout_keeps_words_in_order():
    texts = ["open the drawer"] * 200
    aug = InstructionAug(texts, keep=0.0, dropout=0.3)
    drawn = aug.draw(texts, seed=5)
    assert drawn == aug.draw(texts, seed=5)
    full = set(known_phrasings()["open the drawer"])
    shortened = [d for d in drawn if d not in full]
    assert 0.5 < len(shortened) / len(drawn) < 0.95  # 1 - 0.7^words: most phrasings lose a word
    for d in drawn:  # every drawn text is a phrasing with some words left out, in order
        assert d and any(_subsequence(d.split(), p.split()) for p in full)


def _subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(w in it for w in short)
