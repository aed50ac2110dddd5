"""Batched evaluation (`vlaforge.eval.vector`) against the per-process path: the same episodes, frame by
frame, on the same seeds, for a deterministic and a stochastic head, with tasks mixed in a batch, in
every execution mode; history policies stay on the per-process path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlaforge.data.video import read_video
from vlaforge.envs import metaworld as mw
from vlaforge.errors import InputError
from vlaforge.eval.run import PROTOCOLS, EvalConfig, evaluate
from vlaforge.models.heads import standard_normal

SIZE = 32
EMB = mw.embodiment(("corner2",), SIZE)
# Instructions of different lengths, so a batch mixing them is left-padded.
TASKS = "reach-v3,button-press-topdown-v3"


def _save(directory, head: str, stats):
    from vlaforge.models.policy import Policy

    torch.manual_seed(0)
    policy = Policy.from_preset("tiny", head, EMB, stats(4, 4))
    if head == "flow":
        policy.head.num_steps = 3  # fewer integration steps: same code path, quicker
    policy.save_pretrained(directory)
    return directory


def _run(tmp_path, name, ckpt, **kw):
    # Lossless videos: the frames are the renders (at the default quality x264 sets a frame's quantiser
    # from the frames after it, so the same reset frame decodes differently when the episodes drift apart).
    common = dict(
        tasks=TASKS, episodes=3, max_steps=24, workers=2, videos=3, allow_training_seeds=True, video_crf=0
    )
    return evaluate(EvalConfig(policy=str(ckpt), out=tmp_path / name, **{**common, **kw}))


def _frames(res, rec) -> np.ndarray:
    return read_video(res.out / rec["video"])[1]


# Frames of the two paths agree up to a batched forward pass's rounding. A batch of other size computes
# actions that differ by ~1e-7 (measured: 1.5e-7 between one observation alone and in batches of 2 and 4
# with other instructions), and in a contact-rich episode a simulator can grow that into a pixel-level
# drift of the arm after a few re-plans (seen: 2.6% of the pixels of the late frames of one 24-step
# episode, its first chunk identical). So each episode may drift a little, the episodes together very
# little; garbled renders or wrong actions (an execution mode ignored) differ in most frames of most episodes.
EPISODE_TOLERANCE, RUN_TOLERANCE = 0.10, 0.02


def _differing(single, batched, ra, rb) -> tuple[float, bool]:
    """The fraction of pixels that differ by more than 8 levels over an episode's video in the two runs, and
    whether the arm moved in it."""
    fa, fb = _frames(single, ra), _frames(batched, rb)
    assert fa.shape == fb.shape == (ra["steps"] + 1, SIZE, SIZE, 3)  # reset + every step
    # The reset frame: nothing computed yet, the same scene rendered, the same pixels.
    np.testing.assert_array_equal(fa[0], fb[0], err_msg=f"{ra['task']} episode {ra['episode']}: reset frame")
    differ = float(np.mean(np.abs(fa.astype(int) - fb.astype(int)) > 8))
    return differ, bool(np.abs(fa[-1].astype(int) - fa[0].astype(int)).max() > 8)


def _same_trajectories(single, batched) -> int:
    """Asserts the two runs' videos show the same trajectories (see EPISODE_TOLERANCE); returns how many
    episodes moved the arm."""
    pairs = list(zip(single.info["episodes"], batched.info["episodes"]))
    measured = [_differing(single, batched, ra, rb) for ra, rb in pairs]
    differs = [d for d, _ in measured]
    for (ra, _), d in zip(pairs, differs):
        assert d < EPISODE_TOLERANCE, (ra["task"], ra["episode"], d)
    assert np.mean(differs) < RUN_TOLERANCE, differs
    return sum(moved for _, moved in measured)


@pytest.mark.slow
@pytest.mark.sim
@pytest.mark.parametrize("head", ["chunk", "flow"])
def test_batched_and_per_process_give_the_same_episodes(tmp_path, head, policy_stats):
    ckpt = _save(tmp_path / "ckpt", head, policy_stats)
    single = _run(tmp_path, "single", ckpt, envs_per_worker=0)
    batched = _run(tmp_path, "batched", ckpt, envs_per_worker=2)  # 4 slots, 2 groups of 2
    assert single.info["protocol"]["runner"] == "per-process"
    assert batched.info["protocol"]["runner"] == "batched"
    assert batched.info["protocol"]["mean_batch"] > 1  # episodes really shared forward passes
    assert batched.info["protocol"]["video_crf"] == 0 and batched.info["protocol"]["videos_per_task"] == 3

    strip = ("video",)
    a = [{k: v for k, v in r.items() if k not in strip} for r in single.info["episodes"]]
    b = [{k: v for k, v in r.items() if k not in strip} for r in batched.info["episodes"]]
    assert a == b
    assert _same_trajectories(single, batched) >= 4  # the arm moves, so matching frames mean matching actions
    # the held-out column (run by default on the same episodes) agrees between the runners too
    ha, hb = (r.info["instruction_suites"]["heldout"] for r in (single, batched))
    assert ha["episodes"] == hb["episodes"] and ha["overall"] == hb["overall"]
    assert [e["seed"] for e in ha["episodes"]] == [e["seed"] for e in a]


@pytest.mark.slow
@pytest.mark.sim
@pytest.mark.parametrize(
    "execution", [dict(execution="ensemble"), dict(execution="receding", replan_every=3)]
)
def test_batched_execution_modes_match_per_process(tmp_path, execution, policy_stats):
    """Ensembling (a chunk every step) and receding re-plans go through the slots' action queues."""
    ckpt = _save(tmp_path / "ckpt", "chunk", policy_stats)
    # The training instructions only: the held-out column's agreement is the test above's.
    kw = dict(episodes=2, max_steps=10, videos=2, instructions="train", **execution)
    single = _run(tmp_path, "single", ckpt, envs_per_worker=0, **kw)
    # One worker with two slots: the slots alternate as two groups of one, so every forward pass has the
    # batch of one the per-process path has, and the videos must agree exactly (no rounding to allow for).
    batched = _run(tmp_path, "batched", ckpt, envs_per_worker=2, workers=1, **kw)
    assert batched.info["protocol"]["runner"] == "batched"
    assert [e["steps"] for e in batched.info["episodes"]] == [10] * 4
    for ra, rb in zip(single.info["episodes"], batched.info["episodes"]):
        assert {**ra, "video": None} == {**rb, "video": None}
        differ, moved = _differing(single, batched, ra, rb)
        assert differ == 0.0, (ra["task"], ra["episode"], differ)
        assert moved  # the arm moved, so the actions show in the frames


