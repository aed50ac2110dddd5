"""Recorded evaluations -> a tiny world model + judge -> a policy evaluated inside it, through the CLI."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vlaforge.cli import main
from vlaforge.data.dataset import open_dataset
from vlaforge.envs.base import episode_seed
from vlaforge.envs.metaworld import configure_rendering
from vlaforge.envs.registry import get_env
from vlaforge.errors import InputError

TASK = "reach-v3"  # its expert succeeds in ~50 steps


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    configure_rendering()
    root = tmp_path_factory.mktemp("wm")
    for policy, episodes in (("expert", "3"), ("random", "2")):
        main(["eval", "--policy", policy, "--tasks", TASK, "--episodes", episodes, "--max-steps", "60",
              "--workers", "0", "--videos", "0", "--baseline-image-size", "32", "--instructions", "train",
              "--out", str(root / f"ev-{policy}"), "--record", str(root / f"rec-{policy}")])  # fmt: skip
    return root


def test_world_model_env_runs_a_policy(recorded, capsys, monkeypatch, tmp_path):
    root = recorded
    data = f"{root / 'rec-expert'},{root / 'rec-random'}"
    run = root / "run"
    # Trained on the random policy's episodes; the expert's, recorded at the evaluations' seed (1000), are
    # all held out as the scenes evaluations inside the world model start from.
    monkeypatch.chdir(root)  # the datasets named relative to here
    main(["worldmodel", "train", "--dataset", "rec-random", "--starts", "rec-expert",
          "--out", str(run), "--heldout", "1", "--context", "2",
          "--latent-channels", "4", "--width", "8", "--dyn-width", "16", "--dyn-blocks", "1", "--ae-steps", "4",
          "--steps", "4", "--batch-size", "8", "--save-every", "4", "--sample-every", "2", "--device", "cpu"])  # fmt: skip
    cfg = json.loads((run / "last" / "worldmodel.json").read_text())
    assert cfg["image_size"] == 32 and cfg["camera"] == "corner2" and len(cfg["heldout"]) == 1 + 3
    assert cfg["env"] == "metaworld" and cfg["heldout"][0]["task"] == TASK
    expert_seeds = [episode_seed(1000, TASK, i) for i in range(3)]
    assert [h["seed"] for h in cfg["heldout"][1:]] == expert_seeds
    assert sorted(p.name for p in (run / "samples").glob("*.mp4")) == ["step-0000006.mp4", "step-0000008.mp4"]
    # Resumed under another setting that shapes the model or its batches: refused, naming the setting,
    # and the run is left as it was.
    monkeypatch.setenv("VLAFORGE_DEBUG", "1")
    with pytest.raises(InputError, match=r"\(context: 2 -> 3; batch_size: 8 -> 16\)"):
        main(["worldmodel", "train", "--dataset", "rec-random", "--starts", "rec-expert",
              "--out", str(run), "--heldout", "1", "--context", "3",
              "--latent-channels", "4", "--width", "8", "--dyn-width", "16", "--dyn-blocks", "1", "--ae-steps", "4",
              "--steps", "4", "--batch-size", "16", "--device", "cpu", "--resume"])  # fmt: skip
    monkeypatch.delenv("VLAFORGE_DEBUG")
    assert json.loads((run / "config.json").read_text())["batch_size"] == 8
    main(["worldmodel", "judge", "--dataset", data, "--out", str(run / "judge"), "--heldout", "1", "--steps", "5",
          "--batch-size", "8", "--device", "cpu"])  # fmt: skip
    report = json.loads((run / "judge" / "judge.json").read_text())["report"]
    assert report["temperature"] > 0 and 0 <= report["ece_calibrated"] <= 1 and report["frames"] > 0
    capsys.readouterr()
    # Read from another directory: the world model names its datasets by absolute paths.
    monkeypatch.chdir(tmp_path)
    assert cfg["datasets"] == [str((root / "rec-random").resolve())]
    assert cfg["starts"] == [str((root / "rec-expert").resolve())]
    main(["worldmodel", "quality", str(run), "--horizons", "1,8", "--out", str(root / "q.json")])
    q = json.loads((root / "q.json").read_text())["quality"]
    assert q["1"]["n"] > 0 and q["1"]["copy_psnr"] > 0
    # Replay: its held-out episodes open loop, with the judge beside the model; one strip per episode asked.
    main(["worldmodel", "replay", str(run), "--strips", "1", "--out", str(root / "replay")])
    rep = json.loads((root / "replay" / "replay.json").read_text())
    assert rep["judge"] and len(rep["episodes"]) == 4
    first = rep["episodes"][0]
    assert 0 <= first["judge_imagined_max"] <= 1 and first["motion_real"] > 0
    assert (root / "replay" / first["strip"]).is_file() and "strip" not in rep["episodes"][1]

    # The world model behind the Env protocol: reset starts from the held-out episode's real first frame,
    # the one recorded at the seed asked for when there is one, else held-out episode seed mod their number.
    spec = get_env(f"worldmodel:{run}")
    assert spec.tasks == [TASK] and spec.extra["imitates"] == "metaworld"
    assert spec.extra["start_seeds"] == {TASK: sorted(expert_seeds)}
    env = spec.make(TASK, max_steps=5)
    from safetensors.numpy import load_file

    first = load_file(str(run / "last" / "starts.safetensors"))["frames"]
    expert = open_dataset(str(root / "rec-expert"))
    recorded_first = np.asarray(expert.frames("corner2"))[expert.episode_frames(2).start]
    assert np.array_equal(env.reset(expert_seeds[2]).images["corner2"], recorded_first)
    assert not np.array_equal(recorded_first, np.asarray(expert.frames("corner2"))[0])
    obs = env.reset(1)
    assert np.array_equal(obs.images["corner2"], first[1 % 4]) and obs.state.shape == (
        env.embodiment.state_dim,
    )
    steps = [env.step(np.zeros(4, np.float32)) for _ in range(2)]
    assert all(s[0].images["corner2"].shape == (32, 32, 3) and "success_prob" in s[3] for s in steps)
    again = env.reset(1)
    assert np.array_equal(again.images["corner2"], obs.images["corner2"])
    assert np.array_equal(
        env.step(np.zeros(4, np.float32))[0].images["corner2"], steps[0][0].images["corner2"]
    )

    # A policy evaluated inside it, with the simulator's protocol and report.
    main(["eval", "--policy", "random", "--env", f"worldmodel:{run}", "--episodes", "2", "--max-steps", "6",
          "--workers", "0", "--videos", "1", "--instructions", "train", "--baseline-image-size", "32",
          "--out", str(root / "ev-wm")])  # fmt: skip
    info = json.loads((root / "ev-wm" / "eval_info.json").read_text())
    assert info["protocol"]["env"] == f"worldmodel:{run}" and len(info["episodes"]) == 2
    assert all(0 < e["steps"] <= 6 for e in info["episodes"])

    # The population command: both evaluators on the same tasks and seeds, a table and a plot; with a
    # reference seed, the simulator once more from other scenes.
    monkeypatch.setenv("VLAFORGE_DEBUG", "1")
    with pytest.raises(InputError, match="--reference-seed 1000 equals --seed"):
        main(["worldmodel", "agreement", "--policies", "random,random", "--worldmodel", str(run),
              "--reference-seed", "1000", "--out", str(root / "refused")])  # fmt: skip
    monkeypatch.delenv("VLAFORGE_DEBUG")
    assert not (root / "refused").exists()
    main(["worldmodel", "agreement", "--policies", "random,random", "--worldmodel", str(run), "--episodes", "1",
          "--max-steps", "4", "--heldout-family", "random", "--reference-seed", "2000",
          "--out", str(root / "agree")])  # fmt: skip
    summary = json.loads((root / "agree" / "agreement.json").read_text())
    assert [(r["task"], r["heldout_family"]) for r in summary["rows"]] == [(TASK, True)] * 2
    for k in (0, 1):
        ref = json.loads((root / "agree" / "evals" / f"{k:02d}-sim-reference" / "eval_info.json").read_text())
        sim = json.loads((root / "agree" / "evals" / f"{k:02d}-sim" / "eval_info.json").read_text())
        assert [e["seed"] for e in ref["episodes"]] == [episode_seed(2000, TASK, 0)]
        assert [e["seed"] for e in sim["episodes"]] == [episode_seed(1000, TASK, 0)]
        assert summary["rows"][k]["sim_reference"] == ref["aggregates"]["per_task"][TASK]["rate"]
    assert summary["simulator_vs_itself"]["reference_seed"] == 2000
    assert summary["simulator_vs_itself"]["all"]["n"] == 2
    # Rates of 0 in both carry no binomial noise and no signal: nothing to predict.
    predicted = summary["simulator_vs_itself"]["predicted_pearson"]
    assert predicted["per_task"][TASK] == {"10": None, "20": None, "50": None, "100": None}
    assert "The simulator against itself" in (root / "agree" / "agreement.md").read_text()
    assert summary["same_start_scenes"] == {"matched": 1, "episodes": 1}
    # The judge read on the real frames of the 4 held-out episodes (1 random, 3 expert, all of TASK).
    check = summary["judge_on_real_frames"][TASK]
    assert check["episodes"] == 4 and check["successes"] >= 3 and 0 <= check["fires_before_success"] <= 4
    assert summary["all"]["n"] == 2 and (root / "agree" / "agreement.png").stat().st_size > 1000
    assert "| policy | task |" in (root / "agree" / "agreement.md").read_text()

    # A judge trained on the world model's own open-loop replays, scored against the simulator evaluations
    # above (read, not run again; refused when they are not this protocol's).
    import shutil

    import torch

    from vlaforge.worldmodel.data import imagined_episodes, training_episodes
    from vlaforge.worldmodel.model import imagine
    from vlaforge.worldmodel.train import load_worldmodel

    model = load_worldmodel(run)
    eps = training_episodes(cfg)
    e = eps.heldout[1]
    a, b = eps.bounds[e]
    seen = imagined_episodes(model, eps, seed=3, episodes=[e])
    expected = imagine(model, eps.frames[a], eps.actions[a : b - 1], torch.Generator().manual_seed(3 + e))
    assert np.array_equal(seen.frames[a:b], expected) and np.array_equal(seen.frames[a], eps.frames[a])
    assert not np.array_equal(seen.frames[b - 1], eps.frames[b - 1])  # imagined, not the real last frame
    assert np.array_equal(seen.frames[:a], eps.frames[:a]) and np.array_equal(seen.success, eps.success)
    run2 = root / "run-imagined-judge"
    shutil.copytree(run, run2, ignore=shutil.ignore_patterns("judge"))
    monkeypatch.setenv("VLAFORGE_DEBUG", "1")
    with pytest.raises(InputError, match="--image-size 64 differs from the world model's"):
        main(["worldmodel", "judge", "--dataset", data, "--worldmodel", str(run2), "--image-size", "64",
              "--out", str(run2 / "judge"), "--device", "cpu"])  # fmt: skip
    main(["worldmodel", "judge", "--dataset", data, "--worldmodel", str(run2), "--out", str(run2 / "judge"),
          "--heldout", "1", "--steps", "5", "--batch-size", "8", "--device", "cpu"])  # fmt: skip
    meta = json.loads((run2 / "judge" / "judge.json").read_text())
    assert meta["frames"] == "imagined" and meta["worldmodel"] == str(run2)
    assert 0 <= meta["report"]["balanced_accuracy_real_frames"] <= 1
    agree = ["worldmodel", "agreement", "--policies", "random,random", "--worldmodel", str(run2),
             "--max-steps", "4", "--reference-seed", "2000", "--sim-evals", str(root / "agree")]  # fmt: skip
    with pytest.raises(
        InputError, match=r"00-sim/eval_info.json is not this protocol's .*episodes 1 there, 2 here"
    ):
        main([*agree, "--episodes", "2", "--out", str(root / "agree-refused")])
    assert not (root / "agree-refused").exists()
    monkeypatch.delenv("VLAFORGE_DEBUG")
    main([*agree, "--episodes", "1", "--out", str(root / "agree2")])
    second = json.loads((root / "agree2" / "agreement.json").read_text())
    assert [(r["sim"], r["sim_reference"]) for r in second["rows"]] == [
        (r["sim"], r["sim_reference"]) for r in summary["rows"]
    ]
    assert sorted(p.name for p in (root / "agree2" / "evals").iterdir()) == ["00-wm", "01-wm"]
    assert second["judge_frames"] == "imagined" and "judge_on_real_frames" not in second
    assert second["judge_on_imagined_frames"][TASK]["episodes"] == 4
    assert "open-loop replays" in (root / "agree2" / "agreement.md").read_text()


def test_a_strided_world_model_shows_a_new_frame_every_n_steps(recorded, tmp_path):
    import torch

    from vlaforge.eval.checks import PolicySide, stride_mismatch
    from vlaforge.eval.run import EvalConfig
    from vlaforge.worldmodel.model import imagine

    run = tmp_path / "run"
    main(["worldmodel", "train", "--dataset", str(recorded / "rec-random"), "--starts", str(recorded / "rec-expert"),
          "--out", str(run), "--stride", "3", "--objective", "mse", "--rollout", "2", "--context", "2",
          "--latent-channels", "4", "--width", "8", "--dyn-width", "16", "--dyn-blocks", "1", "--ae-steps", "4",
          "--steps", "4", "--batch-size", "8", "--sample-every", "0", "--device", "cpu"])  # fmt: skip
    assert json.loads((run / "last" / "worldmodel.json").read_text())["stride"] == 3
    data = f"{recorded / 'rec-expert'},{recorded / 'rec-random'}"
    main(["worldmodel", "judge", "--dataset", data, "--out", str(run / "judge"),
          "--heldout", "1", "--steps", "2", "--batch-size", "8", "--device", "cpu"])  # fmt: skip
    spec = get_env(f"worldmodel:{run}")
    assert spec.extra["frame_stride"] == 3
    env = spec.make(TASK, max_steps=9)
    first = env.reset(1).images["corner2"]
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 4)).astype(np.float32)
    frames = np.stack([env.step(a)[0].images["corner2"] for a in actions])
    # steps 1 and 2 show the first frame again; step 3 the prediction from it and the 3 actions, held
    # through steps 4 and 5 (tests/worldmodel/test_stride.py checks the prediction itself by hand)
    assert np.array_equal(frames, imagine(env.model, first, actions, None)[1:])
    assert np.array_equal(frames[0], first) and np.array_equal(frames[1], first)
    assert np.array_equal(frames[3], frames[2]) and np.array_equal(frames[4], frames[2])
    # With a state predictor (`vlaforge worldmodel state`), the state moves with each imagined frame: the
    # predictor's answer for the stride's 3 actions, unchanged in between. The recordings hold the scene's
    # state (Meta-World's object and goal poses), predicted with the robot's; with no success in the
    # training episodes (the random policy's) there is no scene judge and the frames are judged.
    main(["worldmodel", "state", str(run), "--steps", "30", "--batch-size", "32"])
    state_cfg = json.loads((run / "state" / "state.json").read_text())
    report = state_cfg["report"]
    assert report["episodes"] == 4 and report["error_mean_first_state_kept"] > 0
    assert (
        state_cfg["robot_state_dim"] == 4
        and state_cfg["state_dim"] == 4 + 17
        and state_cfg["scene_dim"] == 17
    )
    assert "skipped" in report["scene_judge"] and report["scene"]["episodes"] == 4
    from vlaforge.worldmodel.env import world_model_spec

    world_model_spec.cache_clear()
    assert get_env(f"worldmodel:{run}").extra["state"] == "predicted"
    assert get_env(f"worldmodel:{run}").extra["judge"] == "frames"
    env = get_env(f"worldmodel:{run}").make(TASK, max_steps=9)
    s0 = env.reset(episode_seed(1000, TASK, 1)).state
    # the scene starts where the simulator's episode at that seed started (the expert's 2nd, held out)
    rec = open_dataset(str(recorded / "rec-expert"))
    first = np.asarray(rec._columns["observation.environment_state"])[rec.episode_frames(1).start]
    np.testing.assert_array_equal(env._scene, first)
    states = [env.step(a)[0].state for a in actions[:4]]
    assert np.array_equal(states[0], s0) and np.array_equal(states[1], s0)
    full = torch.from_numpy(np.concatenate([s0, first])[None])
    want = env.state_model.predict(full, torch.from_numpy(actions[None, :3]))[0].numpy()
    assert (
        np.array_equal(states[2], want[:4])
        and np.array_equal(env._scene, want[4:])
        and not np.array_equal(want[:4], s0)
    )
    assert np.array_equal(states[3], states[2])
    # a state predictor of another stride (a run retrained beside it) is refused, not silently misused
    meta = json.loads((run / "state" / "state.json").read_text())
    (run / "state" / "state.json").write_text(json.dumps({**meta, "stride": 2}))
    with pytest.raises(InputError, match="steps 2 actions at a time, the world model 3"):
        get_env(f"worldmodel:{run}").make(TASK, max_steps=9)
    (run / "state" / "state.json").write_text(json.dumps(meta))
    # a policy re-planning between the frames is told so; one re-planning on them is not
    side = PolicySide(spec.embodiment(), None, None, 4, 8)
    served = "ws://127.0.0.1:9"
    assert "every 3 steps" in stride_mismatch(EvalConfig(policy=served, out="x", execute_steps=4), spec, side)
    side.execute_steps = 6
    assert stride_mismatch(EvalConfig(policy=served, out="x", execute_steps=6), spec, side) is None
    assert stride_mismatch(EvalConfig(policy="random", out="x"), spec, side) is None


def test_a_world_model_with_a_scene_judge_judges_the_predicted_scene(recorded, tmp_path):
    import torch

    from vlaforge.worldmodel.env import world_model_spec
    from vlaforge.worldmodel.population import _judge_check

    run = tmp_path / "run"
    data = f"{recorded / 'rec-expert'},{recorded / 'rec-random'}"
    main(["worldmodel", "train", "--dataset", data, "--out", str(run), "--stride", "3", "--objective", "mse",
          "--rollout", "2", "--context", "2", "--latent-channels", "4", "--width", "8", "--dyn-width", "16",
          "--dyn-blocks", "1", "--ae-steps", "2", "--steps", "2", "--batch-size", "8", "--sample-every", "0",
          "--device", "cpu"])  # fmt: skip
    # the expert's successes are in training: a scene judge is trained, and no frame judge is needed
    main(["worldmodel", "state", str(run), "--steps", "30", "--batch-size", "32", "--judge-steps", "30",
          "--rollout", "2", "--judge-on", "predicted", "--ensemble", "2"])  # fmt: skip
    state_cfg = json.loads((run / "state" / "state.json").read_text())
    assert state_cfg["rollout"] == 2 and state_cfg["judge_on"] == "predicted" and state_cfg["ensemble"] == 2
    report = state_cfg["report"]["scene_judge"]
    assert report["tasks"] == [TASK] and report["successful_frames"] > 0 and report["states"] == "predicted"
    assert set(report["on_predicted_states"]) == {TASK}
    world_model_spec.cache_clear()
    spec = get_env(f"worldmodel:{run}")
    assert spec.extra["judge"] == "scene state" and "predicted state" in spec.success
    kind, check = _judge_check(str(run))
    assert kind == "predicted_scene" and check == report["on_predicted_states"]
    env = spec.make(TASK, max_steps=9)
    env.reset(0)
    r0, scene0 = env._state.copy(), env._scene.copy()
    actions = np.random.default_rng(1).uniform(-1, 1, (3, 4)).astype(np.float32)
    infos = [env.step(a)[3] for a in actions]
    judge = env.scene_judge
    one = lambda x: np.asarray(x, np.float32)[None]  # noqa: E731
    # before the first prediction: the start's scene judged; after it, the predicted one
    p0 = judge.prob(one(r0), one(scene0), one(scene0), np.array([0]))[0]
    assert infos[0]["success_prob"] == infos[1]["success_prob"] == pytest.approx(float(p0))
    full = env.state_model.predict(
        torch.from_numpy(np.concatenate([r0, scene0])[None]), torch.from_numpy(actions[None])
    )
    # two predictors from two seeds, the environment moving the state by the mean of their predictions
    each = [
        m.predict(torch.from_numpy(np.concatenate([r0, scene0])[None]), torch.from_numpy(actions[None]))
        for m in env.state_model.members
    ]
    assert len(each) == 2 and not torch.allclose(each[0], each[1])
    torch.testing.assert_close(full, (each[0] + each[1]) / 2)
    robot, scene = full[0, :4].numpy(), full[0, 4:].numpy()
    assert infos[2]["success_prob"] == pytest.approx(
        float(judge.prob(one(robot), one(scene), one(scene0), np.array([0]))[0])
    )
    assert infos[2]["success"] == (infos[2]["success_prob"] >= 0.5)


def test_a_world_model_starts_from_other_recorded_scenes(recorded, tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    from vlaforge.worldmodel.env import world_model_spec

    run, new = tmp_path / "run", tmp_path / "new"
    main(["worldmodel", "train", "--dataset", str(recorded / "rec-random"), "--starts", str(recorded / "rec-expert"),
          "--out", str(run), "--heldout", "1", "--context", "2", "--latent-channels", "4", "--width", "8",
          "--dyn-width", "16", "--dyn-blocks", "1", "--ae-steps", "2", "--steps", "2", "--batch-size", "8",
          "--sample-every", "0", "--device", "cpu"])  # fmt: skip
    main(["worldmodel", "starts", str(run), "--starts", str(recorded / "rec-random"), "--out", str(new)])
    cfg = json.loads((new / "last" / "worldmodel.json").read_text())
    # random's last episode is held out of training as before; both random episodes are now the starts
    assert [(Path(h["dataset"]).name, h["episode"]) for h in cfg["heldout"]] == [
        ("rec-random", 1),
        ("rec-random", 0),
        ("rec-random", 1),
    ]
    old = json.loads((run / "last" / "worldmodel.json").read_text())
    assert {k: v for k, v in cfg.items() if k not in ("starts", "heldout")} == {
        k: v for k, v in old.items() if k not in ("starts", "heldout")
    }
    rec = open_dataset(str(recorded / "rec-random"))
    frames = np.asarray(rec.frames("corner2"))
    firsts = load_file(str(new / "last" / "starts.safetensors"))["frames"]
    np.testing.assert_array_equal(firsts[1], frames[rec.episode_frames(0).start])
    np.testing.assert_array_equal(firsts[2], frames[rec.episode_frames(1).start])
    # the env starts an episode at a start's seed from that start's frame
    main(["worldmodel", "judge", "--dataset", f"{recorded / 'rec-expert'},{recorded / 'rec-random'}",
          "--out", str(run / "judge"), "--heldout", "1", "--steps", "2", "--batch-size", "8", "--device", "cpu"])  # fmt: skip
    shutil.rmtree(new)
    main(["worldmodel", "starts", str(run), "--starts", str(recorded / "rec-random"), "--out", str(new)])
    assert (new / "judge" / "judge.json").is_file()
    world_model_spec.cache_clear()
    env = get_env(f"worldmodel:{new}").make(TASK, max_steps=5)
    seed = rec.info["vlaforge"]["episodes"][1]["seed"]
    np.testing.assert_array_equal(env.reset(seed).images["corner2"], frames[rec.episode_frames(1).start])
    monkeypatch.setenv("VLAFORGE_DEBUG", "1")  # the error itself, not the exit
    with pytest.raises(InputError, match="exists; choose another directory or pass --overwrite"):
        main(["worldmodel", "starts", str(run), "--starts", str(recorded / "rec-random"), "--out", str(new)])


def test_the_state_learns_from_more_recorded_episodes(recorded, tmp_path, monkeypatch):
    from vlaforge.worldmodel.data import load_episodes

    run, stride = tmp_path / "run", 3
    main(["worldmodel", "train", "--dataset", str(recorded / "rec-random"), "--out", str(run), "--heldout", "1",
          "--stride", str(stride), "--context", "2", "--latent-channels", "4", "--width", "8", "--dyn-width", "16",
          "--dyn-blocks", "1", "--ae-steps", "2", "--steps", "2", "--batch-size", "8", "--sample-every", "0",
          "--device", "cpu"])  # fmt: skip
    state = ["worldmodel", "state", str(run), "--steps", "5", "--batch-size", "8", "--judge-steps", "5"]
    main(state)
    alone = json.loads((run / "state" / "state.json").read_text())
    # the random policy never succeeds: nothing for a scene judge to learn
    assert "skipped" in alone["report"]["scene_judge"] and alone["extra_datasets"] == []
    main([*state, "--dataset", str(recorded / "rec-expert")])
    both = json.loads((run / "state" / "state.json").read_text())
    random = load_episodes([str(recorded / "rec-random")], "corner2", 32, 1)
    expert = load_episodes([str(recorded / "rec-expert")], "corner2", 32, 0)
    span = lambda eps, es: sum(eps.bounds[e][1] - eps.bounds[e][0] - stride for e in es)  # noqa: E731
    # every transition of random's training episode and of all three expert episodes; the same held-out one
    assert both["report"]["transitions"] == span(random, random.train) + span(expert, range(3))
    assert both["report"]["episodes"] == alone["report"]["episodes"] == 1
    assert both["extra_datasets"] == [str(recorded / "rec-expert")]
    assert both["report"]["scene_judge"]["tasks"] == [TASK]
    # the model's own data again is refused (its held-out episode would be trained on), the state left as it was
    monkeypatch.setenv("VLAFORGE_DEBUG", "1")
    with pytest.raises(InputError, match="already the world model's own data"):
        main([*state, "--dataset", str(recorded / "rec-random")])
    assert json.loads((run / "state" / "state.json").read_text()) == both
