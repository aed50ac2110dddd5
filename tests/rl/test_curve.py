"""The learning curve's running rate pools the episodes of the last iterations."""

import pytest

from vlaforge.rl.loop import plot_curve, running_success


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
