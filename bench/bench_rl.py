"""RL throughput of a tiny chunk-head policy: environment steps/s and where the time goes.

    .venv/bin/python bench/bench_rl.py [--envs 8,16,32] [--iterations 2] [--task drawer-close-v3]
        [--max-steps 40] [--epochs 4]

For each number of parallel episodes (in-process envs, one batched forward pass per step group,
`vlaforge.rl.rollout.collect`) it runs one warm-up iteration (making the envs and their renderers), then
`--iterations` measured PPO iterations (`--workers N`: the envs in N simulation processes) (rollout + update) of the `tiny` preset with the chunk head (H = 8,
64 px corner2 camera, one torch thread). Reported per size: env steps/s over the whole iteration, the
share of the iteration spent in rollouts (with the policy's forward passes inside them) and in updates,
rendered frames per env step. Writes bench/results/rl.json.
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
from vlaforge.envs.registry import get_env
from vlaforge.envs.rendering import configure_rendering


def tiny_policy(directory: Path) -> Path:
    from vlaforge.models.policy import Policy
    from vlaforge.types import FeatureStats, NormStats

    def fs(d, mask=None):
        return FeatureStats(min=-torch.ones(d).numpy(), max=torch.ones(d).numpy(), mean=torch.zeros(d).numpy(),
                            std=torch.full((d,), 0.5).numpy(), q01=torch.full((d,), -0.9).numpy(),
                            q99=torch.full((d,), 0.9).numpy(), mask=mask)  # fmt: skip

    emb = get_env("metaworld").embodiment(("corner2",), 64)
    stats = NormStats({"action": fs(4, [True, True, True, False]), "observation.state": fs(emb.state_dim)})
    torch.manual_seed(0)
    Policy.from_preset("tiny", "chunk", emb, stats).save_pretrained(directory)
    return directory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", default="8,16,32")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--task", default="drawer-close-v3")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0, help="simulation worker processes (0: in-process envs)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "rl.json"))
    args = ap.parse_args()
    configure_rendering()
    torch.set_num_threads(1)
    from vlaforge.models.policy import Policy
    from vlaforge.rl.config import RLConfig
    from vlaforge.rl.loop import RLRun, update
    from vlaforge.rl.rollout import EnvPool, WorkerPool, close_all, collect, training_scenes

    spec = get_env("metaworld")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        init = tiny_policy(Path(tmp) / "init")
        for n in [int(x) for x in args.envs.split(",")]:
            cfg = RLConfig(init=str(init), envs=n, max_steps=args.max_steps, epochs=args.epochs, device="cpu",
                           init_log_std=-0.5)  # fmt: skip
            torch.manual_seed(cfg.seed)  # the critic's initial weights: the same run for every size and pool
            run = RLRun(cfg, Policy.from_pretrained(init), "cpu")
            if args.workers:
                pool = WorkerPool(spec, ("corner2",), 64, args.max_steps, workers=args.workers)
            else:
                pool = EnvPool(spec, ("corner2",), 64, args.max_steps)
            totals = {"env_steps": 0, "rollout": 0.0, "forward": 0.0, "update": 0.0, "frames": 0}
            for it in range(args.iterations + 1):
                scenes = training_scenes([args.task], it, n, cfg.train_seed, {})
                batch = collect(run.actor, pool, scenes, 1, run.execute_steps, run.generator)
                t0 = time.perf_counter()
                update(run, batch)
                upd = time.perf_counter() - t0
                if it == 0:
                    continue  # warm-up: envs and renderers are made here
                totals["env_steps"] += batch.env_steps
                totals["rollout"] += batch.seconds
                totals["forward"] += batch.forward_seconds
                totals["update"] += upd
                totals["frames"] += batch.frames_rendered
            pool.close()
            wall = totals["rollout"] + totals["update"]
            rows.append({
                "envs": n,
                "workers": args.workers,
                "iterations": args.iterations,
                "env_steps": totals["env_steps"],
                "env_steps_per_s": round(totals["env_steps"] / wall, 1),
                "rollout_share": round(totals["rollout"] / wall, 3),
                "forward_share": round(totals["forward"] / wall, 3),
                "update_share": round(totals["update"] / wall, 3),
                "frames_per_env_step": round(totals["frames"] / max(1, totals["env_steps"]), 3),
                "seconds": round(wall, 2),
            })  # fmt: skip
            print(rows[-1], flush=True)
        close_all()
    print(f"\n{'envs':>5} {'steps/s':>9} {'rollout':>8} {'(fwd)':>7} {'update':>7} {'frames/step':>12}")
    for r in rows:
        print(f"{r['envs']:>5} {r['env_steps_per_s']:>9} {r['rollout_share']:>8.1%} {r['forward_share']:>7.1%} "
              f"{r['update_share']:>7.1%} {r['frames_per_env_step']:>12}")  # fmt: skip
    result = {
        "bench": "rl",
        "task": args.task,
        "max_steps": args.max_steps,
        "epochs": args.epochs,
        "machine": {"cpus": len(__import__("os").sched_getaffinity(0)), "platform": platform.platform()},
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "rows": rows,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
