"""pi0 and SmolVLA at their real sizes (random weights): parameters, a LeRobot-layout checkpoint, the memory
a load takes, and CPU inference speed.

    python bench/bench_families.py                    # both families
    python bench/bench_families.py --families smolvla

Per family, in fresh processes (so each peak RSS is its own):
1. write: the model is built on the meta device, its parameters drawn at random (normal, std 0.02) in the
   checkpoint's dtype (bfloat16 for pi0, ~6.6 GB; float32 for SmolVLA), and saved in LeRobot's layout
   into a temporary directory;
2. load: `Policy.from_pretrained` (memory-mapped, built on meta), every weight page touched, then one
   prediction (batch 1, one 224 px camera, 10 flow steps) timed.
Prints a table and writes bench/results/families.json (`vlaforge.atomic.write_json`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "families.json"
DTYPES = {"pi0": torch.bfloat16, "smolvla": torch.float32}


def _rss_gb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in GB, from /proc."""
    now = peak = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            now = int(line.split()[1]) / 2**20
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 2**20
    return now, peak


def real_config(family: str) -> dict:
    """The family's real-size configuration as LeRobot's config.json dict (the config class's defaults)."""
    from vlaforge.models.family import family_classes

    cfg_cls, _ = family_classes(family)
    return dict((cfg_cls.real() if hasattr(cfg_cls, "real") else cfg_cls()).to_lerobot())


def write(family: str, out: str) -> None:
    """Child: a random real-size checkpoint in LeRobot's layout at `out`; prints one JSON line."""
    from tqdm import tqdm

    from vlaforge.models.family import family_preset
    from vlaforge.models.formats.base import parameters_on_meta
    from vlaforge.models.lerobot_tiny import random_stats, tiny_embodiment, write_tokenizer
    from vlaforge.models.policy import Policy

    root = Path(out)
    write_tokenizer(root.parent / "tok")
    cfg = real_config(family)
    emb = tiny_embodiment(action_dim=7, state_dim=8, cameras=("image",))
    emb.image_size = 224
    preset = family_preset(family, cfg, str(root.parent / "tok"))
    with parameters_on_meta():
        policy = Policy(
            preset, {"kind": family, "chunk_size": preset.chunk_size}, emb, random_stats(emb), "mean_std"
        )
    dtype, g = DTYPES[family], torch.Generator().manual_seed(0)
    made: dict[int, torch.nn.Parameter] = {}
    modules = list(policy.modules())
    for m in tqdm(modules, desc=f"random {family}", unit="module", mininterval=5):
        for name, p in list(m._parameters.items()):
            if p is None:
                continue
            if id(p) not in made:  # tied parameters stay tied
                t = torch.empty(p.shape, dtype=dtype)
                t.normal_(0.0, 0.02, generator=g) if t.is_floating_point() else t.zero_()
                made[id(p)] = torch.nn.Parameter(t, requires_grad=False)
            m._parameters[name] = made[id(p)]
    params = sum(p.numel() for p in made.values())
    t0 = time.perf_counter()
    policy.save_pretrained(root, format="lerobot")
    save_s = time.perf_counter() - t0
    size = (root / "model.safetensors").stat().st_size
    print("RESULT " + json.dumps({"params": params, "save_s": save_s, "file_bytes": size}), flush=True)


def load(family: str, out: str) -> None:
    """Child: load the checkpoint at `out`, touch every weight, time one prediction; one JSON line."""
    torch.set_num_threads(os.cpu_count() or 1)
    from vlaforge.models.policy import Policy

    base, _ = _rss_gb()
    t0 = time.perf_counter()
    policy = Policy.from_pretrained(out)
    load_s = time.perf_counter() - t0
    after_load, peak_load = _rss_gb()
    unique = {id(t): t for t in policy.state_dict(keep_vars=True).values()}  # a tied tensor once
    weights = sum(t.numel() * t.element_size() for t in unique.values())
    for p in policy.parameters():  # every page, as inference reads them
        p.detach().sum()
    in_use, peak_touch = _rss_gb()
    rng = np.random.default_rng(0)
    obs = {
        "images": {"image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)},
        "state": rng.standard_normal(policy.embodiment.state_dim).astype(np.float32),
        "instruction": "pick up the red block",
    }
    t0 = time.perf_counter()
    actions = policy.predict_action(obs, num_steps=10)
    predict_s = time.perf_counter() - t0
    out_d = {
        "weights_bytes": weights,
        "dtype": str(next(policy.parameters()).dtype).replace("torch.", ""),
        "load_s": load_s,
        "rss_before_gb": base,
        "rss_after_load_gb": after_load,
        "peak_rss_load_gb": peak_load,
        "rss_in_use_gb": in_use,
        "peak_rss_gb": max(peak_touch, _rss_gb()[1]),
        "predict_s": predict_s,
        "chunk": int(actions.shape[0]),
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(out_d), flush=True)


def _child(stage: str, family: str, out: str) -> dict:
    cmd = [sys.executable, __file__, "--stage", stage, "--families", family, "--dir", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{stage} {family} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", default="smolvla,pi0")
    p.add_argument("--stage", choices=["write", "load"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.stage:
        (write if a.stage == "write" else load)(a.families, a.dir)
        return
    from vlaforge.atomic import write_json

    rows = []
    for family in a.families.split(","):
        with tempfile.TemporaryDirectory(dir=os.environ.get("VLAFORGE_BENCH_TMP")) as tmp:
            out = str(Path(tmp) / "ckpt")
            t0 = time.perf_counter()
            w = _child("write", family, out)
            r = _child("load", family, out)
            row = {"family": family, **w, **r, "wall_s": time.perf_counter() - t0}
            row["peak_over_weights"] = row["peak_rss_gb"] * 2**30 / row["weights_bytes"]
            row["load_over_weights"] = (
                (row["peak_rss_gb"] - row["rss_before_gb"]) * 2**30 / row["weights_bytes"]
            )
            row["actions_per_s"] = row["chunk"] / row["predict_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        f"\n{'family':<8} {'params':>9} {'dtype':>9} {'weights GB':>10} {'load s':>7} {'peak RSS':>9} "
        f"{'peak/w':>7} {'(peak-base)/w':>13} {'predict s':>9} {'actions/s':>9}"
    )
    for r in rows:
        print(
            f"{r['family']:<8} {r['params'] / 1e6:>8.1f}M {r['dtype']:>9} {r['weights_bytes'] / 1e9:>10.2f} "
            f"{r['load_s']:>7.1f} {r['peak_rss_gb']:>7.2f}GB {r['peak_over_weights']:>7.2f} "
            f"{r['load_over_weights']:>13.2f} {r['predict_s']:>9.1f} {r['actions_per_s']:>9.2f}"
        )
    write_json(RESULTS, {"machine": f"{os.cpu_count()} CPU cores", "rows": rows})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
