"""A tiny RL run that must improve a deliberately weakened policy (a test that can fail).

The policy: the tiny preset with its chunk head's output layer scaled by 0.05 (bias zeroed), so it asks for
almost no motion; with the exploration noise it closes Meta-World's drawer (drawer-close-v3, 40 steps) in
about one episode in six. PPO on the success flag alone must raise the rate: the last iterations' episodes
against the first iterations', each a fresh draw of training scenes, by a two-proportion z-statistic
above 2 (beyond the noise of the episode counts).
"""

from __future__ import annotations

import json
import math

import pytest

from vlaforge.rl.config import RLConfig
from vlaforge.rl.loop import run_rl

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_ppo_improves_a_weak_policy(tmp_path, weak_policy):
    init = weak_policy(tmp_path / "init")
    cfg = RLConfig(
        init=str(init), out=str(tmp_path / "run"), tasks="drawer-close", iterations=16, envs=16, max_steps=40,
        lr=1e-3, minibatch=16, epochs=4, init_log_std=-1.1, device="cpu", save_every=100,
    )  # fmt: skip
    run = run_rl(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert (
        len(rows) == 16 and (run / "curve.png").is_file() and (run / "policy" / "model.safetensors").is_file()
    )
    k = 4
    n = k * cfg.envs
    first = sum(r["success_rate"] for r in rows[:k]) / k
    last = sum(r["success_rate"] for r in rows[-k:]) / k
    pooled = (first + last) / 2
    z = (last - first) / math.sqrt(max(pooled * (1 - pooled), 1e-9) * 2 / n)
    assert z > 2.0, f"success {first:.3f} -> {last:.3f} over {n} episodes each (z = {z:.2f})"
    assert rows[-1]["kl_to_initial"] > 0 and all(0 <= r["clip_fraction"] <= 1 for r in rows)
