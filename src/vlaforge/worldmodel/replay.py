"""`vlaforge worldmodel replay`: recorded episodes replayed open loop inside a world model, to see what it
gets wrong.

Each episode starts from its first real frame and is driven by its own recorded actions for its whole
length, as an evaluation inside the model would be; the imagined frames are compared with the real ones:

- error: mean absolute difference to the real frame (grey levels of 255), at the end and over the episode;
- motion: the mean absolute change between consecutive frames, real and imagined; a model that predicts
  too little change (the regression-to-the-mean failure) shows an imagined motion far below the real one.
  For a model with a stride N, between the frames it predicts (N apart), divided by N: per step, and
  comparable with the real frames at the same spacing;
- other actions: the same replay driven by another episode's actions (the next one in the list, its last
  action repeated when it is shorter); a model that reads its actions has a larger error with them than
  with the episode's own, one that extrapolates the context the same;
- judge: with a success judge, its highest probability on the real frames and on the imagined ones (an
  imagined episode is judged a success where it reaches 0.5).

`replay.json` holds every episode's figures and their means; `strips/` a PNG per episode (real row above,
imagined row below).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlaforge.worldmodel.data import Episodes
from vlaforge.worldmodel.model import SuccessJudge, WorldModel, imagine


def _other_actions(eps: Episodes, e: int, n: int) -> np.ndarray:
    a, b = eps.bounds[e]
    acts = eps.actions[a:b]
    if len(acts) < n:
        acts = np.concatenate([acts, np.repeat(acts[-1:], n - len(acts), axis=0)])
    return acts[:n]


def _abs_err(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per frame mean absolute difference, (T,)."""
    return np.abs(x.astype(np.float32) - y.astype(np.float32)).mean(axis=(1, 2, 3))


def replay(
    model: WorldModel,
    eps: Episodes,
    episodes: Sequence[int],
    judge: SuccessJudge | None = None,
    seed: int = 0,
    keep_frames: int = 0,
) -> dict[str, Any]:
    """The figures of the module docstring for every episode of `episodes` (at least 2 frames each) and
    their means; the first `keep_frames` episodes also carry their real and imagined frames ("frames")."""
    model.eval()
    episodes = [e for e in episodes if eps.bounds[e][1] - eps.bounds[e][0] >= 2]
    rows = []
    for i, e in enumerate(episodes):
        a, b = eps.bounds[e]
        real = eps.frames[a:b]
        own = imagine(model, real[0], eps.actions[a : b - 1], torch.Generator().manual_seed(seed + e))
        row: dict[str, Any] = {
            "task": (eps.tasks[e] if e < len(eps.tasks) else "") or eps.instructions[e],
            "source": list(eps.sources[e]),
            "steps": int(b - a),
            "success": bool(eps.success[a:b].any()),
        }
        err = _abs_err(own, real)
        row["error_end"] = round(float(err[-1]), 3)
        row["error_mean"] = round(float(err[1:].mean()), 3)
        n = model.stride if len(real) > model.stride else 1
        row["motion_real"] = round(float(_abs_err(real[n::n], real[:-n:n]).mean()) / n, 3)
        row["motion_imagined"] = round(float(_abs_err(own[n::n], own[:-n:n]).mean()) / n, 3)
        if len(episodes) > 1:
            other = _other_actions(eps, episodes[(i + 1) % len(episodes)], b - a - 1)
            moved = imagine(model, real[0], other, torch.Generator().manual_seed(seed + e))
            row["error_mean_other_actions"] = round(float(_abs_err(moved, real)[1:].mean()), 3)
        if judge is not None:
            with torch.no_grad():
                row["judge_real_max"] = round(float(judge.prob(torch.from_numpy(real)).max()), 4)
                row["judge_imagined_max"] = round(float(judge.prob(torch.from_numpy(own)).max()), 4)
        if i < keep_frames:
            row["frames"] = (real, own)
        rows.append(row)
    keys = [k for k in rows[0] if k not in ("task", "source", "steps", "success", "frames")] if rows else []
    means = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    if judge is not None and rows:
        means["imagined_judged_success"] = sum(r["judge_imagined_max"] >= 0.5 for r in rows)
        means["real_judged_success"] = sum(r["judge_real_max"] >= 0.5 for r in rows)
    return {"episodes": rows, "mean": means}


def format_replay(result: dict[str, Any]) -> str:
    """A plain-text table, one row per episode, then the means."""
    judged = any("judge_real_max" in r for r in result["episodes"])
    head = (
        f"{'task':<24} {'steps':>5} {'err end':>8} {'err mean':>9} {'other act':>9} {'motion real/imag':>17}"
    )
    head += f" {'judge real/imag':>16}" if judged else ""
    lines = [head, "-" * len(head)]
    for r in result["episodes"]:
        line = (
            f"{r['task'][:24]:<24} {r['steps']:>5} {r['error_end']:>8.2f} {r['error_mean']:>9.2f} "
            f"{r.get('error_mean_other_actions', float('nan')):>9.2f} "
            f"{r['motion_real']:>8.2f}/{r['motion_imagined']:<8.2f}"
        )
        if judged:
            line += f" {r['judge_real_max']:>8.2f}/{r['judge_imagined_max']:<7.2f}"
        lines.append(line)
    m = result["mean"]
    lines.append("-" * len(head))
    lines.append(
        "mean: " + ", ".join(f"{k} {v}" for k, v in m.items())
        + (
            f"\nimagined motion is {m['motion_imagined'] / m['motion_real']:.2f} of the real one"
            if m.get("motion_real")
            else ""
        )
    )  # fmt: skip
    return "\n".join(lines)


def run_replay(
    worldmodel: str, dataset: str | None, episodes: int, seed: int, out: str | None, strips: int = 4
) -> dict[str, Any]:
    """The CLI: the world model's held-out episodes (or every episode of `dataset`), its judge when
    ``RUN/judge`` has one; writes ``replay.json`` and ``strips/`` into `out`."""
    from vlaforge.atomic import write_json
    from vlaforge.worldmodel.config import JUDGE_CONFIG
    from vlaforge.worldmodel.data import episodes_to_test
    from vlaforge.worldmodel.env import judge_dir, model_dir
    from vlaforge.worldmodel.judge import load_judge
    from vlaforge.worldmodel.train import load_worldmodel, write_strip

    model = load_worldmodel(worldmodel)
    eps, chosen = episodes_to_test(model.cfg, dataset)
    if episodes > 0:
        chosen = chosen[:episodes]
    jd = judge_dir(model_dir(worldmodel))
    judge = load_judge(jd)[0] if (jd / JUDGE_CONFIG).is_file() else None
    result = replay(model, eps, chosen, judge, seed, keep_frames=strips if out else 0)
    if out:
        root = Path(out)
        for i, r in enumerate(result["episodes"]):
            frames = r.pop("frames", None)
            if frames is not None:
                name = f"strips/{i:03d}-{r['task']}.png".replace(" ", "_")
                write_strip(frames[0], frames[1], root / name, every=max(1, r["steps"] // 10))
                r["strip"] = name
        write_json(
            root / "replay.json", {"worldmodel": str(worldmodel), "judge": judge is not None, **result}
        )
    print(format_replay(result))
    return result
