"""robosuite's Lift through vlaforge: exact seeding, shapes, the scripted expert's measured success rate,
collection into a LeRobot v3.0 dataset, and the whole collect -> train -> eval loop through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlaforge.envs.base import episode_seed
from vlaforge.envs.rendering import configure_rendering

configure_rendering()  # before robosuite imports mujoco
pytest.importorskip("robosuite")

from vlaforge.envs.registry import get_env  # noqa: E402
from vlaforge.envs.robosuite import RobosuiteEnv  # noqa: E402

pytestmark = pytest.mark.sim
SIZE = 32


@pytest.fixture(scope="module")
def env():
    with RobosuiteEnv("lift", image_size=SIZE, max_steps=120, render=False) as e:
        yield e


def test_same_seed_same_observation_other_seed_other_cube(env):
    a = env.reset(11, render=True)
    env.step(np.array([0.5, -0.5, 0.2, 1.0]))
    other = env.reset(12, render=True)
    b = env.reset(11, render=True)
    np.testing.assert_array_equal(a.state, b.state)
    np.testing.assert_array_equal(a.images["agentview"], b.images["agentview"])
    assert not np.array_equal(a.state, other.state)  # the arm's initial joint noise differs


def test_steps_and_observations_match_the_embodiment(env):
    emb = env.embodiment
    assert (emb.action_dim, emb.state_dim, emb.camera_names, emb.robot_type) == (4, 4, ["agentview"], "panda")
    obs = env.reset(3, render=True)
    assert obs.images["agentview"].shape == (SIZE, SIZE, 3) and obs.images["agentview"].dtype == np.uint8
    assert obs.state.shape == (emb.state_dim,) and obs.state.dtype == np.float32
    assert obs.instruction == get_env("robosuite").instructions["lift"]
    obs, reward, done, info = env.step(np.zeros(4), render=False)
    assert obs.images == {} and isinstance(info["success"], bool) and not done
    assert env.expert_action().shape == (emb.action_dim,)
    with pytest.raises(ValueError, match="an action has 4 values"):
        env.step(np.zeros(7))


def test_the_expert_lifts_the_cube_on_seeded_episodes(env):
    successes, steps = 0, []
    for i in range(10):
        env.reset(episode_seed(0, "lift", i))
        n, success, done = 0, False, False
        while not (success or done):
            _, _, done, info = env.step(env.expert_action())
            n, success = n + 1, info["success"]
        successes += success
        steps.append(n)
    assert successes / 10 >= 0.9, (successes, steps)
    assert max(steps) < 80  # well inside the default 200-step episode


def test_collect_writes_a_lerobot_dataset_with_the_envs_metadata(tmp_path):
    from vlaforge.data.lerobot import LeRobotDataset
    from vlaforge.envs.collect import collect

    root = collect(env="robosuite", episodes=2, out=tmp_path / "ds", image_size=SIZE, workers=0, seed=5)
    ds = LeRobotDataset(root)
    spec = get_env("robosuite")
    assert ds.num_episodes == 2 and ds.tasks == [spec.instructions["lift"]]
    assert ds.info["robot_type"] == "panda" and ds.fps == pytest.approx(20.0)
    assert ds.info["features"]["action"]["names"] == ["delta_x", "delta_y", "delta_z", "gripper"]
    assert ds.info["features"]["observation.images.agentview"]["shape"] == [SIZE, SIZE, 3]
    ours = ds.info["vlaforge"]
    assert ours["env"] == "robosuite" and ours["embodiment"] == spec.embodiment("agentview", SIZE).to_dict()
    record = ours["episodes"][1]
    assert record["seed"] == episode_seed(5, "lift", record["attempt"])
    idx = np.asarray(ds.episode_frames(1))
    states, actions = ds.column("observation.state")[idx], ds.column("action")[idx]
    with RobosuiteEnv("lift", image_size=SIZE, render=False) as replay:  # the recorded seed replays it
        obs = replay.reset(record["seed"])
        for t in range(len(idx)):
            np.testing.assert_array_equal(obs.state, states[t])
            np.testing.assert_array_equal(replay.expert_action(), actions[t])
            obs, _, _, _ = replay.step(actions[t])


@pytest.mark.slow
def test_collect_train_eval_through_the_cli(tmp_path, capsys):
    from vlaforge.cli import main

    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "eval"
    main(["collect", "--env", "robosuite", "--tasks", "lift", "--episodes", "2", "--out", str(data),
          "--image-size", str(SIZE), "--workers", "0"])  # fmt: skip
    main(["train", "--dataset", str(data), "--out", str(run), "--preset", "tiny", "--head", "chunk",
          "--steps", "4", "--batch-size", "4"])  # fmt: skip
    main(
        [
            "eval",
            "--policy",
            str(run / "last"),
            "--episodes",
            "2",
            "--max-steps",
            "30",
            "--out",
            str(out),
            "--workers",
            "0",
            "--videos",
            "1",
        ]
    )  # fmt: skip  (the env comes from the checkpoint)
    info = json.loads((out / "eval_info.json").read_text())
    proto = info["protocol"]
    assert proto["env"] == "robosuite" and info["tasks"] == ["lift"] and proto["cameras"] == ["agentview"]
    assert set(proto["versions"]) == {"vlaforge", "robosuite", "mujoco", "torch", "numpy", "python"}
    assert info["aggregates"]["overall"]["n"] == 2 and (out / "report.html").is_file()
    assert sum(bool(e["video"]) for e in info["episodes"]) == 1
    with pytest.raises(SystemExit):  # trained in robosuite: refused in another env, in one line
        main(["eval", "--policy", str(run / "last"), "--env", "metaworld", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert "was trained in 'robosuite'" in err and "--env robosuite" in err
