"""OpenVLA-7B at its real size, with random weights: load memory and time, and the speed of one action.

    .venv/bin/python bench/bench_openvla.py [--dir /tmp/openvla-7b-random] [--actions 1] [--dtype bfloat16]

1. Writes (once, reused afterwards) a checkpoint in OpenVLA's Hugging Face layout with the exact shapes of
   `openvla/openvla-7b` (fused DINOv2-L/14-reg4 + SigLIP So400m/14, Llama-2 7B with a 32064-row vocab):
   timm key names, bf16, ~5 GB shards and their index, dataset_statistics.json and a stand-in
   tokenizer.json (a word-level vocabulary with Llama-2's special ids; the weights are random anyway).
2. In a fresh process, loads it with `Policy.from_pretrained` (parameters built on the meta device, shards
   memory-mapped, `assign=True`) and records the peak resident memory against the size of the weights,
   then touches every weight (the resident size of a model in use) and, with `--actions N`, times N
   `predict_action` calls at batch 1.

The usual way (random init, then a loaded state dict copied in) holds the model twice, the first time in
float32 (30 GB for 7.5 B parameters), which does not fit this 24 GB machine at all, so the reference point
here is the size of the weights themselves. Writes bench/results/openvla.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from vlaforge.atomic import write_json

WORDS = [
    "In:",
    "What",
    "action",
    "should",
    "the",
    "robot",
    "take",
    "to",
    "pick",
    "up",
    "red",
    "block?",
    "Out:",
]


def write_checkpoint(root: Path, dtype: torch.dtype, shard_bytes: int = 5 * 10**9) -> int:
    """Random OpenVLA-7B weights in OpenVLA's layout; returns their size in bytes."""
    from vlaforge.models import openvla
    from vlaforge.models.policy import Policy
    from vlaforge.models.presets import get_preset

    root.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(root)
    stats = {
        "bridge_orig": {
            "action": {
                "mean": [0.0] * 7,
                "std": [1.0] * 7,
                "min": [-1.0] * 7,
                "max": [1.0] * 7,
                "q01": [-0.03, -0.04, -0.03, -0.09, -0.1, -0.2, 0.0],
                "q99": [0.03, 0.04, 0.04, 0.1, 0.1, 0.2, 1.0],
                "mask": [True] * 6 + [False],
            },
            "proprio": {k: [0.0] * 7 for k in ("mean", "std", "min", "max", "q01", "q99")},
            "num_transitions": 0,
            "num_trajectories": 0,
        }
    }
    (root / "dataset_statistics.json").write_text(json.dumps(stats, indent=2))
    preset = get_preset("openvla-7b").with_overrides(tokenizer_path=str(root), image_resize="bicubic-pil")
    emb = openvla.embodiment_from_stats(stats, 224)
    with openvla.parameters_on_meta():  # shapes only
        policy = Policy(
            preset,
            {"kind": "tokens", "chunk_size": 1},
            emb,
            openvla.stats_to_norm("bridge_orig", stats["bridge_orig"], "bench"),
        )
    ours = dict(policy.state_dict())
    shapes: dict[str, tuple[int, ...]] = {}
    for g in openvla.weight_groups(preset, set(ours)):
        for k, t in zip(g.theirs, g.save(*[ours[k] for k in g.ours])):
            shapes[k] = tuple(t.shape)
    gen = torch.Generator().manual_seed(0)
    keys = sorted(shapes)
    shard: dict[str, torch.Tensor] = {}
    size, total, files, weight_map = 0, 0, [], {}

    def flush() -> None:
        name = f"model-{len(files) + 1:05d}-of-XXXXX.safetensors"
        save_file(shard, str(root / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in shard})
        shard.clear()

    for k in tqdm(keys, desc="random 7B weights", unit="tensor"):
        n = int(np.prod(shapes[k])) * torch.finfo(dtype).bits // 8
        if shard and size + n > shard_bytes:
            flush()
            size = 0
        shard[k] = (torch.randn(shapes[k], generator=gen) * 0.02).to(dtype)
        size += n
        total += n
    flush()
    final = {f: f.replace("XXXXX", f"{len(files):05d}") for f in files}
    for f, g in final.items():
        os.replace(root / f, root / g)
    (root / openvla.INDEX_FILE).write_text(
        json.dumps(
            {"metadata": {"total_size": total}, "weight_map": {k: final[f] for k, f in weight_map.items()}}
        )
    )
    source = openvla.openvla_config(policy.to_bundle(), stats)
    source["torch_dtype"] = source["text_config"]["torch_dtype"] = str(dtype).replace("torch.", "")
    (root / "config.json").write_text(json.dumps(source, indent=2))
    (root / "preprocessor_config.json").write_text(json.dumps(openvla.preprocessor_config(preset), indent=2))
    return total


