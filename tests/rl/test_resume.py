"""An RL run stopped and resumed continues bit for bit; the config guards what a resume may change."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlaforge.errors import InputError
from vlaforge.rl.config import RLConfig
from vlaforge.rl.loop import run_rl

pytestmark = pytest.mark.sim


def _weights(run):
    ckpt = (run / "last").resolve()
    out = load_file(str(ckpt / "policy" / "model.safetensors"))
    out.update({f"rl.{k}": v for k, v in load_file(str(ckpt / "rl_model.safetensors")).items()})
    out.update({f"opt.{k}": v for k, v in load_file(str(ckpt / "optimizer.safetensors")).items()})
    for name in ("replay", "successes"):  # SAC's replay buffer, filtered's success buffer
        if (ckpt / f"{name}.safetensors").is_file():
            out.update({f"{name}.{k}": v for k, v in load_file(str(ckpt / f"{name}.safetensors")).items()})
    return out


@pytest.mark.parametrize(
    ("algo", "head", "flow_rl"),
    [
        ("ppo", "chunk", "sde"),
        ("grpo", "chunk", "sde"),
        ("ppo", "flow", "sde"),
        ("ppo", "flow", "noise"),
        ("ppo", "flow", "latent"),
        ("sac", "flow", "latent"),
        ("filtered", "flow", "sde"),
    ],  # fmt: skip
)
def test_resume_is_bitwise_exact(tmp_path, weak_policy, driving_policy, algo, head, flow_rl):
    # filtered learns from successes alone: a policy that closes the drawer in some episodes
    init = (
        driving_policy(tmp_path / "init") if algo == "filtered" else weak_policy(tmp_path / "init", head=head)
    )
    common = dict(
        init=str(init), tasks="drawer-close", envs=4 if algo == "filtered" else 2, max_steps=24, device="cpu", algo=algo, lr=1e-3,
        group_size=2 if algo == "grpo" else 1, epochs=2, save_every=1, init_log_std=-0.3,
        reward="success" if algo in ("sac", "filtered") else "dense", flow_rl=flow_rl,
        **({"batch_size": 4, "utd": 2.0} if algo == "sac" else {}),
    )  # fmt: skip
    straight = run_rl(RLConfig(out=str(tmp_path / "a"), iterations=2, **common))
    half = run_rl(RLConfig(out=str(tmp_path / "b"), iterations=1, **common))
    resumed = run_rl(RLConfig(out=str(half), iterations=2, resume=True, **common))
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    changed = False
    first = load_file(str(init / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
        if k in first and not torch.equal(a[k], first[k]):
            changed = True
    if flow_rl == "latent":  # the policy as it was, plus a noise policy that moved off N(0, I)
        assert not changed, "latent RL changed the frozen policy"
        changed = bool(a["head.noise_mean.2.weight"].abs().sum() > 0)
        assert set(a) - set(first) >= {"head.noise_log_std", "head.noise_mean.2.weight"}
    assert changed, "the update changed no policy weight: the comparison would prove nothing"
    if algo == "filtered":  # the resumed iteration learned from the buffer it loaded
        steps = [
            json.loads(x)["gradient_steps"] for x in (resumed / "metrics.jsonl").read_text().splitlines()
        ]
        assert steps[-1] > 0, steps
    rows_a = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    # Timings, and how many envs the process holds (it keeps the envs earlier runs in it made): not the run.
    drop = ("total_seconds", "rollout_seconds", "forward_seconds", "update_seconds", "envs_made")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows_b
    ]
    # The KL to the initial policy is in the rows (Flow-Noise has none), positive once the policy moved.
    kls = [r["kl_to_initial"] for r in rows_a]
    if flow_rl == "noise" and head == "flow":
        assert kls == [None] * len(rows_a)
    else:
        assert all(k is not None and np.isfinite(k) for k in kls) and kls[-1] > 0, kls
    # Videos after the last iteration (video_every's default is larger), and the stopped run's after its
    # last: writing them moved no random stream (the weights above are bitwise equal).
    from vlaforge.data.video import read_video

    index = [json.loads(x) for x in (straight / "videos" / "index.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["task"]) for r in index] == [(2, "drawer-close-v3")]
    _, frames = read_video(straight / "videos" / index[0]["video"])
    assert len(frames) == index[0]["steps"] + 1 and frames.shape[1:] == (64, 64, 3)
    assert (resumed / "videos" / "iter-000001_drawer-close-v3.mp4").is_file()


def test_resume_refuses_changed_settings(tmp_path, weak_policy):
    init = weak_policy(tmp_path / "init")
    cfg = dict(init=str(init), tasks="drawer-close", envs=1, max_steps=8, device="cpu", epochs=1)
    run = run_rl(RLConfig(out=str(tmp_path / "r"), iterations=1, **cfg))
    with pytest.raises(InputError, match="lr"):
        run_rl(RLConfig(out=str(run), iterations=2, resume=True, **{**cfg, "lr": 0.5}))
    with pytest.raises(InputError, match="already holds"):
        run_rl(RLConfig(out=str(run), iterations=2, **cfg))


def test_resume_keeps_the_initial_checkpoint_it_started_from(tmp_path, weak_policy):
    """`--init RUN/last` is a link that moves when that training goes on: a resume reads the checkpoint the
    run started from (its KL reference), and refuses when that checkpoint's weights changed."""
    from safetensors.torch import save_file

    from vlaforge.rl.loop import pinned_init

    init = weak_policy(tmp_path / "init")
    other = tmp_path / "later"
    shutil.copytree(init, other)
    link = tmp_path / "last"
    link.symlink_to(init)
    cfg = dict(tasks="drawer-close", envs=1, max_steps=8, device="cpu", epochs=1)
    run = run_rl(RLConfig(init=str(link), out=str(tmp_path / "r"), iterations=1, **cfg))
    record = json.loads((run / "init.json").read_text())
    assert record["given"] == str(link) and record["resolved"] == str(init.resolve())
    link.unlink()
    link.symlink_to(other)  # the training run went on
    assert pinned_init(run, str(link)) == str(init.resolve())
    weights = load_file(str(init / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    save_file(weights, str(init / "model.safetensors"))
    with pytest.raises(InputError, match="changed since the run started"):
        run_rl(RLConfig(out=str(run), iterations=2, resume=True))
    shutil.rmtree(init)
    with pytest.raises(InputError, match="which is gone"):
        run_rl(RLConfig(out=str(run), iterations=2, resume=True))


def test_config_checks():
    with pytest.raises(InputError, match="group-size"):
        RLConfig(init="x", algo="grpo")
    with pytest.raises(InputError, match="multiple"):
        RLConfig(init="x", envs=5, group_size=2)
    with pytest.raises(InputError, match="training scenes"):
        RLConfig(init="x", train_seed=3, eval_seed=3)


def test_worker_processes_give_the_same_run(tmp_path, weak_policy):
    """Episodes stepped in two worker processes are the in-process ones: same metrics, same weights."""
    init = weak_policy(tmp_path / "init")
    common = dict(init=str(init), tasks="drawer-close", envs=3, max_steps=16, device="cpu", epochs=1,
                  reward="dense", iterations=1)  # fmt: skip
    local = run_rl(RLConfig(out=str(tmp_path / "local"), **common))
    spread = run_rl(RLConfig(out=str(tmp_path / "spread"), workers=2, **common))
    a, b = _weights(local), _weights(spread)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Timings, and how many envs the process holds (it keeps the envs earlier runs in it made): not the run.
    drop = ("total_seconds", "rollout_seconds", "forward_seconds", "update_seconds", "envs_made")
    ra, rb = (json.loads((r / "metrics.jsonl").read_text()) for r in (local, spread))
    assert {k: v for k, v in ra.items() if k not in drop} == {k: v for k, v in rb.items() if k not in drop}


def test_resume_with_only_out_and_iterations_continues_the_saved_run(tmp_path, weak_policy):
    """The documented `vlaforge rl --out RUN --iterations N --resume`: the flags left out keep the run's
    settings; a run stopped before its first checkpoint starts again from iteration 0; a line cut short
    in metrics.jsonl (a killed process) is dropped."""
    init = weak_policy(tmp_path / "init")
    cfg = dict(init=str(init), tasks="drawer-close", env="metaworld", envs=1, max_steps=8, device="cpu",
               epochs=1, lr=5e-4, save_every=2)  # fmt: skip
    run = run_rl(RLConfig(out=str(tmp_path / "r"), iterations=1, **cfg))
    shutil.rmtree(run / "checkpoints")  # as if stopped before its first checkpoint
    (run / "last").unlink()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 1, "succ')  # a torn line
    run_rl(RLConfig(out=str(run), iterations=2, resume=True))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    saved = json.loads((run / "rl_config.json").read_text())
    assert (saved["lr"], saved["tasks"], saved["env"]) == (5e-4, "drawer-close", "metaworld")
    state = json.loads((run / "last" / "rl_state.json").read_text())
    assert state["iteration"] == 2


def test_a_killed_simulation_worker_is_named():
    import os
    import signal

    from vlaforge.envs.registry import get_env
    from vlaforge.rl.rollout import WorkerPool

    pool = WorkerPool(get_env("metaworld"), ("corner2",), 32, 10, False, 1)
    try:
        os.kill(pool._procs[0].pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"simulation worker 0 exited \(exit code -9\)"):
            pool.reset([(0, "drawer-close-v3", 1)])
    finally:
        pool.close()


def test_resume_of_a_latent_noise_run_keeps_its_filled_in_settings(tmp_path):
    """`init_log_std` left unset is filled from `flow_rl` (0 for the latent noise policy, -1 otherwise): a
    resume that names neither must not count the other method's value as a change."""
    from vlaforge.rl.config import RUN_CONFIG, resumed_config

    run = tmp_path / "run"
    run.mkdir()
    saved = RLConfig(init="x", out=str(run), algo="sac", flow_rl="latent", reward="success", iterations=3)
    (run / RUN_CONFIG).write_text(json.dumps(saved.to_dict()))
    cfg = resumed_config(RLConfig(out=str(run), iterations=9, resume=True), run)
    assert (cfg.algo, cfg.flow_rl, cfg.init_log_std, cfg.iterations) == ("sac", "latent", 0.0, 9)
    with pytest.raises(InputError, match=r"init_log_std: 0\.0 -> -2\.0"):
        resumed_config(RLConfig(out=str(run), iterations=9, resume=True, init_log_std=-2.0), run)
