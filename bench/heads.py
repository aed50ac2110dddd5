"""The action heads side by side: same data, same backbone, same budget, same evaluation protocol.

    .venv/bin/python bench/heads.py [--heads tokens,fast,chunk,flow,diffusion] [--steps 2000]
        [--tasks demo|medium|a,b,...] [--episodes 30] [--eval-episodes 20] [--out bench/runs/heads]

For each head this trains the `tiny` preset on one dataset of scripted-expert demonstrations (collected
once, the demo's settings), then evaluates it in Meta-World on held-out seeds, and reports:

- success rate over all tasks with its Wilson 95% interval (`vlaforge.eval`, open loop over each
  head's chunk: the token head re-plans every step, the others every H = 8 steps);
- actions/s at batch 1: `predict_action` latency on the trained checkpoint, actions/s = H / latency (the
  steps one prediction covers);
- training samples/s: one optimizer step (forward, backward, AdamW) on a fixed batch of 32 from the
  dataset;
  both measured at the end with one torch thread, for every head in the same process, in interleaved
  rounds (median of the rounds), so that load from elsewhere on the machine falls on all heads alike;
- parameters: the whole policy and the head's own (the token heads reuse the LLM's output layer).

The `fast` head gets a FAST tokenizer trained on the same dataset first (`vlaforge tokenizer train`,
vocabulary 256 so its ids fit the action-token range, H = 8). Every head uses the same seed, batch,
learning-rate schedule and steps. Tasks: `demo` (the demo's five easy tasks) or `medium` (five medium
tasks). Prints a table, writes bench/results/heads[-TASKS].json and a plot (success with intervals,
actions/s) next to it. Runs are kept under --out and reused when already complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from vlaforge.atomic import write_json

TASK_SETS = {
    "demo": "drawer-close-v3,button-press-topdown-v3,window-close-v3,drawer-open-v3,faucet-open-v3",
    "medium": "basketball-v3,bin-picking-v3,box-close-v3,coffee-pull-v3,hammer-v3",
}
HEADS = ("tokens", "fast", "chunk", "flow", "diffusion")


def head_params(policy: torch.nn.Module) -> int:
    return sum(p.numel() for p in policy.head.parameters())


def _observation(policy) -> dict:
    emb = policy.embodiment
    rng = np.random.default_rng(0)
    return {
        "images": {
            c: rng.integers(0, 256, (emb.image_size, emb.image_size, 3), dtype=np.uint8)
            for c in emb.camera_names
        },
        "state": np.zeros(emb.state_dim, np.float32) if emb.state_dim else None,
        "instruction": "open the drawer",
    }


def measure_speed(
    policies: dict, dataset: str, rounds: int = 7, calls: int = 3
) -> dict[str, dict[str, float]]:
    """Per head: batch-1 latency / actions/s and training samples/s, in interleaved rounds (see the module
    docstring); medians over the rounds."""
    from vlaforge.data.dataset import open_dataset
    from vlaforge.data.sampler import make_sampler

    torch.set_num_threads(1)  # tiny models: a second thread only spin-waits on a shared 2-core machine
    ds = open_dataset(dataset)
    batches, opts, obs = {}, {}, {}
    for name, policy in policies.items():
        batches[name] = next(iter(make_sampler(ds, batch_size=32, chunk_size=policy.chunk_size, seed=0)))
        opts[name] = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6)
        obs[name] = _observation(policy)
        policy.predict_action(obs[name], generator=torch.Generator().manual_seed(0))  # warm-up
    lat: dict[str, list[float]] = {n: [] for n in policies}
    step: dict[str, list[float]] = {n: [] for n in policies}
    for _ in range(rounds):
        for name, policy in policies.items():
            gen = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            for _ in range(calls):
                policy.predict_action(obs[name], generator=gen)
            lat[name].append((time.perf_counter() - t0) / calls)
            policy.train()
            t0 = time.perf_counter()
            loss, _ = policy.compute_loss(batches[name])
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            step[name].append(time.perf_counter() - t0)
    out = {}
    for name, policy in policies.items():
        latency = statistics.median(lat[name])
        out[name] = {
            "latency_s": latency,
            "actions_per_s": policy.chunk_size / latency,
            "train_samples_per_s": 32 / statistics.median(step[name]),
        }
    return out


def main() -> None:
    from vlaforge.actions.fast import train_tokenizer_command
    from vlaforge.demo import DemoConfig
    from vlaforge.envs.collect import collect
    from vlaforge.eval.run import evaluate
    from vlaforge.models.policy import Policy
    from vlaforge.train.loop import train

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", default=",".join(HEADS))
    ap.add_argument("--tasks", default="demo", help="demo, medium, or a comma list of Meta-World tasks")
    ap.add_argument("--steps", type=int, default=2000, help="training steps per head")
    ap.add_argument("--episodes", type=int, default=30, help="demonstrations per task")
    ap.add_argument("--eval-episodes", type=int, default=20, help="evaluation episodes per task")
    ap.add_argument("--chunk-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="bench/runs/heads", help="datasets, runs and evaluations")
    ap.add_argument("--json", default=None, help="default: bench/results/heads-<tasks>.json")
    a = ap.parse_args()
    tasks = TASK_SETS.get(a.tasks, a.tasks)
    label = a.tasks if a.tasks in TASK_SETS else "custom"
    root = Path(a.out) / label
    base = DemoConfig(
        tasks=tasks,
        episodes=a.episodes,
        steps=a.steps,
        eval_episodes=a.eval_episodes,
        out=str(root),
        workers=a.workers,
        chunk_size=a.chunk_size,
        device="cpu",
    )
    if not (base.data_dir / "meta" / "info.json").is_file():
        t0 = time.perf_counter()
        collect(base.collect_config())
        print(f"collected {base.data_dir} in {time.perf_counter() - t0:.0f} s")
    rows, policies = [], {}
    for head in [h.strip() for h in a.heads.split(",") if h.strip()]:
        cfg = dataclasses.replace(base, head=head, out=str(root / head))
        cfg_train = cfg.train_config()
        cfg_train = dataclasses.replace(cfg_train, dataset=str(base.data_dir))
        if head == "tokens":
            cfg_train = dataclasses.replace(cfg_train, chunk_size=None)  # OpenVLA: one step per prediction
        if head == "fast":
            tok = root / "fast-tokenizer"
            if not (tok / "fast.json").is_file():
                train_tokenizer_command(str(base.data_dir), str(tok), chunk_size=a.chunk_size, vocab_size=256)
            cfg_train = dataclasses.replace(cfg_train, head_options={"tokenizer": str(tok)})
        run = Path(cfg_train.out)
        if not (run / "last" / "model.safetensors").is_file():
            if (run / "last").exists():
                cfg_train = dataclasses.replace(cfg_train, resume=True)
            train(cfg_train)
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        train_wall = float(last.get("elapsed_s", float("nan")))  # the run's own clock (resumes included)
        policy = Policy.from_pretrained(run / "last")
        policies[head] = policy
        ev_dir = root / head / "eval"
        if not (ev_dir / "eval_info.json").is_file():
            evaluate(cfg.eval_config(run / "last", ev_dir))
        info = json.loads((ev_dir / "eval_info.json").read_text())
        overall = info["aggregates"]["overall"]
        rows.append(
            {
                "head": head,
                "chunk": policy.chunk_size,
                "success": overall,
                "per_task": info["aggregates"]["per_task"],
                "train_wall_s": train_wall,
                "params": sum(p.numel() for p in policy.parameters()),
                "head_params": head_params(policy),
                "run": str(run),
                "protocol": {
                    k: info["protocol"][k]
                    for k in ("execute_steps", "max_steps", "seed", "seed_rule")
                    if k in info["protocol"]
                },
            }
        )
        print(
            f"{head}: {overall['successes']}/{overall['n']} = {overall['rate']:.2f} "
            f"[{overall['ci_low']:.2f}, {overall['ci_high']:.2f}]"
        )

    speed = measure_speed(policies, str(base.data_dir))
    for r in rows:
        r.update(speed[r["head"]])

    print(
        f"\nheads on {label} tasks ({tasks}); tiny preset, {a.steps} steps x batch {base.batch_size}, "
        f"{a.episodes} demos/task, {a.eval_episodes} eval episodes/task, seed {base.seed} / eval seed {base.eval_seed}"
    )
    print(
        f"{'head':<10} {'H':>2} {'success [95% CI]':>22} {'actions/s':>10} {'train samples/s':>16} {'params':>9} {'head params':>12}"
    )
    for r in rows:
        s = r["success"]
        print(
            f"{r['head']:<10} {r['chunk']:>2} {s['successes']:>4}/{s['n']:<4} {s['rate']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"
            f" {r['actions_per_s']:>10.0f} {r['train_samples_per_s']:>16.0f} {r['params'] / 1e6:>8.2f}M {r['head_params'] / 1e6:>11.3f}M"
        )
    out = Path(a.json or Path(__file__).parent / "results" / f"heads-{label}.json")
    report = {
        "bench": "heads",
        "tasks": tasks,
        "steps": a.steps,
        "episodes": a.episodes,
        "eval_episodes": a.eval_episodes,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "rows": rows,
    }
    write_json(out, report)
    plot(rows, out.with_suffix(".png"), label)
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(rows: list[dict], path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["head"] for r in rows]
    rate = np.array([r["success"]["rate"] for r in rows])
    lo = rate - np.array([r["success"]["ci_low"] for r in rows])
    hi = np.array([r["success"]["ci_high"] for r in rows]) - rate
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.bar(names, rate, yerr=[lo, hi], capsize=4, color="#4C72B0")
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("success (Wilson 95% CI)")
    ax1.set_title(f"success, {label} tasks")
    ax2.bar(names, [r["actions_per_s"] for r in rows], color="#55A868")
    ax2.set_yscale("log")
    ax2.set_ylabel("actions/s at batch 1 (log)")
    ax2.set_title("inference speed, 2-core CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
