"""The HTML report is one self-contained file with the table, the chart and embedded videos."""

import json

import numpy as np

from vlaforge.eval.report import write_report
from vlaforge.eval.rollout import write_mp4
from vlaforge.eval.run import format_table
from vlaforge.eval.stats import aggregate


def _info(tmp_path):
    rng = np.random.default_rng(0)
    # A moving square, 30 frames of 48 px: small but a real video.
    frames = []
    for t in range(30):
        img = np.full((48, 48, 3), 40, np.uint8)
        img[10:20, t : t + 10] = (230, 80, 40)
        frames.append(img)
    write_mp4(frames, tmp_path / "videos" / "reach-v3_ep000.mp4", fps=80.0)
    difficulty = {"reach-v3": "easy", "drawer-close-v3": "easy", "pick-place-v3": "hard"}
    episodes = []
    for task in difficulty:
        for i in range(4):
            episodes.append(
                {
                    "task": task,
                    "episode": i,
                    "instruction": f"do <{task}> & more",
                    "seed": int(rng.integers(1 << 30)),
                    "success": bool(i % 2 == 0 or task == "reach-v3"),
                    "steps": 40 + i,
                    "video": "videos/reach-v3_ep000.mp4" if (task, i) == ("reach-v3", 0) else None,
                }
            )
    return {
        "policy": "runs/x/last",
        "date": "2025-01-01T00:00:00+00:00",
        "protocol": {
            "versions": {"vlaforge": "0.1.0", "python": "3.11"},
            "checkpoint": {"path": "runs/x/last", "resolved": "/abs/runs/x/step", "model_sha256": "ab" * 32},
            "cameras": ["corner2"],
            "image_size": 48,
            "max_steps": 100,
            "execute_steps": 8,
            "episodes_per_task": 4,
            "seed": 0,
            "seed_rule": "episode_seed(seed, task, i)",
            "success": "info['success'] at any step",
            "instructions": "train",
            "device": "cpu",
            "workers": 2,
            "wall_time_s": 12.5,
        },
        "tasks": list(difficulty),
        "groups": difficulty,
        "instructions": {t: [f"do <{t}> & more"] for t in difficulty},
        "aggregates": aggregate(episodes, difficulty),
        "episodes": episodes,
    }


def test_report_is_self_contained(tmp_path, report_parser):
    info = _info(tmp_path)
    path = write_report(info, tmp_path)
    r = report_parser(path)
    assert len(r["videos"]) == 1
    assert r["videos"][0]["frames"] == 30 and r["videos"][0]["pix_fmt"] == "yuv420p"
    assert r["videos"][0]["codec"] in ("h264", "mpeg4")
    # The chart: inline SVG naming every task; no XML prolog inside the HTML.
    assert any(t == "svg" for t, _ in r["tags"])
    assert "<?xml" not in r["html"]
    svg = r["html"][r["html"].index("<svg") : r["html"].index("</svg>")]
    for task in info["tasks"]:
        assert task in svg
    # The table: one row per task with successes/n, then the groups and overall.
    text = r["text"]
    assert "4/4" in text and "2/4" in text
    assert "all easy tasks" in text and "all hard tasks" in text and "overall" in text
    assert "8/12" in text  # overall successes: 4 + 2 + 2
    # The headline number, and the instruction escaped (no raw '<reach-v3>' tag leaking into the page).
    assert "67%" in text
    assert "do <reach-v3> & more" in text
    assert not any(t == "reach-v3>" for t, _ in r["tags"])
    assert "ab" * 32 in text


def test_table_text(tmp_path):
    info = _info(tmp_path)
    table = format_table(info)
    lines = table.splitlines()
    assert any(line.startswith("reach-v3") and "4/4" in line and "1.00" in line for line in lines)
    assert any(line.startswith("overall") and "8/12" in line for line in lines)
    assert any(line.startswith("[hard]") and "2/4" in line for line in lines)
    json.dumps(info)  # the info dict is plain JSON
