"""Exact resume and crash-safe checkpoints: N steps straight == k steps, stop, resume, N - k steps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file

from vlaforge.errors import InputError
from vlaforge.models.policy import Policy
from vlaforge.train import checkpoint as ckpt
from vlaforge.train.loop import TrainConfig, train


def _cfg(ds, out, **kw) -> TrainConfig:
    # The constant schedule, so that a resume may extend `steps` (the cosine curve is laid over them).
    base = dict(dataset=str(ds), out=str(out), preset="tiny", steps=4, batch_size=2, log_every=1,
                device="cpu", schedule="constant")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    different = [k for k in ta if not np.array_equal(ta[k].numpy(), tb[k].numpy())]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tiny_dataset, tmp_path_factory):
    """4 steps in one go, per head (the reference every resumed run must equal bitwise)."""
    runs = {}
    for head in ("chunk", "tokens"):
        runs[head] = train(_cfg(tiny_dataset, tmp_path_factory.mktemp("straight") / head, head=head))
    return runs


@pytest.mark.parametrize("head", ["chunk", "tokens"])
def test_resume_is_bitwise_exact(head, straight, tiny_dataset, tmp_path):
    run = tmp_path / "split"
    train(_cfg(tiny_dataset, run, head=head), stop_after=2)
    assert ckpt.find_last(run).name == "step-0000002"
    train(_cfg(tiny_dataset, run, head=head, resume=True))
    ref, got = straight[head] / "last", run / "last"
    assert got.resolve().name == "step-0000004"
    _same_tensors(ref / "model.safetensors", got / "model.safetensors")
    _same_tensors(ref / ckpt.OPTIMIZER_FILE, got / ckpt.OPTIMIZER_FILE)
    drop = ("elapsed_s", "samples_per_s")
    strip = [{k: v for k, v in m.items() if k not in drop} for m in _metrics(run)]
    assert strip == [{k: v for k, v in m.items() if k not in drop} for m in _metrics(straight[head])]


def test_resume_from_cli_style_runs_with_more_steps(straight, tiny_dataset, tmp_path):
    """`--steps 2`, then `--steps 4 --resume` (constant schedule) equals 4 straight steps."""
    run = tmp_path / "cli"
    train(_cfg(tiny_dataset, run, steps=2))
    train(_cfg(tiny_dataset, run, steps=4, resume=True))
    _same_tensors(straight["chunk"] / "last" / "model.safetensors", run / "last" / "model.safetensors")


def test_crash_mid_save_keeps_previous_checkpoint(straight, tiny_dataset, tmp_path, monkeypatch):
    run = tmp_path / "crash"
    train(_cfg(tiny_dataset, run), stop_after=2)
    real_save = safetensors.torch.save_file

    def dies_after_partial_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)  # a torn file, as a killed process leaves it
        raise OSError("simulated crash while writing the optimizer state")

    monkeypatch.setattr(ckpt, "save_file", dies_after_partial_write)
    with pytest.raises(OSError, match="simulated crash"):
        train(_cfg(tiny_dataset, run, resume=True))
    # The failed writer removed its staging directory; a killed one leaves it behind, half written:
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000002"]
    half = run / "checkpoints" / ".step-0000004.tmp-99999"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 100)
    # `last` still names the complete step-2 checkpoint, which loads; the half one is never picked.
    assert os.readlink(run / "last") == os.path.join("checkpoints", "step-0000002")
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-0000002"]
    assert ckpt.find_last(run).name == "step-0000002"
    Policy.from_pretrained(run / "last")
    # A step dir without its trainer state (e.g. copied by hand, half) is not mistaken for a checkpoint.
    (run / "checkpoints" / "step-0000009").mkdir()
    assert ckpt.find_last(run).name == "step-0000002"

    monkeypatch.setattr(ckpt, "save_file", real_save)
    train(_cfg(tiny_dataset, run, resume=True))
    assert not half.exists() and not (run / "checkpoints" / "step-0000009").exists()
    _same_tensors(straight["chunk"] / "last" / "model.safetensors", run / "last" / "model.safetensors")


def test_resaving_a_step_never_leaves_last_dangling(tiny_dataset, tmp_path, monkeypatch):
    """Saving a step that already has a checkpoint, with a crash at the moment the new one is moved into
    place: `last` must still name a complete, loadable checkpoint."""
    run = tmp_path / "resave"
    train(_cfg(tiny_dataset, run, steps=2))
    session_dir = ckpt.find_last(run)
    assert session_dir.name == "step-0000002"
    real_replace = os.replace

    def crash_on_move_into_place(src, dst):
        if Path(src).name.startswith(".step-0000002"):  # the staged checkpoint
            raise OSError("simulated crash while moving the new checkpoint into place")
        return real_replace(src, dst)

    def save_again() -> Path:
        return ckpt.save_checkpoint(
            run,
            2,
            lambda d: Policy.from_pretrained(session_dir).save_pretrained(d),
            torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]),
            ["p"],
            ckpt.read_trainer_state(session_dir),
        )

    monkeypatch.setattr(os, "replace", crash_on_move_into_place)
    with pytest.raises(OSError, match="simulated crash"):
        save_again()
    monkeypatch.setattr(os, "replace", real_replace)
    assert ckpt.is_complete((run / "last").resolve())
    Policy.from_pretrained(run / "last")
    # Saved again without a crash: `last` moves to the new copy and the old one is gone.
    final = save_again()
    assert (run / "last").resolve() == final.resolve() and ckpt.is_complete(final)
    assert [p.name for p in ckpt.list_checkpoints(run)] == [final.name]
    Policy.from_pretrained(run / "last")


def test_last_falls_back_to_newest_complete_checkpoint(tiny_dataset, tmp_path):
    run = tmp_path / "fallback"
    train(_cfg(tiny_dataset, run, steps=2, save_every=1))
    (run / "last").unlink()
    os.symlink("checkpoints/step-does-not-exist", run / "last")
    assert ckpt.find_last(run).name == "step-0000002"


def test_keeps_last_three_checkpoints_and_writes_run_files(tiny_dataset, tmp_path):
    run = tmp_path / "keep"
    train(_cfg(tiny_dataset, run, steps=5, save_every=1, log_every=2))
    assert [p.name for p in ckpt.list_checkpoints(run)] == [f"step-000000{i}" for i in (3, 4, 5)]
    assert os.readlink(run / "last") == os.path.join("checkpoints", "step-0000005")
    assert json.loads((run / "config.json").read_text())["steps"] == 5
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [2, 4, 5]
    for r in rows:
        assert {"step", "loss", "l1", "lr", "grad_norm", "samples_per_s", "elapsed_s"} <= set(r)
        assert np.isfinite(r["loss"]) and r["samples_per_s"] > 0
    state = ckpt.read_trainer_state(run / "last")
    assert state["step"] == 5 and state["ranks"][0]["sampler"]["position"] > 0
    assert set(state["ranks"][0]["rng"]) >= {"python", "numpy", "torch"}


def test_keep_checkpoints_zero_keeps_every_step_and_each_loads(tiny_dataset, tmp_path):
    run = tmp_path / "keep-all"
    train(_cfg(tiny_dataset, run, steps=4, save_every=1, keep_checkpoints=0))
    kept = ckpt.list_checkpoints(run)
    assert [p.name for p in kept] == [f"step-000000{i}" for i in (1, 2, 3, 4)]
    # Every kept step is a policy of its own: the first and the last differ.
    first, last = (
        load_file(str(kept[0] / "model.safetensors")),
        load_file(str(kept[-1] / "model.safetensors")),
    )
    assert any(not torch.equal(first[k], last[k]) for k in first)
    with pytest.raises(InputError, match="keep_checkpoints"):
        _cfg(tiny_dataset, run, keep_checkpoints=-1)


def test_refuses_to_overwrite_or_resume_with_other_settings(tiny_dataset, tmp_path):
    run = tmp_path / "guard"
    train(_cfg(tiny_dataset, run, steps=1))
    with pytest.raises(InputError, match="--resume"):
        train(_cfg(tiny_dataset, run, steps=1))
    with pytest.raises(ValueError, match="batch_size"):
        train(_cfg(tiny_dataset, run, steps=2, batch_size=3, resume=True))
    with pytest.raises(InputError, match="no complete checkpoint"):
        train(_cfg(tiny_dataset, tmp_path / "empty", resume=True))


def test_background_batches_give_the_same_run(straight, tiny_dataset, tmp_path):
    """num_workers > 0 builds batches ahead in a thread; the checkpointed sampler state is the consumed one."""
    run = tmp_path / "prefetch"
    train(_cfg(tiny_dataset, run, num_workers=2), stop_after=2)
    state = ckpt.read_trainer_state(run / "last")
    assert state["ranks"][0]["sampler"]["position"] == 2 * 2  # 2 steps x batch 2, not what was prefetched
    train(_cfg(tiny_dataset, run, num_workers=2, resume=True))
    _same_tensors(straight["chunk"] / "last" / "model.safetensors", run / "last" / "model.safetensors")


@pytest.mark.slow
def test_sigkill_during_training_leaves_a_resumable_run(tiny_dataset, tmp_path):
    """A real crash: kill -9 a run that checkpoints every step, at an arbitrary moment, then resume."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "vlaforge.cli",
        "train",
        "--dataset",
        str(tiny_dataset),
        "--out",
        str(run),
        "--steps",
        "1000",
        "--batch-size",
        "2",
        "--save-every",
        "1",
        "--log-every",
        "1",
        "--device",
        "cpu",
        "--schedule",
        "constant",  # the resume below stops at another total
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        deadline = time.time() + 120
        while len(ckpt.list_checkpoints(run)) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.37)  # land somewhere inside a step or a save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = ckpt.find_last(run)
    assert last is not None and (run / "last").resolve() == last
    step = ckpt.read_trainer_state(last)["step"]
    Policy.from_pretrained(last)
    train(_cfg(tiny_dataset, run, steps=step + 1, save_every=1, resume=True))
    assert ckpt.find_last(run).name == f"step-{step + 1:07d}"
    assert [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, step + 2)
    )


