"""`vlaforge collect` end to end: real experts, real worker processes, a real LeRobot v3.0 dataset."""

from __future__ import annotations

import os

import numpy as np
import pytest

from vlaforge.data.lerobot import DatasetError, LeRobotDataset
from vlaforge.envs import metaworld as mw
from vlaforge.envs.collect import SUCCESS_TAIL, CollectConfig, action_noise_rng, collect, run_expert_episode
from vlaforge.errors import InputError

mw.configure_rendering()  # OSMesa unless MUJOCO_GL says otherwise; before any test imports mujoco

pytestmark = pytest.mark.sim

TASKS = ["reach-v3", "button-press-topdown-v3"]
SIZE = 32


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect") / "ds"
    return collect(CollectConfig(tasks=TASKS, episodes=2, out=out, image_size=SIZE, workers=2, seed=3))


def test_dataset_has_the_episodes_tasks_and_features(dataset_dir):
    ds = LeRobotDataset(dataset_dir)
    assert ds.num_episodes == 4
    assert ds.tasks == [mw.INSTRUCTIONS[t] for t in TASKS]
    assert ds.fps == pytest.approx(mw.CONTROL_HZ)
    assert ds.info["robot_type"] == "sawyer"
    assert ds.info["features"]["observation.images.corner2"]["shape"] == [SIZE, SIZE, 3]
    emb = mw.embodiment("corner2", SIZE)
    assert ds.info["vlaforge"]["embodiment"] == emb.to_dict()
    assert ds.info["vlaforge"]["collection"]["action_noise"] == 0.0
    assert ds.num_frames == sum(len(ds.episode_frames(e)) for e in range(4))
    # Episodes are in task order, then attempt order, whatever order the workers finished in.
    kept = ds.info["vlaforge"]["episodes"]
    assert [k["task"] for k in kept] == [TASKS[0]] * 2 + [TASKS[1]] * 2
    for k in kept:
        assert k["seed"] == mw.episode_seed(3, k["task"], k["attempt"])
    for t in range(2):
        assert kept[2 * t]["attempt"] < kept[2 * t + 1]["attempt"]
    item = ds[0]
    assert item["observation.images.corner2"].shape == (SIZE, SIZE, 3)
    assert item["observation.images.corner2"].dtype == np.uint8
    assert item["task"] == mw.INSTRUCTIONS[TASKS[0]]


def test_every_episode_succeeds_and_ends_shortly_after(dataset_dir):
    ds = LeRobotDataset(dataset_dir)
    success = ds.column("next.success").astype(bool).reshape(-1)
    for ep in range(ds.num_episodes):
        idx = np.asarray(ds.episode_frames(ep))
        flags = success[idx]
        assert flags[-1], f"episode {ep} does not end in success"
        first = int(np.argmax(flags))
        assert len(flags) == first + 1 + SUCCESS_TAIL  # the short tail after the first success
        assert not flags[:first].any()
        actions = ds.column("action")[idx]
        assert actions.dtype == np.float32 and np.all(np.abs(actions) <= 1.0)


def test_a_recorded_seed_reproduces_its_episode(dataset_dir):
    ds = LeRobotDataset(dataset_dir)
    ep = 3
    record = ds.info["vlaforge"]["episodes"][ep]
    idx = np.asarray(ds.episode_frames(ep))
    states, actions = ds.column("observation.state")[idx], ds.column("action")[idx]
    images = ds.video_frames("observation.images.corner2")[idx]
    with mw.MetaWorldEnv(record["task"], image_size=SIZE) as env:
        obs = env.reset(record["seed"])
        for t in range(len(idx)):
            np.testing.assert_array_equal(obs.state, states[t])
            action = env.expert_action()
            np.testing.assert_array_equal(action, actions[t])
            if t in (0, len(idx) - 1):  # the video is lossy (h264, yuv444p at CRF 10): close, not equal
                diff = np.abs(obs.images["corner2"].astype(int) - images[t].astype(int)).mean()
                assert diff < 3, f"frame {t}: mean abs difference {diff:.2f} to the rendered image"
            obs = env.step(action)[0]


