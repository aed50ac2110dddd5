"""`vlaforge dagger`: labels at the visited states, aggregation over rounds, recorded interventions, resume.

One tiny policy (the tiny preset, 2 training steps on one expert episode) drives every test: the rounds'
labels are the scripted expert's whatever the policy does, so an untrained policy is enough, and its
actions differ from the expert's (the labels are not the executed actions).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vlaforge.dagger.config import INTERVENTION_COLUMN, DaggerConfig
from vlaforge.data.lerobot import LeRobotDataset, LeRobotWriter
from vlaforge.envs import metaworld as mw
from vlaforge.envs.base import episode_seed
from vlaforge.envs.registry import get_env
from vlaforge.errors import InputError

mw.configure_rendering()  # before anything imports mujoco

pytestmark = pytest.mark.sim

TASK = "button-press-topdown-v3"
SIZE = 32
STATE = mw.embodiment("corner2", SIZE).state_dim


def _config(init, out, **changes):
    fields = dict(init=str(init), out=str(out), rounds=2, tasks=TASK, episodes_per_round=1, steps_per_round=1,
                  max_steps=12, tail=2, eval_episodes=1, workers=0, device="cpu")  # fmt: skip
    return DaggerConfig(**{**fields, **changes})


def test_labels_are_the_experts_actions_at_the_states_the_policy_visited(init, tmp_path):
    from vlaforge.dagger.labels import POLICY_ACTION, scripted_round

    spec = get_env("metaworld")
    kept = scripted_round(init, tmp_path / "data", spec, [TASK], episodes=2, seed=7, first_index=3,
                          max_steps=10, tail=2, device="cpu")  # fmt: skip
    ds = LeRobotDataset(tmp_path / "data")
    assert [e["seed"] for e in kept] == [episode_seed(7, TASK, 3), episode_seed(7, TASK, 4)]
    assert ds.info["vlaforge"]["episodes"] == kept and ds.num_frames == sum(e["frames"] for e in kept)
    env = spec.make(TASK, cameras=["corner2"], image_size=SIZE, max_steps=10, render=False)
    label, executed = ds.column("action"), ds.column(POLICY_ACTION)
    state = ds.column("observation.state")
    for e in kept:
        frames = ds.episode_frames(e["episode_index"])
        obs = env.reset(e["seed"])  # a direct replay of what the policy did
        for i in frames:
            np.testing.assert_array_equal(obs.state, state[i])
            np.testing.assert_array_equal(env.expert_action().astype(np.float32), label[i])
            obs, _, _, _ = env.step(executed[i])
    # The labels are the expert's, not what was executed (the policy is untrained).
    assert np.abs(label - executed).max() > 0.1


def test_takeover_keeps_the_experts_frames_from_the_step_it_took_over(init):
    """With a take-over the policy drives alone for N steps; not finished by then, the expert drives from
    the state the policy left, and only its frames (state, image, executed action) are kept. Checked
    against a replay written here: the policy's own open-loop roll-out from the same seed for N steps,
    then the recorded actions."""
    from vlaforge.client import ActionQueue
    from vlaforge.dagger.labels import label_rollout
    from vlaforge.eval.baselines import PolicyController
    from vlaforge.models.policy import Policy
    from vlaforge.types import Observation

    spec = get_env("metaworld")
    controller = PolicyController(Policy.from_pretrained(init, device="cpu"))
    env = spec.make(TASK, cameras=["corner2"], image_size=SIZE, max_steps=120, render=True)
    seed, budget = episode_seed(7, TASK, 0), 30
    ro = label_rollout(controller, env, seed, spec.instructions[TASK], 120, tail=2, takeover=budget)
    assert ro.takeover == budget and not ro.policy_success  # an untrained policy does not finish
    frames = ro.frames
    assert frames[INTERVENTION_COLUMN].all() and len(frames["action"]) == ro.steps - budget
    assert "policy_action" not in frames

    # The policy's own roll-out from the same seed, up to the take-over.
    controller.reset(seed)
    queue = ActionQueue("open_loop", controller.execute_steps)
    obs = env.reset(seed, render=True)
    for t in range(budget):
        if not queue.remaining(t):
            seen = Observation(images=obs.images, state=obs.state, instruction=spec.instructions[TASK])
            queue.add(np.asarray(controller.act(seen, env), np.float32), t, t)
        obs, _, _, _ = env.step(queue.pop(t), render=True)
    # From there the recorded frames are the expert's own driving: state, then its action, executed.
    for i in range(len(frames["action"])):
        np.testing.assert_array_equal(obs.state, frames["observation.state"][i])
        np.testing.assert_array_equal(obs.images["corner2"], frames["observation.images.corner2"][i])
        np.testing.assert_array_equal(env.expert_action().astype(np.float32), frames["action"][i])
        obs, _, _, info = env.step(frames["action"][i], render=True)
        assert bool(info["success"]) == frames["next.success"][i]
    # The expert finished it (button-press-topdown's expert needs ~60 steps), and the tail was kept.
    assert frames["next.success"][-1] and ro.steps == budget + int(np.argmax(frames["next.success"])) + 1 + 2


def test_mixing_gives_the_expert_whole_chunks_labels_every_state_and_flags_its_frames(init):
    """beta 0.5: at each chunk boundary the expert or the policy drives the next chunk. Checked by a replay
    (reset to the seed, execute the recorded actions: the recorded states follow), on the expert's frames
    the executed action is its label, on the policy's it is not (untrained), and the flags change only at
    chunk boundaries. beta 1: the expert drives every step and finishes the task, as its demonstrations do."""
    from vlaforge.dagger.labels import POLICY_ACTION, label_rollout
    from vlaforge.eval.baselines import PolicyController
    from vlaforge.models.policy import Policy

    spec = get_env("metaworld")
    controller = PolicyController(Policy.from_pretrained(init, device="cpu"))
    n = int(controller.execute_steps)
    env = spec.make(TASK, cameras=["corner2"], image_size=SIZE, max_steps=120, render=True)
    seed = episode_seed(7, TASK, 0)
    ro = label_rollout(controller, env, seed, spec.instructions[TASK], 48, tail=2, beta=0.5)
    frames = ro.frames
    flags = frames[INTERVENTION_COLUMN][:, 0]
    label, executed = frames["action"], frames[POLICY_ACTION]
    assert len(flags) == ro.steps == 48 and 0 < flags.sum() < len(flags) and ro.expert_steps == flags.sum()
    blocks = flags[: len(flags) // n * n].reshape(-1, n)
    assert (blocks.all(axis=1) | ~blocks.any(axis=1)).all()  # whole chunks, from step 0 on
    np.testing.assert_array_equal(executed[flags], label[flags])
    assert np.abs(executed[~flags] - label[~flags]).max(axis=1).min() > 1e-3
    obs = env.reset(seed, render=True)
    for i in range(len(flags)):
        np.testing.assert_array_equal(obs.state, frames["observation.state"][i])
        np.testing.assert_array_equal(obs.images["corner2"], frames["observation.images.corner2"][i])
        np.testing.assert_array_equal(env.expert_action().astype(np.float32), label[i])
        obs, _, _, _ = env.step(executed[i], render=True)
    # The same seed mixes the same way; another mixes otherwise.
    again = label_rollout(controller, env, seed, spec.instructions[TASK], 48, tail=2, beta=0.5)
    np.testing.assert_array_equal(again.frames[INTERVENTION_COLUMN], frames[INTERVENTION_COLUMN])
    other = label_rollout(
        controller, env, episode_seed(7, TASK, 1), spec.instructions[TASK], 48, tail=2, beta=0.5
    )
    assert not np.array_equal(other.frames[INTERVENTION_COLUMN], frames[INTERVENTION_COLUMN])

    whole = label_rollout(controller, env, seed, spec.instructions[TASK], 120, tail=2, beta=1.0)
    assert whole.frames[INTERVENTION_COLUMN].all() and whole.policy_success
    np.testing.assert_array_equal(whole.frames[POLICY_ACTION], whole.frames["action"])
    assert np.flatnonzero(whole.frames["next.success"])[0] == whole.steps - 3  # then the 2-step tail


def test_a_takeover_the_expert_does_not_finish_is_dropped(init, tmp_path):
    """10 steps left after the take-over are too few for the expert (it needs ~60): no demonstration, so
    nothing is written, and the record says what happened."""
    from vlaforge.dagger.labels import scripted_round

    spec = get_env("metaworld")
    kept = scripted_round(init, tmp_path / "data", spec, [TASK], episodes=1, seed=7, first_index=0,
                          max_steps=20, tail=2, device="cpu", takeover=10)  # fmt: skip
    assert kept == [{"episode_index": None, "task": TASK, "seed": episode_seed(7, TASK, 0), "success": False,
                     "frames": 0, "takeover": 10, "expert_success": False}]  # fmt: skip
    assert not (tmp_path / "data").exists()


def test_a_takeover_round_trains_on_the_flagged_frames(init, tmp_path):
    from vlaforge.dagger.run import run_dagger
    from vlaforge.data.dataset import open_dataset

    # The recovering variant is the script itself on this task (tests/envs/test_recovering_expert.py).
    cfg = _config(init, tmp_path / "t", rounds=1, takeover=10, max_steps=100, expert_variant="recovering",
                  label_share=0.75)  # fmt: skip
    state = run_dagger(cfg)
    one = state["rounds"][1]
    ds = LeRobotDataset(one["data"])
    assert state["plan"]["expert_variant"] == ds.info["vlaforge"]["dagger"]["expert_variant"] == "recovering"
    assert one["takeovers"] == 1 and one["frames_added"] == ds.num_frames > 0
    assert ds.column(INTERVENTION_COLUMN).all() and "policy_action" not in ds.features
    (episode,) = ds.info["vlaforge"]["episodes"]
    assert episode["takeover"] == 10 and 10 + episode["frames"] <= 100 and episode["success"] is False
    base = LeRobotDataset(state["plan"]["base"][0]["path"])
    mix = open_dataset(tmp_path / "t" / "round-1" / "mix.json")
    assert mix.num_frames == base.num_frames + ds.num_frames
    # The labels are drawn 75% of the time (weight x frames, OpenVLA's balancing), not ds / (base + ds).
    np.testing.assert_allclose(mix.sample_probabilities(), [0.25, 0.75], rtol=1e-9)


def test_mixed_rounds_record_their_beta_and_the_experts_steps(init, tmp_path):
    from vlaforge.dagger.run import run_dagger

    state = run_dagger(_config(init, tmp_path / "m", rounds=2, beta=1.0, beta_decay=0.5, max_steps=24))
    for r, beta in ((1, 1.0), (2, 0.5)):
        rec = state["rounds"][r]
        ds = LeRobotDataset(rec["data"])
        flags = ds.column(INTERVENTION_COLUMN).reshape(-1)
        assert rec["beta"] == beta and rec["expert_steps"] == int(flags.sum())
        assert [e["expert_steps"] for e in ds.info["vlaforge"]["episodes"]] == [rec["expert_steps"]]
    assert state["rounds"][1]["expert_steps"] == 24 and 0 < state["rounds"][2]["expert_steps"] < 24


def test_rounds_aggregate_train_evaluate_and_resume_to_the_same_data(init, tmp_path, monkeypatch):
    from vlaforge.dagger.run import run_dagger
    from vlaforge.data.dataset import open_dataset

    state = run_dagger(_config(init, tmp_path / "a"))
    rounds = state["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    base = LeRobotDataset(state["plan"]["base"][0]["path"])
    sizes = [LeRobotDataset(r["data"]).num_frames for r in rounds[1:]]
    assert [r["frames_added"] for r in rounds[1:]] == sizes
    assert rounds[2]["frames_labelled_total"] == sum(sizes)
    # Round 2 trains on the base data and both rounds' labels, pooled under one set of statistics.
    mix = tmp_path / "a" / "round-2" / "mix.json"
    agg = open_dataset(mix)
    assert agg.num_frames == base.num_frames + sum(sizes) and agg.pooled and agg.dataset_norm_stats() == {}
    trained = json.loads((tmp_path / "a" / "round-2" / "train" / "last" / "config.json").read_text())
    seeds = {e["seed"] for e in trained["training_data"]["episodes"]}
    assert {episode_seed(2000, TASK, 0), episode_seed(2000, TASK, 1)} <= seeds
    assert episode_seed(1000, TASK, 0) not in seeds  # the evaluation's episode
    run2 = json.loads((tmp_path / "a" / "round-2" / "train" / "config.json").read_text())
    assert run2["init"] == rounds[1]["policy"] and run2["init_head"] and run2["steps"] == 1
    for r in rounds:
        o = r["rates"]["overall"]
        assert o["n"] == 1 and 0 <= o["ci_low"] <= o["rate"] <= o["ci_high"] <= 1
    on_disk = json.loads((tmp_path / "a" / "dagger.json").read_text())
    assert on_disk["rounds"] == rounds and (tmp_path / "a" / "curve.png").stat().st_size > 1000

    # Stopped after round 1 (and a round 2 left half-written), then continued: the same round-2 data.
    # (A relative --out, as typed on a command line.)
    monkeypatch.chdir(tmp_path)
    run_dagger(_config(init, "b", rounds=1))
    (tmp_path / "b" / "round-2" / "data").mkdir(parents=True)
    again = run_dagger(_config(init, "b", rounds=2))
    assert [r["round"] for r in again["rounds"]] == [0, 1, 2]
    one, two = (
        LeRobotDataset(tmp_path / "a" / "round-2" / "data"),
        LeRobotDataset(tmp_path / "b" / "round-2" / "data"),
    )
    for key in ("action", "observation.state", "policy_action"):
        np.testing.assert_array_equal(one.column(key), two.column(key))
    with pytest.raises(InputError, match="other settings"):
        run_dagger(_config(init, "b", rounds=3, steps_per_round=2))


def test_an_init_run_trained_elsewhere_with_relative_paths_and_balanced_tasks(init, tmp_path, monkeypatch):
    """`train --dataset data --out runs/a --balance tasks` in one directory, `dagger` from another: the
    base data are found where that run trained, and the rounds' mixture is drawn by frames."""
    from vlaforge.dagger.run import run_dagger
    from vlaforge.train.config import TrainConfig
    from vlaforge.train.loop import train

    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copytree(init.parent.parent / "data", proj / "data")
    monkeypatch.chdir(proj)
    train(TrainConfig(dataset="data", out="runs/a", steps=2, batch_size=4, device="cpu", save_every=None,
                      chunk_size=4, balance="tasks"))  # fmt: skip
    monkeypatch.chdir(tmp_path)  # "data" does not exist from here
    state = run_dagger(_config(proj / "runs" / "a" / "last", tmp_path / "d", rounds=1))
    assert state["plan"]["base"] == [{"path": str((proj / "data").resolve()), "name": "base-data"}]
    trained = json.loads((tmp_path / "d" / "round-1" / "train" / "config.json").read_text())
    assert trained["balance"] == "frames" and state["rounds"][1]["frames_added"] > 0


