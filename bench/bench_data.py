"""Data pipeline benchmark: dataset writing, video cache build, the chunk sampler, and statistics.

Builds a synthetic LeRobotDataset v3.0 (default 50 episodes x 100 frames, one 128 px camera) in a temp
dir, then measures, in the same run:

1. ChunkSampler samples/s at batch 32, chunk 8 (after the decoded-video cache is built; the cache build
   is timed separately), against a baseline that assembles the same batches from per-frame
   `LeRobotDataset.__getitem__` calls (one call for the observation, one per chunk step for the actions,
   as a map-style dataset with per-frame access would). The ratio is the figure of merit.
2. Streaming mode (frames decoded by `--decode-workers` spawned processes, `--prefetch` batches ahead,
   as when the cache would pass `cache_max_gb`) against cached mode on the same batches (same seed; the
   first batches are checked bitwise equal): samples/s of both and their ratio. The pool's start-up and
   first batch are not timed.
3. compute_stats frames/s over every column of the dataset (numeric columns + the camera's frames).
4. With `--cache-size-of DIR`: the frame cache of a real dataset at `--size`, built and measured on disk
   (the MT10 x 50 figure: `vlaforge collect --tasks mt10 --episodes 50 --image-size 128 --out DIR`).

Prints a table and writes bench/results/data.json.

    .venv/bin/python bench/bench_data.py [--episodes 50] [--frames 100] [--size 128] [--gop N]
                                         [--cache-size-of DIR]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vlaforge.atomic import write_json
from vlaforge.data.lerobot import LeRobotDataset, LeRobotWriter
from vlaforge.data.sampler import ChunkSampler
from vlaforge.data.stats import compute_stats

KEY = "observation.images.corner2"


def synthetic_images(T: int, size: int, seed: int) -> np.ndarray:
    """uint8 (T, size, size, 3) smooth moving gradients."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = np.arange(T, dtype=np.float32)[:, None, None]
    r = 128 + 100 * np.sin(xx * 4 + t * 0.1 + seed)
    g = 128 + 100 * np.cos(yy * 3 - t * 0.07 + seed)
    b = 128 + 100 * np.sin((xx + yy) * 2 + t * 0.05)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def build(root: Path, episodes: int, frames_per_episode: int, size: int, gop: int | None = None) -> float:
    feats = {
        KEY: {"dtype": "video", "shape": [size, size, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "grip"]},
        "action": {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "gripper"]},
    }
    rng = np.random.default_rng(0)
    spent = 0.0  # writer time only: generating the synthetic images is not counted
    t0 = time.perf_counter()
    writer = LeRobotWriter(root, fps=80, features=feats, robot_type="sawyer", video_gop=gop)
    spent += time.perf_counter() - t0
    with writer:
        for e in range(episodes):
            frames = {
                KEY: synthetic_images(frames_per_episode, size, e),
                "observation.state": rng.normal(size=(frames_per_episode, 4)).astype(np.float32),
                "action": rng.uniform(-1, 1, size=(frames_per_episode, 4)).astype(np.float32),
            }
            t0 = time.perf_counter()
            writer.add_episode(f"task {e % 5}", frames)
            spent += time.perf_counter() - t0
        t0 = time.perf_counter()
        writer.finalize()
        spent += time.perf_counter() - t0
    return spent


