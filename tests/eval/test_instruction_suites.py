"""Instruction suites in evaluation: perturbation rules on known inputs, phrasings from a JSON file, and
every suite on the same episodes in eval_info.json."""

from __future__ import annotations

import json

import pytest

from vlaforge.envs.base import episode_seed
from vlaforge.envs.registry import get_env
from vlaforge.errors import InputError
from vlaforge.eval.run import EvalConfig, evaluate
from vlaforge.eval.suites import add_distractors, add_typos, load_phrasings, parse_mode, swap_words


def test_perturbations_on_known_inputs():
    text = "turn the faucet on"
    # constants of the documented rules (vlaforge.eval.suites) under seed 7
    assert add_typos(text, 7) == "trn tthe faucet on"  # "turn": a letter dropped; "the": one doubled
    assert swap_words(text, 7) == "the turn faucet on"
    assert add_distractors(text, 7) == "carefully turn the gently faucet on"
    for seed in range(50):
        typo = add_typos(text, seed)
        assert typo != text and abs(len(typo) - len(text)) <= 2
        assert (
            sorted(swap_words(text, seed).split()) == sorted(text.split()) != swap_words(text, seed).split()
        )
        words = add_distractors(text, seed).split()
        assert len(words) == 6 and [w for w in words if w in text.split()] == text.split()
    assert add_typos(text, 3) == add_typos(text, 3) and swap_words("reach", 1) == "reach"


def test_instruction_file_errors(tmp_path):
    spec, tasks = get_env("metaworld"), ["drawer-close-v3"]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json: not valid JSON"):
        load_phrasings(bad, spec, tasks)
    bad.write_text(json.dumps({"drawer-clsoe": ["x"]}))
    with pytest.raises(InputError, match="did you mean 'drawer-close-v3'"):
        load_phrasings(bad, spec, tasks)
    bad.write_text(json.dumps({"drawer-close": []}))
    with pytest.raises(InputError, match="no phrasings"):
        load_phrasings(bad, spec, tasks)
    bad.write_text(json.dumps({"reach": ["go"]}))
    with pytest.raises(InputError, match="no phrasings for the evaluated task"):
        load_phrasings(bad, spec, tasks)
    with pytest.raises(InputError, match="did you mean 'perturb'"):
        parse_mode("pertrub")


@pytest.mark.sim
def test_phrasings_from_a_file_and_two_columns(tmp_path, tiny_policy):
    policy = tiny_policy(tmp_path / "run" / "last", get_env("metaworld").embodiment(("corner2",), 32))
    words = tmp_path / "words.json"
    words.write_text(json.dumps({"drawer-close": ["shove the drawer in", "Close it!"]}))
    kw = {"tasks": "drawer-close-v3", "episodes": 3, "workers": 0, "max_steps": 2, "videos": 0}
    info = evaluate(EvalConfig(policy=str(policy), out=tmp_path / "f", instructions=str(words), **kw)).info
    suites = info["instruction_suites"]
    assert list(suites) == ["train", "custom"] and info["protocol"]["instruction_suites"] == [
        "train",
        "custom",
    ]
    assert [e["instruction"] for e in suites["custom"]["episodes"]] == [
        "shove the drawer in", "Close it!", "shove the drawer in"
    ]  # fmt: skip
    assert [e["instruction"] for e in info["episodes"]] == ["close the drawer"] * 3

    info = evaluate(EvalConfig(policy=str(policy), out=tmp_path / "b", **kw)).info  # default: both
    train, heldout = info["instruction_suites"]["train"], info["instruction_suites"]["heldout"]
    seeds = [episode_seed(1000, "drawer-close-v3", i) for i in range(3)]
    assert [e["seed"] for e in info["episodes"]] == seeds == [e["seed"] for e in heldout["episodes"]]
    assert [e["instruction"] for e in heldout["episodes"]] == get_env("metaworld").heldout_instructions[
        "drawer-close-v3"
    ]
    for r, eps in ((train["overall"], info["episodes"]), (heldout["overall"], heldout["episodes"])):
        assert r["n"] == 3 and r["successes"] == sum(e["success"] for e in eps)
        assert 0 <= r["ci_low"] <= r["rate"] <= r["ci_high"] <= 1
    assert train["overall"] == info["aggregates"]["overall"]
    page = (tmp_path / "b" / "report.html").read_text()
    assert 'id="suites"' in page and 'id="suite-heldout"' in page
    table = evaluate(EvalConfig(policy=str(policy), out=tmp_path / "t", instructions="train", **kw)).table()
    assert "heldout" not in table and list(
        json.loads((tmp_path / "t" / "eval_info.json").read_text())["instruction_suites"]
    ) == ["train"]
