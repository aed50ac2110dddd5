"""RLDS benchmark: conversion both ways, the reader, streaming vs the trainer, memory while converting.

Builds a synthetic LeRobotDataset v3.0 (default 200 episodes x 100 frames, one 160 px camera: 20,000
frames, 1.5 GB decoded) and measures, in the same run:

1. `vlaforge dataset convert` LeRobot -> RLDS (JPEG 95) and RLDS -> LeRobot, each run as its own process:
   frames/s (wall time, start-up included), and the peak resident memory of that process and its workers
   together (sampled from /proc every 20 ms), against the dataset's decoded size: conversion streams, so
   the peak does not grow with the dataset.
2. The RLDS reader: the index build (every record's CRCs checked, the numeric columns and frame offsets
   kept) in frames/s, and random single-frame reads (one pread + one JPEG decode + resize) in frames/s.
3. Streaming training batches (ChunkSampler over the RLDS dataset, frames decoded by `--workers` worker
   processes, batch 32, chunk 8, `--image-size`) in samples/s, against what the trainer consumes: the tiny
   preset's training samples/s on the same dataset and machine (cached frames, one thread), and the
   projection for 8 GPUs: how many decode processes 8 trainers consuming R samples/s each would need, for
   the R given by `--gpu-samples-per-s` (the per-GPU rate of your model; none is measured here).

Prints a table and writes bench/results/rlds.json.

    .venv/bin/python bench/bench_rlds.py [--episodes 200] [--frames 100] [--size 160] [--workers 2]
    .venv/bin/python bench/bench_rlds.py --memory-scaling 25,100,400   # peak memory of the conversions vs size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_data import build  # same directory
from vlaforge.atomic import write_json
from vlaforge.data.rlds_dataset import RLDSDataset
from vlaforge.data.sampler import make_sampler
from vlaforge.train.loop import TrainConfig, train


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def timed_convert(src: Path, to: str, out: Path, workers: int, frames: int) -> dict:
    """Runs `vlaforge dataset convert` as a user would (its own process), sampling its memory every 20 ms."""
    cmd = [
        sys.executable,
        "-m",
        "vlaforge.cli",
        "dataset",
        "convert",
        str(src),
        "--to",
        to,
        "--out",
        str(out),
    ]
    cmd += ["--workers", str(workers), "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output}")
    return {
        "frames": frames,
        "seconds": round(seconds, 2),
        "frames_per_s": round(frames / seconds, 1),
        "peak_rss_mb": round(peak / 1e6, 1),
        "command": " ".join(cmd[1:]),
    }


def memory_scaling(sizes: list[int], args: argparse.Namespace) -> dict:
    """Peak memory of both conversions at several dataset sizes (same frames per episode and image size)."""
    out: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "args": vars(args), "runs": {}}
    print(f"{'episodes':>8} {'frames':>7} {'decoded GB':>10} {'to RLDS MB':>10} {'to LeRobot MB':>13}")
    for eps in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            build(tmp / "lr", eps, args.frames, args.size)
            n = eps * args.frames
            a = timed_convert(tmp / "lr", "rlds", tmp / "rl", args.workers, n)
            b = timed_convert(tmp / "rl", "lerobot", tmp / "back", args.workers, n)
        gb = n * args.size * args.size * 3 / 1e9
        out["runs"][eps] = {"frames": n, "decoded_gb": round(gb, 2), "to_rlds": a, "to_lerobot": b}
        print(f"{eps:8d} {n:7d} {gb:10.2f} {a['peak_rss_mb']:10.1f} {b['peak_rss_mb']:13.1f}", flush=True)
    path = Path(args.out).with_name("rlds-memory-scaling.json")
    write_json(path, out)
    print(f"wrote {path}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=64, help="training resolution of the streamed batches")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument(
        "--gpu-samples-per-s", type=float, default=None, help="per-GPU consumption for the projection"
    )
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "rlds.json"))
    ap.add_argument(
        "--memory-scaling",
        default=None,
        help="instead: comma list of episode counts; only the two conversions at each size (peak memory vs size)",
    )
    args = ap.parse_args(argv)
    if args.memory_scaling:
        return memory_scaling([int(x) for x in args.memory_scaling.split(",")], args)
    torch.set_num_threads(1)
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"building a {args.episodes} x {args.frames} x {args.size} px LeRobot dataset ...", flush=True)
        build(tmp / "lr", args.episodes, args.frames, args.size, gop=None)
        n = args.episodes * args.frames
        result["frames"] = n
        result["decoded_gb"] = round(n * args.size * args.size * 3 / 1e9, 2)
        result["lerobot_mb"] = round(
            sum(p.stat().st_size for p in (tmp / "lr").rglob("*") if p.is_file()) / 1e6, 1
        )

        result["to_rlds"] = timed_convert(tmp / "lr", "rlds", tmp / "rl", args.workers, n)
        result["rlds_mb"] = round(
            sum(p.stat().st_size for p in (tmp / "rl").rglob("*") if p.is_file()) / 1e6, 1
        )
        result["to_lerobot"] = timed_convert(tmp / "rl", "lerobot", tmp / "back", args.workers, n)

        t0 = time.perf_counter()
        ds = RLDSDataset(
            tmp / "rl", image_size=args.image_size, index_workers=args.workers, cache_dir=tmp / "c"
        )
        index_s = time.perf_counter() - t0
        assert ds.index_built
        result["index_frames_per_s"] = round(n / index_s, 1)
        reader = ds.frame_reader("corner2", size=None)
        idx = np.random.default_rng(0).integers(0, n, 2000)
        t0 = time.perf_counter()
        for i in idx:
            reader.read(np.array([i]))
        result["random_read_frames_per_s"] = round(len(idx) / (time.perf_counter() - t0), 1)

        sampler = make_sampler(ds, 32, 8, seed=0, cache_max_gb=0, decode_workers=args.workers)
        try:
            for _ in range(3):  # pool start-up and the first batches are not timed
                next(sampler)
            t0 = time.perf_counter()
            for _ in range(args.batches):
                next(sampler)
            stream = args.batches * 32 / (time.perf_counter() - t0)
        finally:
            sampler.close()
        result["streaming_samples_per_s"] = round(stream, 1)
        result["streaming_samples_per_s_per_worker"] = round(stream / args.workers, 1)

        run = train(
            TrainConfig(
                dataset=str(tmp / "rl"), out=str(tmp / "run"), preset="tiny", head="chunk", steps=args.train_steps,
                batch_size=32, image_size=args.image_size, log_every=max(1, args.train_steps // 5), device="cpu",
            )
        )  # fmt: skip
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        consume = statistics.median(r["samples_per_s"] for r in rows[1:] or rows)
        result["trainer_samples_per_s"] = round(consume, 1)
        result["streaming_over_trainer"] = round(stream / consume, 2)
        per_worker = stream / args.workers
        result["workers_for_8_trainers_like_this_cpu"] = math.ceil(8 * consume / per_worker)
        if args.gpu_samples_per_s:
            result["workers_for_8_gpus"] = math.ceil(8 * args.gpu_samples_per_s / per_worker)

    rows = [
        ("dataset", f"{n} frames, {args.size} px: {result['decoded_gb']} GB decoded, LeRobot {result['lerobot_mb']} MB, RLDS {result['rlds_mb']} MB"),
        ("convert LeRobot -> RLDS", f"{result['to_rlds']['frames_per_s']} frames/s, peak RSS {result['to_rlds']['peak_rss_mb']} MB"),
        ("convert RLDS -> LeRobot", f"{result['to_lerobot']['frames_per_s']} frames/s, peak RSS {result['to_lerobot']['peak_rss_mb']} MB"),
        ("RLDS index build", f"{result['index_frames_per_s']} frames/s"),
        ("random frame reads (1 process)", f"{result['random_read_frames_per_s']} frames/s"),
        (f"streaming batches ({args.workers} workers)", f"{result['streaming_samples_per_s']} samples/s"),
        ("tiny trainer consumes", f"{result['trainer_samples_per_s']} samples/s (ratio {result['streaming_over_trainer']}x)"),
        ("decode workers for 8 such trainers", str(result["workers_for_8_trainers_like_this_cpu"])),
    ]  # fmt: skip
    if "workers_for_8_gpus" in result:
        rows.append(
            (f"decode workers for 8 GPUs at {args.gpu_samples_per_s:g}/s", str(result["workers_for_8_gpus"]))
        )
    width = max(len(r[0]) for r in rows)
    print(f"\nRLDS benchmark ({result['machine']})")
    for k, v in rows:
        print(f"  {k:{width}s}  {v}")
    out = Path(args.out)
    write_json(out, result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
