"""FAST action tokens per chunk against naive bins, and the round-trip error, on our datasets.

    .venv/bin/python bench/bench_fast.py [--dataset DIR ...] [--chunk-size 10] [--vocab-size 1024] [--scale 10]

For each dataset (a freshly written synthetic one, plus every ``--dataset``), with the actions normalised
and cut into chunks exactly as `vlaforge tokenizer train` does (`vlaforge.actions.fast.load_chunks`: q99
with the embodiment's mask, one chunk per frame, the last action repeated past an episode's end):

- train: a FAST tokenizer trained on every chunk (`train_tokenizer_command`) and measured on the same
  chunks: FAST tokens per chunk (mean, p95) against the H x D tokens of per-dim bins (OpenVLA), the
  compression ratio naive / FAST mean, and the round-trip max / mean abs error in robot units;
- held out: a second tokenizer trained without every fifth episode and measured on those (20%), since
  a 1024-token BPE fitted on a few thousand chunks can memorise them.

For comparison only, the FAST paper's published figures (Pertsch et al., 2025; not measured here):
BridgeV2 35 -> 20 tokens per chunk, DROID 105 -> 29 (as quoted in DESIGN.md), and a 50 Hz bimanual task
700 -> 53. Writes bench/results/fast.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vlaforge.actions.fast import FASTTokenizer, evaluate, load_chunks, train_tokenizer_command
from vlaforge.atomic import write_json
from vlaforge.data.synth import SynthConfig, write_synthetic

HOLDOUT_EVERY = 5  # the held-out tokenizer never sees episodes 4, 9, 14, ... (20%)


def held_out(dataset: str, chunk_size: int, vocab_size: int, scale: float) -> dict:
    """A tokenizer trained without every `HOLDOUT_EVERY`-th episode, measured on those episodes."""
    data = load_chunks(dataset, chunk_size)
    test = data.episode % HOLDOUT_EVERY == HOLDOUT_EVERY - 1  # spread over tasks collected in order
    if not test.any() or test.all():
        return {"skipped": "too few episodes to hold some out"}
    tok = FASTTokenizer.train(data.chunks[~test], vocab_size=vocab_size, scale=scale)
    report = evaluate(tok, data.chunks[test], data.normalizer)
    n_test = len(np.unique(data.episode[test]))
    return {"train_episodes": int(data.episode.max()) + 1 - n_test, "test_episodes": n_test, **report}


def bench_dataset(name: str, dataset: str, out: Path, a: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    train = train_tokenizer_command(dataset, str(out), a.chunk_size, a.vocab_size, a.scale)
    held = held_out(dataset, a.chunk_size, a.vocab_size, a.scale)
    return {"name": name, "train": train, "held_out": held, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", action="append", default=[], help="a dataset directory (repeatable)")
    ap.add_argument("--chunk-size", type=int, default=10, help="H, steps per chunk")
    ap.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary (paper: 1024)")
    ap.add_argument("--scale", type=float, default=10.0, help="DCT coefficient scale (paper: 10)")
    ap.add_argument("--no-synthetic", action="store_true", help="skip the synthetic dataset")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fast.json"))
    a = ap.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        datasets = [(Path(d).name, d) for d in a.dataset]
        if not a.no_synthetic:
            cfg = SynthConfig(
                out=str(Path(tmp) / "synthetic"), episodes=20, length=50, image_size=16, tasks=4
            )
            datasets.insert(0, ("synthetic (20 x 50)", str(write_synthetic(cfg))))
        for i, (name, path) in enumerate(datasets):
            results.append(bench_dataset(name, path, Path(tmp) / f"tok{i}", a))

    print(f"\nFAST (vocab {a.vocab_size}, scale {a.scale:g}) vs per-dim bins; errors in robot units")
    head = (
        f"{'dataset':<22}{'D':>3}{'H':>4}{'chunks':>8}{'naive':>7}{'FAST mean':>11}{'p95':>6}{'ratio':>7}"
        f"{'held-out':>10}{'ratio':>7}{'max err':>10}{'mean err':>10}"
    )
    print(head)
    for r in results:
        t, h = r["train"], r["held_out"]
        h_mean = h.get("fast_tokens_mean", float("nan"))
        h_ratio = h.get("compression", float("nan"))
        print(
            f"{r['name']:<22}{t['action_dim']:>3}{t['chunk_size']:>4}{t['chunks']:>8}"
            f"{t['naive_tokens_per_chunk']:>7}{t['fast_tokens_mean']:>11.2f}{t['fast_tokens_p95']:>6.0f}"
            f"{t['compression']:>6.1f}x{h_mean:>10.2f}{h_ratio:>6.1f}x"
            f"{t['max_abs_error_robot']:>10.4f}{t['mean_abs_error_robot']:>10.4f}"
        )
    print(
        "ratio = naive / FAST mean; held-out: trained without every 5th episode, measured on those.\n"
        "Published (FAST paper, not measured here): BridgeV2 35 -> 20, DROID 105 -> 29, "
        "50 Hz bimanual 700 -> 53."
    )

    report = {
        "chunk_size": a.chunk_size,
        "vocab_size": a.vocab_size,
        "scale": a.scale,
        "numpy": np.__version__,
        "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "datasets": results,
        "definition": "ratio = H * D naive bin tokens / mean FAST tokens per chunk; errors are max / mean "
        "abs of decode(encode(x)) - x after un-normalising both, in robot units",
        "published_not_measured": {
            "BridgeV2": "35 -> 20",
            "DROID": "105 -> 29",
            "50 Hz bimanual": "700 -> 53",
        },
    }
    out = Path(a.out)
    write_json(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