def test_logged_averages_continue_across_a_resume(tiny_dataset, tmp_path):
    """log_every=4: a run stopped after 2 steps logs, at step 4, the mean over steps 1-4 as one that never
    stopped does (the partial window travels in the checkpoint)."""
    drop = ("elapsed_s", "samples_per_s")
    ref = train(_cfg(tiny_dataset, tmp_path / "ref", log_every=4))
    run = tmp_path / "split"
    train(_cfg(tiny_dataset, run, log_every=4), stop_after=2)
    assert not (run / "metrics.jsonl").exists() or _metrics(run) == []  # no line at a non-log step
    train(_cfg(tiny_dataset, run, log_every=4, resume=True))
    got = [{k: v for k, v in m.items() if k not in drop} for m in _metrics(run)]
    want = [{k: v for k, v in m.items() if k not in drop} for m in _metrics(ref)]
    assert [m["step"] for m in got] == [4] and got == want


def test_resume_with_other_steps_under_cosine_is_refused(tiny_dataset, tmp_path):
    run = tmp_path / "cos"
    train(_cfg(tiny_dataset, run, steps=4, schedule="cosine"), stop_after=2)
    with pytest.raises(InputError, match=r"cosine schedule over 4 steps.*--steps 4"):
        train(_cfg(tiny_dataset, run, steps=6, schedule="cosine", resume=True))
    train(_cfg(tiny_dataset, run, steps=4, schedule="cosine", resume=True))  # the same total resumes
    assert ckpt.find_last(run).name == "step-0000004"