def _recorded(root, flags_per_episode, size=SIZE):
    """A LeRobot dataset a person intervened in: frame i of episode e has action (e, i, 0, 0)."""
    features = {
        "observation.images.corner2": {"dtype": "video", "shape": [size, size, 3], "names": None},
        "observation.state": {"dtype": "float32", "shape": [STATE], "names": None},
        "action": {"dtype": "float32", "shape": [4], "names": None},
        INTERVENTION_COLUMN: {"dtype": "bool", "shape": [1], "names": None},
    }
    rng = np.random.default_rng(0)
    with LeRobotWriter(root, fps=80, features=features) as w:
        for e, flags in enumerate(flags_per_episode):
            n = len(flags)
            action = np.zeros((n, 4), np.float32)
            action[:, 0], action[:, 1] = e, np.arange(n)
            w.add_episode("press the button", {
                "observation.images.corner2": rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
                "observation.state": rng.normal(size=(n, STATE)).astype(np.float32),
                "action": action, INTERVENTION_COLUMN: np.asarray(flags, bool),
            })  # fmt: skip
    return root


def test_recorded_mode_keeps_only_the_flagged_frames(tmp_path):
    from vlaforge.dagger.labels import recorded_round

    flags = [[0, 1, 1, 0, 1], [1, 1, 0, 0, 0, 0, 1]]
    src = LeRobotDataset(_recorded(tmp_path / "rec", flags))
    emb = mw.embodiment("corner2", SIZE)
    kept = recorded_round(tmp_path / "rec", tmp_path / "out", emb)
    out = LeRobotDataset(tmp_path / "out")
    want = np.flatnonzero(np.concatenate(flags))
    assert out.num_frames == len(want) == 6
    np.testing.assert_array_equal(out.column("action"), src.column("action")[want])
    np.testing.assert_array_equal(out.column("observation.state"), src.column("observation.state")[want])
    # Each unbroken run of flagged frames is an episode: (ep 0, 1..3), (ep 0, 4..5), (ep 1, 0..2), (ep 1, 6..7).
    assert [(e["source_episode"], e["source_frames"]) for e in kept] == [
        (0, [1, 3]),
        (0, [4, 5]),
        (1, [5, 7]),
        (1, [11, 12]),
    ]
    assert out.column(INTERVENTION_COLUMN).all() and out.info["vlaforge"]["embodiment"] == emb.to_dict()
    (tmp_path / "plain").mkdir()
    shutil.copytree(tmp_path / "rec", tmp_path / "plain" / "rec")
    info_path = tmp_path / "plain" / "rec" / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    del info["features"][INTERVENTION_COLUMN]
    info_path.write_text(json.dumps(info))
    with pytest.raises(InputError, match="is_intervention"):
        recorded_round(tmp_path / "plain" / "rec", tmp_path / "out2", emb)
    with pytest.raises(InputError, match="image size"):
        recorded_round(tmp_path / "rec", tmp_path / "out3", mw.embodiment("corner2", 48))
    # The decoded source frames do not outlive the call, whether it wrote a dataset or refused.
    assert not [p.name for p in tmp_path.iterdir() if "decoded" in p.name]