def test_injected_noise_moves_the_path_and_the_labels_are_the_experts_actions_there():
    """DART: the applied action is the label plus noise from the attempt's own stream, the recorded label
    is what the expert does at each state the noisy path reached, and the episode still succeeds."""
    seed, noise = 7, 0.5
    clean = run_expert_episode("reach-v3", seed, image_size=SIZE)
    noisy = run_expert_episode("reach-v3", seed, image_size=SIZE, action_noise=noise)
    assert noisy is not None and noisy["next.success"][-1]
    rng = action_noise_rng(seed)
    with mw.MetaWorldEnv("reach-v3", image_size=SIZE) as env:
        obs = env.reset(seed)
        for t in range(len(noisy["action"])):
            np.testing.assert_array_equal(obs.state, noisy["observation.state"][t])
            label = env.expert_action()
            np.testing.assert_array_equal(label, noisy["action"][t])
            applied = np.clip(label + rng.normal(0.0, noise, 4).astype(np.float32), -1.0, 1.0)
            obs = env.step(applied)[0]
    # The noise changed the path: the hand's positions part from the clean episode's within a few steps.
    steps = min(len(clean["action"]), len(noisy["action"]))
    gap = np.abs(clean["observation.state"][:steps, :3] - noisy["observation.state"][:steps, :3]).max(1)
    assert gap[1] > 0 and gap.max() > 0.01
    np.testing.assert_array_equal(
        run_expert_episode("reach-v3", seed, image_size=SIZE, action_noise=0.0)["action"], clean["action"]
    )
    with pytest.raises(InputError, match=r"action_noise=-0.1 \(a standard deviation from 0 to 2\)"):
        CollectConfig(tasks="reach-v3", out="d", action_noise=-0.1)


def test_worker_count_does_not_change_the_data(dataset_dir, tmp_path):
    # The keyword form is the same as passing a CollectConfig.
    inline = collect(tasks=TASKS, episodes=2, out=tmp_path / "inline", image_size=SIZE, workers=0, seed=3)
    a, b = LeRobotDataset(dataset_dir), LeRobotDataset(inline)
    assert a.info["vlaforge"]["episodes"] == b.info["vlaforge"]["episodes"]
    for key in ("observation.state", "action", "next.success", "episode_index"):
        np.testing.assert_array_equal(a.column(key), b.column(key))


def test_an_unreachable_count_raises_and_leaves_nothing(tmp_path):
    out = tmp_path / "never"
    # Five steps are too few for the drawer expert: no seed can succeed.
    with pytest.raises(InputError, match=r"drawer-open-v3 \(0/2 in 3 seeds\).*--max-attempts"):
        collect(
            CollectConfig(
                tasks="drawer-open-v3", episodes=2, out=out, image_size=SIZE, workers=1, max_attempts=3,
                max_steps=5,
            )
        )  # fmt: skip
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # no temporary directory left beside it either


def test_refuses_an_existing_dataset_and_bad_arguments(dataset_dir):
    with pytest.raises(DatasetError, match="already exists"):
        collect(CollectConfig(tasks=TASKS, episodes=1, out=dataset_dir, image_size=SIZE, workers=0))
    with pytest.raises(ValueError, match="valid cameras"):
        collect(CollectConfig(tasks="reach-v3", episodes=1, out=dataset_dir.parent / "x", cameras="corner9",
                              workers=0))  # fmt: skip
    with pytest.raises(InputError, match=r"max_attempts \(2\) must be >= episodes \(3\)"):
        CollectConfig(tasks="reach-v3", episodes=3, out=dataset_dir.parent / "y", max_attempts=2)
    assert not (dataset_dir.parent / "x").exists() and not (dataset_dir.parent / "y").exists()


def test_collect_config_fields_defaults_and_validation(tmp_path):
    import dataclasses

    names = [f.name for f in dataclasses.fields(CollectConfig)]
    assert names == ["env", "tasks", "episodes", "out", "image_size", "cameras", "workers", "seed", "max_attempts",
                     "max_steps", "overwrite", "video_pix_fmt", "video_crf", "action_noise"]  # fmt: skip
    doc = CollectConfig.__doc__.split("Attributes:")[1]
    assert all(f"    {n}: " in doc for n in names)  # every field documented (the CLI's help text)
    cfg = CollectConfig(out=tmp_path / "d")
    assert (cfg.tasks, cfg.episodes, cfg.image_size, cfg.cameras, cfg.workers, cfg.seed) == (
        "mt10",
        50,
        128,
        "corner2",
        2,
        0,
    )
    assert cfg.attempts_per_task == 200 and cfg.max_steps == 500 and cfg.overwrite is False
    assert CollectConfig(out="d", episodes=3, max_attempts=7).attempts_per_task == 7
    with pytest.raises(TypeError):
        CollectConfig()  # out is required
    with pytest.raises(InputError, match=r"episodes=0 \(must be >= 1\).*workers=-1"):
        CollectConfig(out="d", episodes=0, workers=-1)
    with pytest.raises(InputError, match="did you mean 'drawer-open-v3'"):
        CollectConfig(out="d", tasks="drawer-opne")
    with pytest.raises(InputError, match=r"video_pix_fmt='rgb24' \(yuv444p or yuv420p\).*video_crf=52"):
        CollectConfig(out="d", video_pix_fmt="rgb24", video_crf=52)
    with pytest.raises(TypeError, match="not both"):
        collect(CollectConfig(out="d"), episodes=2)
    assert not (tmp_path / "d").exists()
