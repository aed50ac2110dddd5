"""collect -> train -> eval through the `vlaforge` command, and `vlaforge demo` on a tiny setting."""

import hashlib
import json
from pathlib import Path

import pytest

from vlaforge.cli import main

TASK = "button-press-topdown-v3"


@pytest.mark.slow
def test_collect_train_eval_cli(tmp_path, report_parser, capsys):
    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "eval"
    main(["collect", "--tasks", TASK, "--episodes", "2", "--out", str(data), "--image-size", "48",
          "--workers", "0", "--max-steps", "200"])  # fmt: skip
    main(["train", "--dataset", str(data), "--out", str(run), "--preset", "tiny", "--head", "chunk",
          "--steps", "3", "--batch-size", "4", "--log-every", "1"])  # fmt: skip
    capsys.readouterr()
    main(["eval", "--policy", str(run / "last"), "--tasks", TASK, "--episodes", "2", "--out", str(out),
          "--workers", "2", "--max-steps", "30", "--videos", "2", "--seed", "1000"])  # fmt: skip
    printed = capsys.readouterr().out
    assert TASK in printed and "overall" in printed and str(out / "report.html") in printed

    info = json.loads((out / "eval_info.json").read_text())
    assert [e["episode"] for e in info["episodes"]] == [0, 1]
    for ep in info["episodes"]:
        assert set(ep) == {"task", "episode", "instruction", "seed", "success", "steps", "video"}
        assert ep["task"] == TASK and isinstance(ep["success"], bool) and 1 <= ep["steps"] <= 30
    agg = info["aggregates"]
    assert set(agg) == {"per_task", "per_group", "overall", "untrained"} and agg["untrained"] is None
    assert info["trained_on"] == {TASK: True} and info["tasks_rule"] == "given"
    for r in (agg["per_task"][TASK], agg["per_group"]["easy"], agg["overall"]):
        assert set(r) == {"n", "successes", "rate", "ci_low", "ci_high"} and r["n"] == 2
        assert 0 <= r["ci_low"] <= r["rate"] <= r["ci_high"] <= 1
    proto = info["protocol"]
    weights = Path(proto["checkpoint"]["resolved"]) / "model.safetensors"
    assert proto["checkpoint"]["model_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert proto["cameras"] == ["corner2"] and proto["image_size"] == 48
    assert proto["max_steps"] == 30 and proto["seed"] == 1000 and proto["instructions"] == "train"
    config = json.loads((run / "last" / "config.json").read_text())
    assert proto["execute_steps"] == config["chunk_size"]
    assert proto["wall_time_s"] > 0
    for key in ("vlaforge", "metaworld", "mujoco", "torch", "numpy", "python"):
        assert proto["versions"][key]
    # Both episodes were recorded; with 2 videos per task both are kept, and both are in the page.
    assert all(e["video"] for e in info["episodes"])
    r = report_parser(out / "report.html")
    assert len(r["videos"]) == 2 and all(
        v["frames"] == e["steps"] + 1 for v, e in zip(r["videos"], info["episodes"])
    )
    assert TASK in r["text"] and "overall" in r["text"]


@pytest.mark.slow
def test_demo_runs_and_skips_finished_stages(tmp_path, capsys):
    from vlaforge.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        tasks=TASK, episodes=2, steps=2, eval_episodes=1, out=str(tmp_path / "demo"), device="cpu",
        workers=0, image_size=32, batch_size=4, max_steps=15, videos=1, save_every=2,
    )  # fmt: skip
    first = run_demo(cfg)
    printed = capsys.readouterr().out
    assert "random:" in printed and "report:" in printed
    root = tmp_path / "demo"
    for sub in (
        "data/meta/info.json",
        "run/last/model.safetensors",
        "eval/report.html",
        "eval-random/report.html",
    ):
        assert (root / sub).exists(), sub
    assert (
        first["random"].info["protocol"]["image_size"] == first["policy"].info["protocol"]["image_size"] == 32
    )
    summary = json.loads((root / "demo_summary.json").read_text())
    assert summary["policy"]["n"] == summary["random"]["n"] == 1
    # Second run: data and training are reused.
    run_demo(cfg)
    printed = capsys.readouterr().out
    assert "already collected; skipping" in printed and "already trained; skipping" in printed