def _write_tokenizer(root: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"<extra_{i}>": i for i in range(32001)}
    for i, tok in enumerate(["<unk>", "<s>", "</s>"]):
        vocab.pop(f"<extra_{i}>")
        vocab[tok] = i
    for i, w in enumerate(WORDS, start=3):
        vocab.pop(f"<extra_{i}>")
        vocab[w] = i
    vocab.pop("<extra_29871>")
    vocab["\u2581"] = 29871
    vocab.pop("<extra_32000>")
    vocab["<PAD>"] = 32000
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.save(str(root / "tokenizer.json"))


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB, from /proc."""
    now = peak = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            now = int(line.split()[1]) / 1024
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return now, peak


def child(root: str, actions: int) -> None:
    """Runs in a fresh process: load, measure, act; prints one JSON line."""
    torch.set_num_threads(os.cpu_count() or 1)
    from vlaforge.models.policy import Policy

    base_rss, _ = _rss_mb()
    t0 = time.perf_counter()
    policy = Policy.from_pretrained(root)
    load_s = time.perf_counter() - t0
    after_load, peak_load = _rss_mb()
    weight_bytes = sum(t.numel() * t.element_size() for t in policy.state_dict().values())
    touch = 0.0
    for p in policy.parameters():  # every page of every weight, as inference would
        touch += float(p.detach()[..., :1].float().sum())
    in_use, peak_touch = _rss_mb()
    out = {
        "mode": "vlaforge",
        "load_s": load_s,
        "weights_gb": weight_bytes / 1e9,
        "rss_before_gb": base_rss / 1024,
        "rss_after_load_gb": after_load / 1024,
        "peak_rss_load_gb": peak_load / 1024,
        "rss_in_use_gb": in_use / 1024,
        "peak_rss_gb": peak_touch / 1024,
    }
    if actions:
        rng = np.random.default_rng(0)
        obs = {
            "images": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "instruction": "pick up the red block",
        }
        times = []
        for _ in range(actions):
            t0 = time.perf_counter()
            policy.predict_action(obs, unnorm_key="bridge_orig")
            times.append(time.perf_counter() - t0)
        out["action_s"] = times
        out["peak_rss_gb"] = _rss_mb()[1] / 1024
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/openvla-7b-random", help="where the random checkpoint is kept")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--actions", type=int, default=0, help="predict_action calls to time after loading")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "openvla.json"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], int(a.child[1]))
        return
    root = Path(a.dir)
    dtype = getattr(torch, a.dtype)
    if not (root / "model.safetensors.index.json").is_file():
        t0 = time.perf_counter()
        total = write_checkpoint(root, dtype)
        print(f"wrote {total / 1e9:.2f} GB of random weights to {root} in {time.perf_counter() - t0:.0f} s")
    cmd = [sys.executable, __file__, "--child", str(root), str(a.actions)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"the load failed (exit {proc.returncode})")
    rows = [json.loads(line[len("RESULT ") :])]
    print(
        f"\nOpenVLA-7B, random weights, {a.dtype}, {os.cpu_count()} CPU threads ({platform.processor() or platform.machine()})"
    )
    print(
        f"{'load':<10} {'weights GB':>10} {'load s':>7} {'peak RSS at load':>17} {'RSS in use':>11} {'peak / weights':>15}"
    )
    for r in rows:
        print(
            f"{r['mode']:<10} {r['weights_gb']:>10.2f} {r['load_s']:>7.1f} {r['peak_rss_load_gb']:>14.2f} GB "
            f"{r['rss_in_use_gb']:>8.2f} GB {r['peak_rss_gb'] / r['weights_gb']:>15.2f}"
        )
        if r.get("action_s"):
            s = r["action_s"]
            print(
                f"  predict_action at batch 1: {', '.join(f'{x:.1f}' for x in s)} s ({1 / min(s):.3f} actions/s)"
            )
    report = {
        "bench": "openvla-7b load",
        "machine": {
            "cpu_threads": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "dtype": a.dtype,
        "weights": "random (same shapes and layout as openvla/openvla-7b)",
        "rows": rows,
    }
    out = Path(a.out)
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