def test_config_refuses_what_cannot_run(tmp_path):
    with pytest.raises(InputError, match="rollout_seed and eval_seed"):
        _config(tmp_path, tmp_path / "o", rollout_seed=5, eval_seed=5)
    with pytest.raises(InputError, match="needs --dataset"):
        _config(tmp_path, tmp_path / "o", expert="recorded")
    with pytest.raises(InputError, match="one per round"):
        _config(tmp_path, tmp_path / "o", expert="recorded", dataset="a,b,c", rounds=2)
    assert _config(tmp_path, tmp_path / "o", expert="recorded", dataset="a,b").recorded_for(2) == "b"
    with pytest.raises(InputError, match="takeover=-1"):
        _config(tmp_path, tmp_path / "o", takeover=-1)
    with pytest.raises(InputError, match="--takeover is for --expert scripted"):
        _config(tmp_path, tmp_path / "o", expert="recorded", dataset="a", takeover=5)
    with pytest.raises(InputError, match="beta=1.5"):
        _config(tmp_path, tmp_path / "o", beta=1.5)
    with pytest.raises(InputError, match="--beta mixes the scripted expert"):
        _config(tmp_path, tmp_path / "o", beta=0.5, takeover=30)
    assert _config(tmp_path, tmp_path / "o", beta=0.8, beta_decay=0.5).beta_for(3) == pytest.approx(0.2)
    with pytest.raises(InputError, match=r"label_share=1.0 \(must be in \[0, 1\)"):
        _config(tmp_path, tmp_path / "o", label_share=1.0)
    with pytest.raises(InputError, match="--expert-variant chooses a scripted expert"):
        _config(tmp_path, tmp_path / "o", expert="recorded", dataset="a", expert_variant="recovering")


