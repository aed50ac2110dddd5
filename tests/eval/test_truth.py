"""Evaluation shows what was measured: default tasks from the checkpoint, untrained tasks apart, failures
on video, a baseline beside the policy, held-out instructions named, no silent overwrite."""

from __future__ import annotations

import json

import pytest

from vlaforge.envs.registry import get_env
from vlaforge.errors import InputError
from vlaforge.eval.run import EvalConfig, _choose_videos, _make_jobs, evaluate, format_table

pytestmark = pytest.mark.sim

TRAINED = ["button-press-topdown-v3", "drawer-close-v3"]


@pytest.fixture
def checkpoint(tmp_path, tiny_policy):
    """An untrained tiny policy whose config.json says it was trained on TRAINED in Meta-World."""
    path = tiny_policy(tmp_path / "run" / "last", get_env("metaworld").embodiment(("corner2",), 32))
    config = json.loads((path / "config.json").read_text())
    config["training_data"] = {
        "dataset": "data",
        "env": "metaworld",
        "episodes": [{"task": t, "seed": k} for t in reversed(TRAINED) for k in range(2)],
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


def _cfg(policy, out, **kw) -> EvalConfig:
    kw = {"episodes": 2, "workers": 0, "max_steps": 3, "videos": 0, **kw}
    return EvalConfig(policy=str(policy), out=out, **kw)


def test_default_tasks_are_the_trained_ones(checkpoint, tmp_path):
    cfg = _cfg(checkpoint, tmp_path / "e")
    order = get_env("metaworld").tasks
    assert cfg.tasks == sorted(TRAINED, key=order.index) and cfg.tasks_rule == "trained"
    assert _cfg("random", tmp_path / "r").tasks_rule == "env-default"
    assert _cfg(checkpoint, tmp_path / "g", tasks="reach-v3").tasks_rule == "given"


def test_untrained_tasks_are_marked_and_kept_apart(checkpoint, tmp_path, capsys):
    tasks = [TRAINED[0], "reach-v3"]
    result = evaluate(_cfg(checkpoint, tmp_path / "e", tasks=",".join(tasks)))
    printed = capsys.readouterr().out
    assert "warning: 1 of 2 tasks" in printed and "reach-v3" in printed
    info = json.loads((tmp_path / "e" / "eval_info.json").read_text())
    assert info["trained_on"] == {TRAINED[0]: True, "reach-v3": False} and info["tasks_rule"] == "given"
    agg = info["aggregates"]
    assert agg["overall"]["n"] == 2 and agg["untrained"]["n"] == 2  # overall: trained tasks only
    table = result.table()
    assert "reach-v3 (untrained)" in table and "untrained tasks" in table
    page = (tmp_path / "e" / "report.html").read_text()
    assert "untrained" in page and "overall (trained tasks)" in page
    # A baseline: training tasks unknown, nothing guessed.
    base = evaluate(_cfg("random", tmp_path / "r", tasks="reach-v3"))
    assert base.info["trained_on"] == {"reach-v3": None} and base.info["aggregates"]["untrained"] is None


def test_videos_include_a_late_failure(tmp_path):
    cfg = _cfg("random", tmp_path / "e", tasks="reach-v3", episodes=6, videos=2)
    jobs, _ = _make_jobs(cfg, get_env(), ["reach-v3"], cfg.out)
    assert all(j.video for j in jobs)  # every episode is recorded, so a failure late in the task is found
    recs = [{"episode": i, "success": i < 5, "video": f"v{i}"} for i in range(6)]
    assert _choose_videos(recs, 2) == {0, 5}


def test_compare_puts_the_baseline_beside_the_policy(checkpoint, tmp_path):
    base = tmp_path / "random"
    evaluate(_cfg("random", base, tasks=TRAINED[0]))
    result = evaluate(_cfg(checkpoint, tmp_path / "e", tasks=TRAINED[0], compare=str(base)))
    assert result.info["compare"]["policy"] == "random"
    page = (tmp_path / "e" / "report.html").read_text()
    assert 'id="compare"' in page and 'id="vs"' in page
    assert "vs random" in result.table()
    with pytest.raises(InputError, match="measured other episodes"):
        evaluate(_cfg(checkpoint, tmp_path / "f", tasks=TRAINED[0], seed=7, compare=str(base)))
    with pytest.raises(InputError, match="no eval_info.json"):
        evaluate(_cfg(checkpoint, tmp_path / "g", tasks=TRAINED[0], compare=str(tmp_path)))


def test_heldout_instructions_are_named(tmp_path):
    result = evaluate(_cfg("random", tmp_path / "e", tasks="reach-v3", instructions="heldout"))
    note = "held-out instructions: paraphrases never seen in training"
    assert result.info["protocol"]["instructions_note"] == note
    assert note in format_table(result.info).splitlines()[0]
    page = (tmp_path / "e" / "report.html").read_text()
    assert 'id="heldout"' in page and note in page and "held-out instruction evaluation" in page


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "e"
    evaluate(_cfg("random", out, tasks="reach-v3"))
    with pytest.raises(InputError, match="already holds an evaluation; use --overwrite to replace it"):
        evaluate(_cfg("random", out, tasks="reach-v3", seed=5))
    assert json.loads((out / "eval_info.json").read_text())["protocol"]["seed"] == 1000
    evaluate(_cfg("random", out, tasks="reach-v3", seed=5, overwrite=True))
    assert json.loads((out / "eval_info.json").read_text())["protocol"]["seed"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["e"]  # no staging directory left behind


def test_device_defaults_to_auto(tmp_path):
    cfg = _cfg("random", tmp_path / "e", tasks="reach-v3")
    assert cfg.device == "auto"
    info = evaluate(cfg).info
    assert info["protocol"]["device"] in ("cpu", "cuda")
