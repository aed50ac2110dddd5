"""Data-parallel training with two CPU processes (Gloo) launched by torchrun, then resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vlaforge.models.policy import Policy
from vlaforge.train import checkpoint as ckpt
from vlaforge.train.loop import fingerprint


def _torchrun(ds, run, *extra: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "vlaforge.cli",
        "train",
        "--dataset",
        str(ds),
        "--out",
        str(run),
        "--batch-size",
        "2",
        "--log-every",
        "1",
        "--device",
        "cpu",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_gloo_processes_agree_and_resume(tiny_dataset, tmp_path):
    run = tmp_path / "ddp"
    _torchrun(tiny_dataset, run, "--steps", "2", "--schedule", "constant")  # constant: `--steps` may grow
    _torchrun(tiny_dataset, run, "--steps", "3", "--resume")

    state = ckpt.read_trainer_state(run / "last")
    assert state["step"] == 3 and state["world_size"] == 2
    ranks = state["ranks"]
    # Both ranks hold the same weights after every all-reduced step ...
    assert ranks[0]["weights_fingerprint"] == ranks[1]["weights_fingerprint"]
    # ... which are the weights rank 0 saved.
    saved = Policy.from_pretrained(run / "last")
    assert fingerprint(list(saved.parameters())) == ranks[0]["weights_fingerprint"]
    # Each rank read its own shard and kept its own RNG streams.
    assert [r["sampler"]["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["rng"]["torch"] != ranks[1]["rng"]["torch"]
    # Only rank 0 logged: one line per step, the resumed steps appended.
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


@pytest.mark.slow
def test_sigterm_stops_every_rank_at_the_same_step_and_resumes(tiny_dataset, tmp_path):
    """torchrun forwards SIGTERM to both ranks, each at its own moment: they agree on one step, save once,
    and the printed torchrun command finishes the run."""
    import signal
    import time

    run = tmp_path / "ddp-stop"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "vlaforge.cli", "train", "--dataset", str(tiny_dataset), "--out", str(run), "--batch-size", "2",
           "--log-every", "1", "--device", "cpu", "--steps", "300"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = run / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    state = ckpt.read_trainer_state(ckpt.find_last(run))
    assert 3 <= state["step"] < 300 and state["world_size"] == 2
    assert state["ranks"][0]["weights_fingerprint"] == state["ranks"][1]["weights_fingerprint"]
    assert f"stopped at step {state['step']} of 300" in err
    assert "torchrun --nproc_per_node 2 -m vlaforge.cli train" in err
    _torchrun(tiny_dataset, run, "--resume")  # the run's own settings (300 steps) from its checkpoint
    assert ckpt.read_trainer_state(run / "last")["step"] == 300
