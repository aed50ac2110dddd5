"""Evaluation throughput with videos on: every episode recorded (before) vs only those that can still be kept.

    .venv/bin/python bench/bench_eval_videos.py [--tasks drawer-close-v3,button-press-topdown-v3,reach-v3]
        [--episodes 8] [--videos 2] [--max-steps 150] [--image-size 64] [--train-steps 150] [--policy DIR]

An evaluation keeps per task `--videos` videos (the first success, the first failure, then the first
episodes). Recording an episode renders its camera at every step, where the episode alone renders only
where the policy re-plans, so recording every episode of a task to choose among them afterwards costs most
of an evaluation's time with videos on. `vlaforge.eval.rollout.VideoGate` records an episode only while it
can still be chosen. Three passes over the same episodes, in this process (`EpisodeRunner`, one torch
thread, as each evaluation worker runs them, in index order): no videos, every episode recorded
(`VideoGate(None)`), and gated (`VideoGate(videos)`). Outcomes must be identical, and so must the videos
chosen from the recorded and the gated pass; the run stops with an error otherwise. Reported per pass:
episodes/s, episodes recorded, the ratio to the no-video pass. Writes bench/results/eval_videos.json.

The policy is the `tiny` preset with the chunk head trained for `--train-steps` on 5 expert
demonstrations per task (`bench_eval.make_policy`), or `--policy`.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_eval import EVAL_SEED, make_policy  # same directory
from vlaforge.atomic import write_json
from vlaforge.envs.base import episode_seed
from vlaforge.envs.registry import get_env
from vlaforge.envs.rendering import configure_rendering
from vlaforge.eval.rollout import EpisodeRunner, Job, VideoGate, WorkerSpec
from vlaforge.eval.run import _choose_videos
from vlaforge.policy_files import read_policy_dir

PASSES = ("no videos", "every episode recorded", "gated")


def run_pass(runner: EpisodeRunner, jobs: list[Job], gate: VideoGate) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    records = []
    for job in jobs:
        rec = runner(gate.admit(job))
        gate.finished(rec)
        records.append(rec)
    return records, time.perf_counter() - t0


def chosen(records: list[dict], tasks: list[str], keep: int) -> dict[str, set[int]]:
    return {t: _choose_videos([r for r in records if r["task"] == t], keep) for t in tasks}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="drawer-close-v3,button-press-topdown-v3,reach-v3")
    ap.add_argument("--episodes", type=int, default=8, help="evaluation episodes per task")
    ap.add_argument("--videos", type=int, default=2, help="videos kept per task (vlaforge eval's default)")
    ap.add_argument("--max-steps", type=int, default=150, help="episode truncation")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--policy", default=None, help="an existing checkpoint instead of training one")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_videos.json"))
    a = ap.parse_args(argv)
    gl = configure_rendering()
    torch.set_num_threads(1)  # as each evaluation worker runs

    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(a.policy) if a.policy else make_policy(Path(tmp), a.tasks, a.image_size, a.train_steps)
        emb = read_policy_dir(policy).embodiment
        env = get_env()
        tasks = env.resolve_tasks(a.tasks)
        spec = WorkerSpec(policy=str(policy), cameras=list(emb.camera_names), image_size=emb.image_size,
                          max_steps=a.max_steps, execute_steps=None)  # fmt: skip
        runner = EpisodeRunner(spec)
        runner(Job(tasks[0], 0, 12345, env.instructions[tasks[0]]))  # warm-up: env, GL, torch
        results = {}
        for name in PASSES:
            videos = Path(tmp) / name.replace(" ", "-")
            videos.mkdir()
            jobs = [
                Job(t, i, episode_seed(EVAL_SEED, t, i), env.instructions[t],
                    None if name == "no videos" else str(videos / f"{t}_{i:03d}.mp4"))
                for t in tasks
                for i in range(a.episodes)
            ]  # fmt: skip
            gate = VideoGate(a.videos if name == "gated" else None)
            results[name] = run_pass(runner, jobs, gate)
        runner.close()

    outcomes = {
        n: [(r["task"], r["episode"], r["success"], r["steps"]) for r in recs]
        for n, (recs, _) in results.items()
    }
    if len({tuple(o) for o in outcomes.values()}) != 1:
        raise SystemExit("the passes gave different outcomes; this is a bug")
    kept = {n: chosen(results[n][0], tasks, a.videos) for n in PASSES[1:]}
    if kept["every episode recorded"] != kept["gated"]:
        raise SystemExit(f"the gated pass keeps other videos ({kept}); this is a bug")
    n = len(outcomes["gated"])
    base = results["no videos"][1]
    rows = {
        name: {
            "episodes_per_s": round(n / seconds, 3),
            "seconds": round(seconds, 2),
            "episodes_recorded": sum(r["video"] is not None for r in recs),
            "time_vs_no_videos": round(seconds / base, 2),
        }
        for name, (recs, seconds) in results.items()
    }
    successes = sum(o[2] for o in outcomes["gated"])
    print(
        f"\n{n} episodes ({', '.join(tasks)}; {a.max_steps} max steps, {emb.image_size} px), {a.videos} videos "
        f"kept per task, 1 torch thread, MUJOCO_GL={gl}"
    )
    print(
        f"identical outcomes in every pass: {successes}/{n} successes; identical videos kept: {kept['gated']}"
    )
    print(f"{'pass':<26}{'episodes/s':>12}{'recorded':>10}{'time vs none':>14}")
    for name, r in rows.items():
        print(
            f"{name:<26}{r['episodes_per_s']:>12.2f}{r['episodes_recorded']:>10}{r['time_vs_no_videos']:>14.2f}"
        )
    speedup = rows["every episode recorded"]["seconds"] / rows["gated"]["seconds"]
    print(f"gated vs every episode recorded: {speedup:.2f}x faster")
    report = {
        "policy": "tiny preset, chunk head" + (f" ({a.policy})" if a.policy else f", {a.train_steps} steps"),
        "tasks": tasks,
        "episodes_per_task": a.episodes,
        "videos_per_task": a.videos,
        "max_steps": a.max_steps,
        "image_size": emb.image_size,
        "eval_seed": EVAL_SEED,
        "successes": successes,
        "videos_kept": {t: sorted(v) for t, v in kept["gated"].items()},
        "passes": rows,
        "speedup_gated_vs_all": round(speedup, 2),
        "mujoco_gl": gl,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
    }
    out = Path(a.out)
    write_json(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
