"""Evaluation throughput (episodes/s) of a tiny chunk-head policy: rendering every step vs only where used.

    .venv/bin/python bench/bench_eval.py [--tasks drawer-close-v3,button-press-topdown-v3] [--episodes 5]
        [--max-steps 150] [--image-size 64] [--train-steps 150] [--repeats 2]

A Meta-World step is ~0.5 ms of physics and, through OSMesa on a CPU, several ms per rendered camera
image, so an open-loop chunk of H actions costs mostly its renders. The reference path
(`WorkerSpec.render_every_step=True`, how evaluation ran before) renders after every step; the fast path
renders at reset and after the last step of each chunk, where the policy re-plans (videos, when kept,
still get every frame; here none is kept, as for the episodes of an evaluation beyond its videos).

The policy is the `tiny` preset with the chunk head (H = 8), trained for `--train-steps` on scripted-expert
demonstrations collected here (seed 0; evaluation seeds come from 1000, so no episode is a training
scene). Both paths run the same episodes, in this process (`EpisodeRunner`, one torch thread, as each
evaluation worker does), alternating reference / fast `--repeats` times; the outcomes (success, steps)
must be identical, and the run stops with an error if they are not. Reported per path: episodes/s over
all repeats, env steps/s, camera images rendered per episode. Writes bench/results/eval.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from vlaforge.atomic import write_json
from vlaforge.envs.base import episode_seed
from vlaforge.envs.collect import CollectConfig, collect
from vlaforge.envs.registry import get_env
from vlaforge.envs.rendering import configure_rendering
from vlaforge.eval.rollout import EpisodeRunner, Job, WorkerSpec
from vlaforge.policy_files import read_policy_dir
from vlaforge.train.loop import TrainConfig, train

EVAL_SEED = 1000


def make_policy(root: Path, tasks: str, image_size: int, train_steps: int) -> Path:
    """Collects 5 expert demonstrations per task and trains the tiny chunk-head policy on them."""
    data = collect(
        CollectConfig(tasks=tasks, episodes=5, out=root / "data", image_size=image_size, workers=0, seed=0)
    )
    train(
        TrainConfig(
            dataset=str(data),
            out=str(root / "run"),
            preset="tiny",
            head="chunk",
            steps=train_steps,
            batch_size=16,
            lr=1e-3,
            log_every=max(1, train_steps // 5),
            device="cpu",
        )
    )
    return root / "run" / "last"


def run_path(runner: EpisodeRunner, jobs: list[Job]) -> tuple[list[dict], float, int]:
    """Runs every job; returns (records, seconds, camera images rendered)."""
    before = runner.frames_rendered
    t0 = time.perf_counter()
    records = [runner(j) for j in jobs]
    return records, time.perf_counter() - t0, runner.frames_rendered - before


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="drawer-close-v3,button-press-topdown-v3")
    ap.add_argument("--episodes", type=int, default=5, help="evaluation episodes per task")
    ap.add_argument("--max-steps", type=int, default=150, help="episode truncation")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes of each path, alternating")
    ap.add_argument("--policy", default=None, help="an existing checkpoint instead of training one")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval.json"))
    a = ap.parse_args(argv)
    gl = configure_rendering()
    torch.set_num_threads(1)  # as each evaluation worker runs

    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(a.policy) if a.policy else make_policy(Path(tmp), a.tasks, a.image_size, a.train_steps)
        files = read_policy_dir(policy)
        emb = files.embodiment
        env = get_env()
        tasks = env.resolve_tasks(a.tasks)
        jobs = [
            Job(t, i, episode_seed(EVAL_SEED, t, i), env.instructions[t])
            for t in tasks
            for i in range(a.episodes)
        ]
        runners = {}
        for reference in (True, False):
            spec = WorkerSpec(
                policy=str(policy),
                cameras=list(emb.camera_names),
                image_size=emb.image_size,
                max_steps=a.max_steps,
                execute_steps=None,
                render_every_step=reference,
            )
            runners[reference] = EpisodeRunner(spec)
            runners[reference](Job(tasks[0], 0, 12345, env.instructions[tasks[0]]))  # warm-up: env, GL, torch
        totals = {True: [0.0, 0, 0], False: [0.0, 0, 0]}  # seconds, episodes, renders
        outcomes: dict[bool, list] = {}
        for _ in range(a.repeats):
            for reference in (True, False):
                records, seconds, renders = run_path(runners[reference], jobs)
                got = [(r["task"], r["episode"], r["success"], r["steps"]) for r in records]
                if outcomes.setdefault(reference, got) != got or outcomes.get(not reference, got) != got:
                    raise SystemExit("the two rendering paths gave different outcomes; this is a bug")
                totals[reference][0] += seconds
                totals[reference][1] += len(jobs)
                totals[reference][2] += renders
        for r in runners.values():
            r.close()
        execute_steps = runners[False].controller.execute_steps

    outcome = outcomes[False]
    steps = sum(o[3] for o in outcome)
    rows = {}
    for reference, name in ((True, "every step (reference)"), (False, "re-plans only")):
        seconds, episodes, renders = totals[reference]
        rows[name] = {
            "episodes_per_s": round(episodes / seconds, 3),
            "steps_per_s": round(steps * a.repeats / seconds, 1),
            "renders_per_episode": round(renders / episodes, 1),
            "seconds": round(seconds, 2),
        }
    ref, fast = rows["every step (reference)"], rows["re-plans only"]
    speedup = fast["episodes_per_s"] / ref["episodes_per_s"]

    n_success = sum(o[2] for o in outcome)
    print(
        f"\n{len(jobs)} episodes ({', '.join(tasks)}; {a.max_steps} max steps, {emb.image_size} px, chunk "
        f"executed {execute_steps} steps open loop) x {a.repeats} repeats, 1 torch thread, MUJOCO_GL={gl}"
    )
    print(f"identical outcomes on both paths: {n_success}/{len(jobs)} successes, {steps} env steps")
    print(f"{'rendering':<24}{'episodes/s':>12}{'steps/s':>10}{'renders/ep':>12}")
    for name, r in rows.items():
        print(
            f"{name:<24}{r['episodes_per_s']:>12.2f}{r['steps_per_s']:>10.1f}{r['renders_per_episode']:>12.1f}"
        )
    print(f"speed-up: {speedup:.2f}x")

    report = {
        "policy": "tiny preset, chunk head" + (f" ({a.policy})" if a.policy else f", {a.train_steps} steps"),
        "tasks": tasks,
        "episodes_per_task": a.episodes,
        "max_steps": a.max_steps,
        "image_size": emb.image_size,
        "cameras": list(emb.camera_names),
        "execute_steps": execute_steps,
        "repeats": a.repeats,
        "eval_seed": EVAL_SEED,
        "successes": n_success,
        "env_steps": steps,
        "outcomes_identical": True,
        "paths": rows,
        "speedup": round(speedup, 2),
        "mujoco_gl": gl,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "definition": "episodes/s = episodes run / wall time of the rollouts (policy loaded, envs warm)",
    }
    out = Path(a.out)
    write_json(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
