"""Batched evaluation vs per-process evaluation: episodes/s on the same episodes, in the same run.

    .venv/bin/python bench/bench_eval_batched.py [--policy RUN/last] [--tasks mt10] [--episodes 3]
        [--workers 2] [--envs-per-worker 8] [--max-steps 500] [--repeats 1]

Per-process (`--envs-per-worker 0`, how `vlaforge eval` ran before): every worker process loads its own
copy of the policy and runs one episode at a time, a forward pass at batch 1 per re-plan. Batched
(`vlaforge.eval.vector`): the policy lives once, in the main process, the workers only simulate, and the
re-plans of many episodes share one forward pass. Both run `vlaforge.eval.run.evaluate` with the same
workers, seeds and protocol, alternating per-process / batched `--repeats` times, with no videos; the
episodes (success, steps) should agree (the count that does is reported). Without `--policy`, a tiny
flow-head policy is trained here on 5 expert demonstrations per task.

Prints a table and writes bench/results/eval_batched.json.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from vlaforge.atomic import write_json
from vlaforge.envs.rendering import configure_rendering
from vlaforge.eval.run import EvalConfig, evaluate


def _policy(root: Path, tasks: str) -> Path:
    from vlaforge.envs.collect import CollectConfig, collect
    from vlaforge.train.loop import TrainConfig, train

    data = collect(
        CollectConfig(tasks=tasks, episodes=5, out=root / "data", image_size=64, workers=2, seed=0)
    )
    train(TrainConfig(dataset=str(data), out=str(root / "run"), head="flow", steps=300, batch_size=32,
                      lr=1e-3, log_every=100, device="cpu"))  # fmt: skip
    return root / "run" / "last"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=None, help="a checkpoint (default: train a tiny one here)")
    ap.add_argument("--tasks", default="mt10")
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--envs-per-worker", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="bench/results/eval_batched.json")
    args = ap.parse_args()
    configure_rendering()

    with tempfile.TemporaryDirectory() as tmp:
        policy = args.policy or str(_policy(Path(tmp), args.tasks))
        runs: dict[str, list[float]] = {"per-process": [], "batched": []}
        episodes: dict[str, list] = {}
        info = {}
        for r in range(args.repeats):
            for name, envs in (("per-process", 0), ("batched", args.envs_per_worker)):
                cfg = EvalConfig(
                    policy=policy, tasks=args.tasks, episodes=args.episodes, workers=args.workers,
                    envs_per_worker=envs, max_steps=args.max_steps, videos=0, out=Path(tmp) / f"{name}{r}",
                )  # fmt: skip
                t0 = time.perf_counter()
                res = evaluate(cfg)
                runs[name].append(time.perf_counter() - t0)
                episodes[name] = [
                    (e["task"], e["episode"], e["success"], e["steps"]) for e in res.info["episodes"]
                ]
                info[name] = res.info
    n = len(episodes["batched"])
    same = sum(a == b for a, b in zip(episodes["per-process"], episodes["batched"]))
    rows = []
    for name, walls in runs.items():
        wall = sum(walls) / len(walls)
        agg = info[name]["aggregates"]["overall"]
        steps = sum(e[3] for e in episodes[name])
        rows.append({
            "runner": name, "wall_s": round(wall, 1), "episodes_per_s": round(n / wall, 3),
            "env_steps_per_s": round(steps / wall, 1), "success": f"{agg['successes']}/{agg['n']}",
            "mean_batch": info[name]["protocol"]["mean_batch"],
        })  # fmt: skip
    ratio = rows[0]["wall_s"] / rows[1]["wall_s"]
    print(f"\n{n} episodes ({args.tasks} x {args.episodes}), {args.workers} workers, max_steps {args.max_steps}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")  # fmt: skip
    print(
        f"{'runner':<13}{'wall s':>9}{'episodes/s':>12}{'env steps/s':>13}{'success':>10}{'mean batch':>12}"
    )
    for row in rows:
        print(f"{row['runner']:<13}{row['wall_s']:>9}{row['episodes_per_s']:>12}{row['env_steps_per_s']:>13}"
              f"{row['success']:>10}{str(row['mean_batch']):>12}")  # fmt: skip
    print(f"batched / per-process speed: {ratio:.2f}x; episodes agreeing (success, steps): {same}/{n}")
    out = Path(args.out)
    write_json(out, {"args": vars(args), "rows": rows, "speedup": round(ratio, 3), "episodes_agreeing": same,
                     "episodes": n})  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