@pytest.mark.sim
def test_a_history_policy_runs_per_process(tmp_path, policy_stats):
    from vlaforge.eval.rollout import WorkerSpec
    from vlaforge.eval.vector import BatchedRunner
    from vlaforge.models.policy import Policy

    torch.manual_seed(0)
    Policy.from_preset("tiny", "chunk", EMB, policy_stats(4, 4), history=2).save_pretrained(tmp_path / "h")
    kw = dict(tasks="reach-v3", episodes=1, max_steps=8, videos=0, instructions="train")
    res = _run(tmp_path, "e", tmp_path / "h", **kw)
    assert res.info["protocol"]["runner"] == "per-process"
    assert res.info["protocol"]["video_crf"] is None  # no videos, no quality to name
    spec = WorkerSpec(str(tmp_path / "h"), ["corner2"], SIZE, max_steps=8, execute_steps=None)
    with pytest.raises(InputError, match="reads 2 observations per prediction"):
        BatchedRunner(spec, workers=1, envs_per_worker=2)


@pytest.mark.sim
def test_every_episode_ends_where_it_should(tmp_path, policy_stats):
    """The expert path is per-process; a checkpoint through the batched path stops at max_steps, and
    with more episodes than slots every job still runs exactly once."""
    ckpt = _save(tmp_path / "ckpt", "chunk", policy_stats)
    kw = dict(episodes=5, max_steps=13, videos=0, envs_per_worker=1, workers=1, instructions="train")
    res = _run(tmp_path, "b", ckpt, **kw)
    eps = res.info["episodes"]
    assert [(e["task"], e["episode"]) for e in eps] == [(t, i) for t in TASKS.split(",") for i in range(5)]
    assert all(e["steps"] == 13 and not e["success"] for e in eps)  # 13 is not a multiple of the chunk
    assert res.info["protocol"]["envs_per_worker"] == 1


def test_per_sample_generators_draw_what_each_would_draw_alone():
    gens = [torch.Generator().manual_seed(s) for s in (3, 4, 5)]
    together = standard_normal((3, 8, 4), torch.device("cpu"), gens)
    alone = [
        standard_normal((1, 8, 4), torch.device("cpu"), torch.Generator().manual_seed(s))[0]
        for s in (3, 4, 5)
    ]
    torch.testing.assert_close(together, torch.stack(alone), rtol=0, atol=0)
    with pytest.raises(InputError, match="2 generators for a batch of 3"):
        standard_normal((3, 8, 4), torch.device("cpu"), gens[:2])


def test_protocols_fix_the_episode_length(tmp_path):
    assert EvalConfig(policy="expert", out=tmp_path, protocol="rlinf-100").max_steps == 100
    assert EvalConfig(policy="expert", out=tmp_path, protocol="vlaforge").max_steps == 500
    assert EvalConfig(policy="expert", out=tmp_path, protocol="rlinf-100", max_steps=100).max_steps == 100
    with pytest.raises(InputError, match="protocol 'rlinf-100' runs 100-step episodes; got max_steps 300"):
        EvalConfig(policy="expert", out=tmp_path, protocol="rlinf-100", max_steps=300)
    with pytest.raises(InputError, match="protocol must be one of"):
        EvalConfig(policy="expert", out=tmp_path, protocol="libero")
    with pytest.raises(InputError, match="envs_per_worker must be >= 0"):
        EvalConfig(policy="expert", out=tmp_path, envs_per_worker=-1)
    assert set(PROTOCOLS) == {"vlaforge", "rlinf-100"}


@pytest.mark.sim
def test_the_protocol_is_recorded(tmp_path):
    res = evaluate(
        EvalConfig(policy="expert", tasks="reach-v3", episodes=1, workers=0, videos=0, out=tmp_path / "e",
                   protocol="rlinf-100")
    )  # fmt: skip
    proto = json.loads((tmp_path / "e" / "eval_info.json").read_text())["protocol"]
    assert (proto["protocol"], proto["max_steps"], proto["runner"]) == ("rlinf-100", 100, "per-process")
    assert "100-step" in proto["protocol_about"]
    assert res.info["episodes"][0]["steps"] <= 100
