"""Training and inference throughput of the tiny preset, per action head, on this machine.

    .venv/bin/python bench/bench_train.py [--steps 30] [--batch-size 32] [--threads 1]

Measures, for the token head (OpenVLA: one action per forward, D tokens decoded one by one) and the
chunk head (OpenVLA-OFT: H x D actions in one parallel pass):

- training samples/s through the real loop (`vlaforge.train.train`, batch 32, fp32), from its
  metrics.jsonl, skipping the first logging window (warm-up);
- inference at batch 1 with `Policy.predict_action` on the trained checkpoint, after warm-up:
  latency (median of the timed calls) and actions/s = chunk length H / latency, i.e. environment
  steps covered per second of compute when the whole chunk is executed open loop (token head H = 1).

The headline is the chunk head's actions/s over the token head's. Writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vlaforge.atomic import write_json
from vlaforge.data.synth import TASKS, SynthConfig, write_synthetic
from vlaforge.models.policy import Policy
from vlaforge.models.presets import PRESETS, PROMPT_FORMATS
from vlaforge.train.loop import TrainConfig, train


def bench_head(
    head: str, dataset: Path, out: Path, steps: int, batch_size: int, calls: int, threads: int | None = None
) -> dict:
    run = train(
        TrainConfig(
            dataset=str(dataset),
            out=str(out / head),
            preset="tiny",
            head=head,
            steps=steps,
            batch_size=batch_size,
            log_every=max(1, steps // 6),
            device="cpu",
            threads=threads,  # None: `vlaforge train`'s own choice (the free cores)
        )
    )
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] or rows
    samples_per_s = statistics.median(r["samples_per_s"] for r in timed)

    policy = Policy.from_pretrained(run / "last")
    obs = {
        "images": {"corner2": np.full((64, 64, 3), 120, dtype=np.uint8)},
        "state": np.zeros(4, dtype=np.float32),
        "instruction": TASKS[0],
    }
    for _ in range(3):  # warm-up
        chunk = policy.predict_action(obs)
    latencies = []
    for _ in range(calls):
        t0 = time.perf_counter()
        chunk = policy.predict_action(obs)
        latencies.append(time.perf_counter() - t0)
    latency = statistics.median(latencies)
    H = int(chunk.shape[0])
    return {
        "head": head,
        "train_samples_per_s": round(samples_per_s, 1),
        "chunk_len": H,
        "action_dim": int(chunk.shape[1]),
        "latency_ms": round(latency * 1e3, 2),
        "actions_per_s": round(H / latency, 1),
        "params": sum(p.numel() for p in policy.parameters()),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="training steps per head (first window is warm-up)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--calls", type=int, default=30, help="timed predict_action calls per head")
    # One intra-op thread by default: on a small machine shared with other jobs, OpenMP threads that
    # spin on a busy core make timings swing by 10x; one thread gives stable, comparable numbers.
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (0: what `vlaforge train` picks, the free cores)",
    )
    ap.add_argument(
        "--prompt",
        default=None,
        choices=PROMPT_FORMATS,
        help="the tiny preset's prompt format (default: the preset's, 'instruction'); 'openvla' measures "
        "the same model with OpenVLA's template, as the tiny preset had it before",
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.json"))
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.prompt is not None:  # this process only: the registered preset with another prompt format
        PRESETS["tiny"] = dataclasses.replace(PRESETS["tiny"], prompt=a.prompt)

    with tempfile.TemporaryDirectory() as tmp:
        dataset = write_synthetic(
            SynthConfig(out=str(Path(tmp) / "ds"), episodes=4, length=40, image_size=64)
        )
        results = [
            bench_head(h, dataset, Path(tmp), a.steps, a.batch_size, a.calls, a.threads or None)
            for h in ("tokens", "chunk")
        ]
    by = {r["head"]: r for r in results}
    ratio = by["chunk"]["actions_per_s"] / by["tokens"]["actions_per_s"]

    print(
        f"\ntiny preset, batch {a.batch_size} training, batch 1 inference, {torch.get_num_threads()} threads"
    )
    print(f"{'head':<8}{'train samples/s':>17}{'H':>4}{'latency ms':>12}{'actions/s':>11}")
    for r in results:
        print(
            f"{r['head']:<8}{r['train_samples_per_s']:>17.1f}{r['chunk_len']:>4}"
            f"{r['latency_ms']:>12.2f}{r['actions_per_s']:>11.1f}"
        )
    print(f"chunk head / token head actions/s: {ratio:.1f}x")

    report = {
        "preset": "tiny",
        "prompt": PRESETS["tiny"].prompt,
        "batch_size": a.batch_size,
        "steps": a.steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "heads": results,
        "chunk_over_tokens_actions_per_s": round(ratio, 2),
        "definition": "actions/s = chunk length H / median predict_action latency at batch 1 (env steps covered)",
    }
    out = Path(a.out)
    write_json(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