def test_the_expert_variant_must_be_one_the_env_offers(init, tmp_path):
    from vlaforge.dagger.run import make_plan
    from vlaforge.envs.collect import _env_for
    from vlaforge.envs.metaworld.experts import RecoveringExpert

    assert make_plan(_config(init, tmp_path / "a"))["expert_variant"] == "script"
    with pytest.raises(InputError, match=r"--expert-variant 'clever': the metaworld env offers \['script', "):
        make_plan(_config(init, tmp_path / "b", expert_variant="clever"))
    env = _env_for("metaworld", "push-v3", ("corner2",), SIZE, 20, "recovering")  # what a round labels with
    assert isinstance(env._expert, RecoveringExpert)


def test_init_head_continues_the_whole_policy(init):
    import torch
    from safetensors.torch import load_file

    from vlaforge.policy_files import read_policy_dir
    from vlaforge.train.build import build_policy
    from vlaforge.train.config import TrainConfig
    from vlaforge.types import NormStats

    files = read_policy_dir(init)
    saved = json.loads((init / "trainer_state.json").read_text())["config"]
    weights = load_file(str(files.weights))
    # New data with wider states (as DAgger's roll-outs bring): statistics other than the policy's.
    wider = files.norm_stats.to_dict()
    wider["observation.state"]["q01"] = [v - 0.1 for v in wider["observation.state"]["q01"]]
    wider = NormStats.from_dict(wider)
    for whole in (True, False):
        given = {"init": str(init), "init_head": whole, "schedule": None, "warmup_steps": None}
        cfg = TrainConfig.from_dict({**saved, **given})
        torch.manual_seed(123)  # a fresh head is not the trained one
        policy, _ = build_policy(cfg, files.embodiment, wider)
        # The whole policy keeps the statistics it was trained with; a fresh head takes the data's.
        assert policy.norm_stats.to_dict() == (files.norm_stats if whole else wider).to_dict()
        same = {k: torch.equal(v, weights[k]) for k, v in policy.state_dict().items()}
        head = [k for k in same if k.startswith("head.")]
        assert head and all(same[k] for k in same if k.startswith("backbone.vision."))
        assert all(same[k] for k in head) if whole else not any(same[k] for k in head if k.endswith("weight"))
    # Another head than the directory's: the error names the flags that rebuild its policy.
    given = {"init": str(init), "init_head": True, "head": "flow", "head_options": {}}
    bad = TrainConfig.from_dict({**saved, **given})
    with pytest.raises(
        InputError, match=r"built with --head chunk --chunk-size 4 --history 1 on data of action dim 4"
    ):
        build_policy(bad, files.embodiment, files.norm_stats)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_rounds_fine_tune_follows_the_chosen_schedule(init, tmp_path, schedule):
    """`--schedule cosine`: each round warms up briefly and ends at a learning rate near 0; `constant`
    (the default) keeps the rate from the first step to the last."""
    from vlaforge.dagger.run import train_config
    from vlaforge.train.config import lr_at

    saved = json.loads((init / "trainer_state.json").read_text())["config"]
    cfg = _config(init, tmp_path / "o", steps_per_round=400, lr=1e-4, schedule=schedule)
    tc = train_config(cfg, {"train": saved}, 1, str(init), tmp_path / "round-1" / "mix.json", SIZE)
    assert (tc.schedule, tc.steps, tc.lr) == (schedule, 400, 1e-4)
    rates = [lr_at(s, tc.lr, tc.schedule, tc.warmup_steps, tc.steps) for s in (0, 200, 399)]
    if schedule == "constant":
        assert tc.warmup_steps == 0 and rates == [1e-4] * 3
    else:  # 5% of the steps warm up (20), the middle is near half the rate, the last step near 0
        assert tc.warmup_steps == 20 and rates[0] == pytest.approx(5e-6)
        assert rates[1] == pytest.approx(0.5e-4, rel=0.1) and rates[2] < 1e-7
    with pytest.raises(InputError, match="schedule 'linear'"):
        _config(init, tmp_path / "o", schedule="linear")
    # A run started before --schedule existed (its dagger.json has no such key) trained at a constant rate.
    older = {k: v for k, v in cfg.to_dict().items() if k != "schedule"}
    if schedule == "constant":
        cfg.check_continues(older, tmp_path / "o")
    else:
        with pytest.raises(InputError, match="schedule: 'constant' -> 'cosine'"):
            cfg.check_continues(older, tmp_path / "o")
