"""Inverse dynamics model (IDM) and latent action model (LAM): training step time and labelling speed.

    .venv/bin/python bench/bench_idm.py [--steps 40] [--batch-sizes 8,32] [--threads 1]

On a synthetic dataset at 64 px (the demo's image size), with each model's default sizes:

- training: the real loops (`vlaforge idm train`, `vlaforge latent train`) at each batch size; the step
  time is the median over logging windows of the loop's own elapsed time per step (sampling a batch,
  forward, backward, optimizer), skipping the first window (warm-up);
- labelling: `vlaforge idm label` and `vlaforge latent label` over the whole dataset, frames labelled per
  second of wall time (decoding the source videos, the model's forward passes and writing the new
  dataset with its re-encoded videos), and the same figure over the dataset's frame rate (how many times
  faster than real time).

Baseline in the same run: the tiny policy's training step (chunk head, `vlaforge train`) at each batch
size, so each model's step time is also given as a fraction of a policy step: the price of labelling the
data before training the policy on it. Prints a table and writes bench/results/idm.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vlaforge.atomic import write_json
from vlaforge.data.synth import SynthConfig, write_synthetic
from vlaforge.idm.config import IdmConfig, IdmLabelConfig
from vlaforge.idm.label import label_dataset as idm_label
from vlaforge.idm.train import train_idm
from vlaforge.latent.config import LabelConfig, LatentConfig
from vlaforge.latent.label import label_dataset as lam_label
from vlaforge.latent.train import train_lam
from vlaforge.train.loop import TrainConfig, train


def _step_ms(metrics: Path, steps: int) -> float:
    """Median ms per step over the logging windows after the first, from cumulative ``elapsed_s``."""
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    per = [
        (b["elapsed_s"] - a["elapsed_s"]) / (b["step"] - a["step"]) * 1e3
        for a, b in zip(rows, rows[1:], strict=False)
        if b["step"] > a["step"]
    ]
    return statistics.median(per) if per else rows[-1]["elapsed_s"] / steps * 1e3


def _policy_step_ms(metrics: Path, batch_size: int) -> float:
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    timed = rows[1:] or rows
    return batch_size / statistics.median(r["samples_per_s"] for r in timed) * 1e3


def bench_training(dataset: Path, tmp: Path, steps: int, batch_size: int, threads: int) -> dict:
    log = max(1, steps // 5)
    idm_run = train_idm(
        IdmConfig(
            dataset=str(dataset), out=str(tmp / f"idm-b{batch_size}"), steps=steps, batch_size=batch_size,
            log_every=log, device="cpu", threads=threads,
        )
    )  # fmt: skip
    idm_ms = _step_ms(tmp / f"idm-b{batch_size}" / "metrics.jsonl", steps)
    lam_run = train_lam(
        LatentConfig(
            dataset=str(dataset), out=str(tmp / f"lam-b{batch_size}"), steps=steps, batch_size=batch_size,
            log_every=log, save_every=steps, device="cpu", threads=threads,
        )
    )  # fmt: skip
    lam_ms = _step_ms(tmp / f"lam-b{batch_size}" / "metrics.jsonl", steps)
    pol = train(
        TrainConfig(
            dataset=str(dataset), out=str(tmp / f"policy-b{batch_size}"), preset="tiny", head="chunk",
            steps=steps, batch_size=batch_size, log_every=log, device="cpu", threads=threads,
        )
    )  # fmt: skip
    pol_ms = _policy_step_ms(pol / "metrics.jsonl", batch_size)
    return {
        "batch_size": batch_size,
        "idm_step_ms": round(idm_ms, 2),
        "lam_step_ms": round(lam_ms, 2),
        "policy_step_ms": round(pol_ms, 2),
        "idm_over_policy": round(idm_ms / pol_ms, 3),
        "lam_over_policy": round(lam_ms / pol_ms, 3),
        "_runs": (idm_run, lam_run),
    }


def bench_labelling(dataset: Path, idm_run: Path, lam_run: Path, tmp: Path, frames: int, fps: float) -> dict:
    out = {}
    for name, fn, cfg in (
        ("idm", idm_label, IdmLabelConfig(src=str(dataset), idm=str(idm_run), out=str(tmp / "idm-lab"), device="cpu")),
        ("lam", lam_label, LabelConfig(src=str(dataset), lam=str(lam_run), out=str(tmp / "lam-lab"), device="cpu")),
    ):  # fmt: skip
        t0 = time.perf_counter()
        fn(cfg)
        wall = time.perf_counter() - t0
        out[name] = {
            "frames": frames,
            "wall_s": round(wall, 2),
            "frames_per_s": round(frames / wall, 1),
            "x_real_time": round(frames / wall / fps, 2),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="training steps per model and batch size")
    ap.add_argument("--batch-sizes", default="8,32", help="comma list of training batch sizes")
    ap.add_argument("--episodes", type=int, default=8, help="synthetic episodes (labelled in full)")
    ap.add_argument("--length", type=int, default=60, help="frames per synthetic episode")
    # One thread by default, as bench_train.py: stable timings on a machine shared with other jobs.
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "idm.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    sizes = [int(b) for b in a.batch_sizes.split(",") if b.strip()]

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        synth = SynthConfig(out=str(tmp / "ds"), episodes=a.episodes, length=a.length, image_size=64)
        dataset = write_synthetic(synth)
        training = [bench_training(dataset, tmp, a.steps, b, a.threads) for b in sizes]
        idm_run, lam_run = training[-1].pop("_runs")
        for r in training:
            r.pop("_runs", None)
        labelling = bench_labelling(dataset, idm_run, lam_run, tmp, a.episodes * a.length, synth.fps)

    print(
        f"\n64 px synthetic dataset, {a.steps} steps, {torch.get_num_threads()} thread(s); ms per training step"
    )
    print(f"{'batch':>6}{'IDM ms':>9}{'LAM ms':>9}{'policy ms':>11}{'IDM/policy':>12}{'LAM/policy':>12}")
    for r in training:
        print(
            f"{r['batch_size']:>6}{r['idm_step_ms']:>9.1f}{r['lam_step_ms']:>9.1f}{r['policy_step_ms']:>11.1f}"
            f"{r['idm_over_policy']:>12.2f}{r['lam_over_policy']:>12.2f}"
        )
    print(f"\n{'labelling':<10}{'frames':>8}{'wall s':>9}{'frames/s':>10}{'x real time':>13}")
    for name, r in labelling.items():
        print(
            f"{name:<10}{r['frames']:>8}{r['wall_s']:>9.2f}{r['frames_per_s']:>10.1f}{r['x_real_time']:>13.2f}"
        )

    report = {
        "image_size": 64,
        "dataset": {"episodes": a.episodes, "length": a.length, "fps": synth.fps},
        "steps": a.steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "training": training,
        "labelling": labelling,
        "wall_s": round(time.perf_counter() - t_all, 1),
        "definition": "step ms: median over logging windows (first skipped) of the loop's elapsed time per "
        "step; policy: tiny preset, chunk head, batch / samples_per_s; labelling frames/s: whole command, "
        "wall time",
    }
    out = Path(a.out)
    write_json(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