def test_rng_state_holds_the_runs_cuda_device_only():
    state = ckpt.rng_state(torch.device("cpu"))
    assert "cuda" not in state
    ckpt.set_rng_state(state, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rng_state_saves_and_restores_cuda_whenever_cuda_is_used():
    device = torch.device("cuda", 0)
    state = ckpt.rng_state(device)  # saved even before any CUDA random op ran
    assert state["cuda"]["device"] == 0
    a = torch.rand(4, device=device)
    ckpt.set_rng_state(state, device)
    assert torch.equal(torch.rand(4, device=device), a)


def test_training_steps_read_nothing_back_between_log_steps(tiny_dataset, tmp_path, monkeypatch):
    """Metrics stay tensors on the device; `.item()` / `float()` happen at log steps and saves only, so the
    count of read-backs does not grow with the number of steps between two log lines."""
    import sys

    calls = {"n": 0}
    real_item, real_float = torch.Tensor.item, torch.Tensor.__float__

    def count_if_ours() -> None:  # vlaforge's own read-backs (the optimizer's step counters live on the host)
        if sys._getframe(2).f_globals.get("__name__", "").startswith("vlaforge"):
            calls["n"] += 1

    def item(self):
        count_if_ours()
        return real_item(self)

    def to_float(self):
        count_if_ours()
        return real_float(self)

    monkeypatch.setattr(torch.Tensor, "item", item)
    monkeypatch.setattr(torch.Tensor, "__float__", to_float)
    counts = {}
    for steps in (2, 6):
        calls["n"] = 0
        train(_cfg(tiny_dataset, tmp_path / f"run{steps}", steps=steps, log_every=steps))
        counts[steps] = calls["n"]
    assert counts[2] == counts[6], counts  # before: several read-backs per step (loss, l1, grad norm)
