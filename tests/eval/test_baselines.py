"""The expert and random baselines through the real evaluation (simulator, workers, files)."""

import json

import numpy as np

from vlaforge.envs.metaworld import HELDOUT_INSTRUCTIONS, embodiment, episode_seed
from vlaforge.eval.baselines import RANDOM_ACTION_STREAM, RandomController
from vlaforge.eval.run import EvalConfig, _choose_videos, evaluate

EASY = "button-press-topdown-v3,drawer-close-v3"


def test_expert_succeeds(tmp_path, report_parser):
    out = tmp_path / "expert"
    res = evaluate(
        EvalConfig(
            policy="expert", tasks=EASY, episodes=2, out=out, workers=0, max_steps=200, videos=1,
            baseline_image_size=32,
        )
    )  # fmt: skip
    info = json.loads((out / "eval_info.json").read_text())
    assert info == json.loads(json.dumps(res.info))
    assert info["aggregates"]["overall"]["successes"] == 4
    assert info["aggregates"]["overall"]["n"] == 4
    assert set(info["aggregates"]["per_task"]) == set(EASY.split(","))
    assert info["aggregates"]["per_group"]["easy"]["rate"] == 1.0
    for ep in info["episodes"]:
        assert ep["success"] and 0 < ep["steps"] < 200
        assert ep["seed"] == episode_seed(1000, ep["task"], ep["episode"])
    # One video per task (the first success), on disk and embedded.
    kept = [ep["video"] for ep in info["episodes"] if ep["video"]]
    assert len(kept) == 2 and all((out / v).is_file() for v in kept)
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(v.split("/")[-1] for v in kept)
    proto = info["protocol"]
    assert proto["baseline"] == "expert" and proto["checkpoint"] is None
    assert proto["image_size"] == 32 and proto["cameras"] == ["corner2"]
    assert set(proto["versions"]) == {"vlaforge", "metaworld", "mujoco", "torch", "numpy", "python"}
    r = report_parser(res.report_path)
    assert len(r["videos"]) == 2
    assert "expert" in res.table()


def test_random_fails_and_heldout_instructions_cycle(tmp_path):
    task = "button-press-topdown-v3"
    out = tmp_path / "random"
    res = evaluate(
        EvalConfig(
            policy="random", tasks=f"{task},door-open-v3", episodes=4, out=out, workers=2, max_steps=40,
            videos=0, instructions="heldout", baseline_image_size=32,
        )
    )  # fmt: skip
    info = res.info
    assert info["aggregates"]["overall"]["successes"] == 0
    assert info["aggregates"]["overall"]["ci_high"] < 0.4
    assert all(ep["steps"] == 40 and ep["video"] is None for ep in info["episodes"])
    assert not list((out / "videos").glob("*.mp4"))
    words = HELDOUT_INSTRUCTIONS[task]
    got = [ep["instruction"] for ep in info["episodes"] if ep["task"] == task]
    assert got == [words[i % len(words)] for i in range(4)]
    assert info["instructions"][task] == list(dict.fromkeys(got))
    # Episodes come back in (task, episode) order whatever the worker scheduling.
    assert [(e["task"], e["episode"]) for e in info["episodes"]] == [
        (t, i) for t in (task, "door-open-v3") for i in range(4)
    ]


def test_random_controller_is_seeded_and_within_limits():
    emb = embodiment(("corner2",), 32)
    a, b = RandomController(emb), RandomController(emb)
    a.reset(7)
    b.reset(7)
    xa = np.concatenate([a.act(None, None) for _ in range(50)])
    xb = np.concatenate([b.act(None, None) for _ in range(50)])
    np.testing.assert_array_equal(xa, xb)
    assert xa.shape == (50, 4) and xa.min() >= -1 and xa.max() <= 1 and xa.std() > 0.4
    b.reset(8)
    assert not np.array_equal(b.act(None, None), xa[:1])


def test_random_actions_do_not_share_the_scene_stream():
    """The env's reset(seed) draws the scene from default_rng(seed); the actions come from another stream."""
    emb = embodiment(("corner2",), 32)
    low, high = np.asarray(emb.action_low, np.float32), np.asarray(emb.action_high, np.float32)
    for seed in (0, 7, episode_seed(1000, "reach-v3", 0)):
        c = RandomController(emb)
        c.reset(seed)
        first = np.concatenate([c.act(None, None) for _ in range(3)])
        scene_stream = np.random.default_rng(seed)
        same_stream = np.stack([scene_stream.uniform(low, high) for _ in range(3)]).astype(np.float32)
        assert np.abs(first - same_stream).min() > 1e-6, seed  # not a single value in common
        own = np.random.default_rng([seed, RANDOM_ACTION_STREAM])
        np.testing.assert_array_equal(
            first, np.stack([own.uniform(low, high) for _ in range(3)]).astype(np.float32)
        )
        c.reset(seed)  # reproducible from the episode seed alone
        np.testing.assert_array_equal(first, np.concatenate([c.act(None, None) for _ in range(3)]))


def test_videos_prefer_one_success_and_one_failure():
    recs = [{"episode": i, "success": s, "video": f"v{i}"} for i, s in enumerate([True, True, True, False])]
    assert _choose_videos(recs, 2) == {0, 3}
    assert _choose_videos(recs, 1) == {0}
    assert _choose_videos(recs, 3) == {0, 3, 1}
    recs[3]["video"] = None  # the failure was not recorded
    assert _choose_videos(recs, 2) == {0, 1}
    assert _choose_videos(recs, 0) == set()