def baseline_batch(ds: LeRobotDataset, idx: np.ndarray, H: int) -> dict:
    """The same batch as ChunkSampler, built from per-frame __getitem__ calls."""
    images, states, actions, pads, instr = [], [], [], [], []
    ep_index = ds.column("episode_index")
    for i in idx.tolist():
        item = ds[i]
        images.append(item[KEY])
        states.append(item["observation.state"])
        instr.append(item["task"])
        end = ds.episode_frames(int(ep_index[i])).stop
        chunk = [ds[min(i + k, end - 1)]["action"] for k in range(H)]
        actions.append(np.stack(chunk))
        pads.append([i + k >= end for k in range(H)])
    return {
        "images": {"corner2": torch.from_numpy(np.stack(images))},
        "state": torch.from_numpy(np.stack(states)),
        "instruction": instr,
        "actions": torch.from_numpy(np.stack(actions)),
        "action_pad": torch.tensor(pads),
        "index": torch.from_numpy(idx),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--stream-batches", type=int, default=40, help="timed batches in streaming mode")
    p.add_argument("--decode-workers", type=int, default=2)
    p.add_argument("--prefetch", type=int, default=None, help="streaming look-ahead (default 2 per worker)")
    p.add_argument("--gop", type=int, default=None, help="keyframe interval of the mp4s (default: encoder's)")
    p.add_argument("--cache-size-of", default=None, help="a dataset whose frame cache at --size to measure")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.json"))
    a = p.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bench_ds"
        write_s = build(root, a.episodes, a.frames, a.size, a.gop)
        ds = LeRobotDataset(root)
        n = ds.num_frames
        t0 = time.perf_counter()
        ds.video_frames(KEY)
        cache_s = time.perf_counter() - t0

        sampler = ChunkSampler(ds, batch_size=a.batch_size, chunk_size=a.chunk, seed=0)
        it = iter(sampler)
        next(it)  # warm the page cache
        t0 = time.perf_counter()
        for _ in range(a.batches):
            next(it)
        sampler_sps = a.batches * a.batch_size / (time.perf_counter() - t0)

        # the baseline on the same index stream, with equality checked on one batch
        ref = ChunkSampler(ds, batch_size=a.batch_size, chunk_size=a.chunk, seed=1)
        idx = ref.next_indices()
        fast, slow = ref.batch_from_indices(idx), baseline_batch(ds, idx, a.chunk)
        assert all(torch.equal(fast[k], slow[k]) for k in ("state", "actions", "action_pad", "index"))
        assert torch.equal(fast["images"]["corner2"], slow["images"]["corner2"])
        base_batches = max(5, a.batches // 20)
        t0 = time.perf_counter()
        for _ in range(base_batches):
            baseline_batch(ds, ref.next_indices(), a.chunk)
        baseline_sps = base_batches * a.batch_size / (time.perf_counter() - t0)

        # streaming vs cached on the same batches (same seed); pool start-up and first batch untimed
        cached = ChunkSampler(ds, batch_size=a.batch_size, chunk_size=a.chunk, seed=2)
        stream = ChunkSampler(
            ds,
            batch_size=a.batch_size,
            chunk_size=a.chunk,
            seed=2,
            cache_max_gb=0,
            decode_workers=a.decode_workers,
            prefetch=a.prefetch,
        )
        try:
            for _ in range(2):
                x, y = next(cached), next(stream)
                assert torch.equal(x["images"]["corner2"], y["images"]["corner2"])
                assert torch.equal(x["index"], y["index"]) and torch.equal(x["actions"], y["actions"])
            t0 = time.perf_counter()
            for _ in range(a.stream_batches):
                next(stream)
            stream_sps = a.stream_batches * a.batch_size / (time.perf_counter() - t0)
        finally:
            stream.close()
        t0 = time.perf_counter()
        for _ in range(a.stream_batches):
            next(cached)
        cached_sps = a.stream_batches * a.batch_size / (time.perf_counter() - t0)

        arrays = {k: ds.column(k) for k in ("action", "observation.state", "timestamp", "index")}
        arrays[KEY] = ds.video_frames(KEY)
        t0 = time.perf_counter()
        compute_stats(arrays)
        stats_s = time.perf_counter() - t0
        size_mb = ds.size_bytes() / 1e6

    result = {
        "dataset": {
            "episodes": a.episodes,
            "frames": n,
            "image_size": a.size,
            "cameras": 1,
            "size_mb": size_mb,
        },
        "write_s": write_s,
        "write_frames_per_s": n / write_s,
        "cache_build_s": cache_s,
        "cache_build_frames_per_s": n / cache_s,
        "batch_size": a.batch_size,
        "chunk_size": a.chunk,
        "sampler_samples_per_s": sampler_sps,
        "getitem_baseline_samples_per_s": baseline_sps,
        "speedup": sampler_sps / baseline_sps,
        "streaming": {
            "decode_workers": a.decode_workers,
            "prefetch": stream.prefetch,
            "gop": a.gop,
            "batches": a.stream_batches,
            "cached_samples_per_s": cached_sps,
            "streamed_samples_per_s": stream_sps,
            "cached_over_streamed": cached_sps / stream_sps,
        },
        "stats_s": stats_s,
        "stats_frames_per_s": n / stats_s,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.processor(),
        },
    }
    rows = [
        ("dataset", f"{a.episodes} eps x {a.frames} frames, {a.size}px, {size_mb:.1f} MB"),
        ("write (encode + parquet + stats)", f"{write_s:.2f} s  ({n / write_s:,.0f} frames/s)"),
        ("video cache build", f"{cache_s:.2f} s  ({n / cache_s:,.0f} frames/s)"),
        (f"ChunkSampler B={a.batch_size} H={a.chunk}", f"{sampler_sps:,.0f} samples/s"),
        ("per-frame __getitem__ baseline", f"{baseline_sps:,.0f} samples/s"),
        ("speedup", f"{sampler_sps / baseline_sps:.1f}x"),
        ("same batches, cached", f"{cached_sps:,.0f} samples/s"),
        (
            f"same batches, streamed ({a.decode_workers} decode workers, gop {a.gop or 'default'})",
            f"{stream_sps:,.0f} samples/s",
        ),
        ("cached / streamed", f"{cached_sps / stream_sps:.1f}x"),
        ("compute_stats (all columns)", f"{stats_s:.2f} s  ({n / stats_s:,.0f} frames/s)"),
    ]
    if a.cache_size_of:
        from vlaforge.data.dataset import open_dataset

        big = open_dataset(a.cache_size_of, image_size=a.size)
        t0 = time.perf_counter()
        frames = {c: big.frames(c) for c in big.camera_names}  # built (or reused) on disk
        build_s = time.perf_counter() - t0
        files = sorted(Path(big.cache_dir).glob(f"*.{a.size}x{a.size}.u8"))
        on_disk = sum(f.stat().st_size for f in files)
        result["cache_size"] = {
            "dataset": str(a.cache_size_of),
            "episodes": big.num_episodes,
            "frames": big.num_frames,
            "cameras": list(big.camera_names),
            "image_size": a.size,
            "cache_bytes": on_disk,
            "cache_bytes_expected": big.cache_bytes(),
            "array_bytes": sum(int(f.nbytes) for f in frames.values()),
            "build_or_open_s": build_s,
            "dataset_mb": big.size_bytes() / 1e6,
        }
        rows.append(
            (
                f"frame cache of {a.cache_size_of} at {a.size}px",
                f"{big.num_episodes} eps, {big.num_frames:,} frames -> {on_disk / 1e9:.2f} GB "
                f"(dataset {big.size_bytes() / 1e6:.1f} MB)",
            )
        )
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    out = Path(a.out)
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
