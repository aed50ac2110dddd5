"""The learning curve's running rate pools the episodes of the last iterations."""

import pytest

from vlaforge.rl.loop import plot_curve, running_success, task_counts


def test_running_success_pools_episodes_not_rates():
    rows = [
        {"success_rate": 0.5, "episodes": 2},  # 1 of 2
        {"success_rate": 1.0, "episodes": 2},  # 2 of 2
        {"success_rate": 0.0, "episodes": 4},  # 0 of 4
    ]
    # window 2: 1/2; (1 + 2) / 4; (2 + 0) / 6 (a mean of the rates would say 0.5 for the last)
    assert running_success(rows, 2) == pytest.approx([0.5, 0.75, 1 / 3])
    assert running_success(rows, 10) == pytest.approx([0.5, 0.75, 3 / 8])


def test_curve_is_drawn_from_metrics(tmp_path):
    import json

    rows = [
        {
            "iteration": i,
            "success_rate": i / 10,
            "episodes": 4,
            "total_env_steps": 100 * i,
            "total_seconds": i,
        }
        for i in range(1, 11)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_curve(tmp_path)
    assert out == tmp_path / "curve.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_task_counts_and_rates():
    episodes = [
        {"task": "a", "success": True},
        {"task": "b", "success": False},
        {"task": "a", "success": False},
        {"task": "a", "success": True},
    ]
    assert task_counts(episodes) == {"a": [2, 3], "b": [0, 1]}
    rows = [
        {"success_rate": 0.5, "episodes": 4, "task_success": {"a": [2, 3], "b": [0, 1]}},
        {"success_rate": 0.25, "episodes": 4, "task_success": {"a": [0, 1], "b": [1, 3]}},
        {"success_rate": 0.0, "episodes": 2},  # a row written before per-task counts: no episodes
    ]
    # window 2, task a: 2/3; (2 + 0) / (3 + 1); 0 / 1 (the row without counts adds nothing)
    assert running_success(rows, 2, "a") == pytest.approx([2 / 3, 0.5, 0.0])
    assert running_success(rows, 2, "b") == pytest.approx([0.0, 0.25, 1 / 3])


def test_curve_has_a_per_task_panel_with_several_tasks(tmp_path):
    import json

    from PIL import Image

    rows = [
        {
            "iteration": i, "success_rate": 0.5, "episodes": 4, "total_env_steps": 100 * i, "total_seconds": i,
            "task_success": {"a": [2, 2], "b": [0, 2]},
        }
        for i in range(1, 6)
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    three = Image.open(plot_curve(tmp_path)).size
    for r in rows:
        r["task_success"] = {"a": [2, 4]}
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    two = Image.open(plot_curve(tmp_path)).size
    assert three[0] == 3 * two[0] // 2 and three[1] == two[1]
