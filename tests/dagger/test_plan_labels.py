"""`vlaforge dagger --labels plan`: each visited state's chunk target is the expert's own open-loop plan.

The plans are checked against a direct replay (a fresh env reset to the roll-out's seed, stepped with what
the policy executed up to the frame, then driven by the expert alone), and the sampler is checked to serve
them as the frames' chunks, in a mixture with data that has none.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlaforge.dagger.config import DaggerConfig
from vlaforge.data.interface import PLAN_COLUMN, PLAN_PAD_COLUMN
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.envs import metaworld as mw
from vlaforge.envs.registry import get_env
from vlaforge.errors import InputError

mw.configure_rendering()

pytestmark = pytest.mark.sim

TASK = "button-press-topdown-v3"  # the fixture policy's
ROLLED = "push-v3"  # its expert's actions vary from step to step (button-press's are saturated at first)
SIZE = 32
H = 4  # the fixture policy's chunk
MAX_STEPS = 10


@pytest.fixture(scope="module")
def planned(init, tmp_path_factory):
    from vlaforge.dagger.labels import scripted_round

    out = tmp_path_factory.mktemp("plan") / "data"
    kept = scripted_round(init, out, get_env("metaworld"), [ROLLED], episodes=2, seed=7, first_index=0,
                          max_steps=MAX_STEPS, tail=2, device="cpu", plan=True)  # fmt: skip
    return kept, LeRobotDataset(out)


def test_each_frame_carries_the_experts_own_next_actions_from_its_state(planned):
    from vlaforge.dagger.labels import POLICY_ACTION

    kept, ds = planned
    plans, pads = ds.column(PLAN_COLUMN), ds.column(PLAN_PAD_COLUMN)
    labels, executed = ds.column("action"), ds.column(POLICY_ACTION)
    assert plans.shape == (ds.num_frames, H, 4) and pads.shape == (ds.num_frames, H)
    stats = json.loads((ds.root / "meta" / "stats.json").read_text())[PLAN_COLUMN]
    np.testing.assert_allclose(stats["mean"], plans.astype(np.float64).mean(0), rtol=1e-6)  # (H, 4) kept
    np.testing.assert_array_equal(plans[:, 0], labels)  # a plan starts with the frame's label
    replay = mw.MetaWorldEnv(ROLLED, image_size=SIZE, max_steps=MAX_STEPS, render=False)
    cut_differs = False
    for e in kept:
        frames = ds.episode_frames(e["episode_index"])
        for t, i in enumerate(frames):
            replay.reset(e["seed"])
            for j in frames[:t]:  # to the frame's state, as the policy went
                replay.step(executed[j])
            want = []
            for k in range(H):
                if t + k >= MAX_STEPS:  # the episode ended before this step of the plan
                    break
                want.append(replay.expert_action())
                if k < H - 1 and t + k + 1 < MAX_STEPS:
                    replay.step(want[-1])
            n = len(want)
            np.testing.assert_array_equal(plans[i, :n], np.stack(want))
            assert not pads[i, :n].any() and pads[i, n:].all()
            np.testing.assert_array_equal(plans[i, n:], np.repeat(plans[i, n - 1 : n], H - n, axis=0))
            nxt = list(frames[t : t + H])
            if len(nxt) == H and not np.allclose(plans[i], labels[nxt]):
                cut_differs = True
    # Off the expert's path the plan is not the labels of the frames after it (what a cut chunk would be).
    assert cut_differs
    replay.close()


def test_the_sampler_serves_plans_as_chunks_and_cuts_the_rest(planned, init, tmp_path):
    from vlaforge.data.dataset import open_dataset
    from vlaforge.data.sampler import make_sampler

    _kept, ds = planned
    base = init.parent.parent / "data"  # the fixture's expert episode: no plans
    mix = tmp_path / "mix.json"
    parts = [{"path": str(base), "name": "demos"}, {"path": str(ds.root), "name": "labels"}]
    mix.write_text(json.dumps({"statistics": "pooled", "datasets": parts}))
    mixture = open_dataset(str(mix))
    n_base = mixture.datasets[0].num_frames
    sampler = make_sampler(mixture, batch_size=mixture.num_frames, chunk_size=H + 2, seed=0, shuffle=False)
    batch = next(iter(sampler))
    idx = batch["index"].numpy()
    actions, pad = batch["actions"].numpy(), batch["action_pad"].numpy()
    plans, plan_pad = ds.column(PLAN_COLUMN), ds.column(PLAN_PAD_COLUMN)
    every = mixture.actions()
    for row, i in enumerate(idx):
        if i < n_base:  # cut from the actions after it, padded at the episode's end
            r = mixture.episode_frames(0)
            steps = np.minimum(np.arange(i, i + H + 2), r.stop - 1)
            np.testing.assert_array_equal(actions[row], every[steps])
            np.testing.assert_array_equal(pad[row], np.arange(i, i + H + 2) >= r.stop)
        else:  # its plan; the chunk is longer than the plan: its last action, padded
            j = i - n_base
            np.testing.assert_array_equal(actions[row, :H], plans[j])
            np.testing.assert_array_equal(actions[row, H:], np.repeat(plans[j, -1:], 2, axis=0))
            np.testing.assert_array_equal(pad[row], np.concatenate([plan_pad[j], [True, True]]))
    assert (idx >= n_base).any() and (idx < n_base).any()


def test_a_plan_round_trains_and_records_its_labels(init, tmp_path):
    from vlaforge.dagger.run import run_dagger

    cfg = DaggerConfig(init=str(init), out=str(tmp_path / "d"), rounds=1, tasks=TASK, episodes_per_round=1,
                       steps_per_round=1, max_steps=12, tail=2, eval_episodes=1, workers=0, device="cpu",
                       labels="plan")  # fmt: skip
    state = run_dagger(cfg)
    ds = LeRobotDataset(state["rounds"][1]["data"])
    assert ds.column(PLAN_COLUMN).shape == (ds.num_frames, H, 4)
    assert (tmp_path / "d" / "round-1" / "train" / "last").is_dir()
    assert json.loads((tmp_path / "d" / "dagger.json").read_text())["config"]["labels"] == "plan"


def test_plan_labels_refuse_a_takeover_or_a_recording(init, tmp_path):
    for changes in ({"takeover": 5}, {"expert": "recorded", "dataset": str(tmp_path)}):
        with pytest.raises(InputError, match="--labels plan"):
            DaggerConfig(init=str(init), out=str(tmp_path / "d"), labels="plan", **changes)
    with pytest.raises(InputError, match="labels 'chunk'"):
        DaggerConfig(init=str(init), out=str(tmp_path / "d"), labels="chunk")
