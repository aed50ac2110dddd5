"""`vlaforge eval --record`: the evaluation's rollouts as a LeRobot v3.0 dataset, read back by vlaforge."""

import json

import numpy as np

from vlaforge.data.dataset import open_dataset
from vlaforge.envs.registry import get_env
from vlaforge.eval.run import EvalConfig, evaluate


def test_record_roundtrip(tmp_path):
    """Two expert episodes of 70 steps at most: the first needs 71 (fails), the second succeeds at 62 and
    runs on 5 more steps (the recorded tail); outcomes and steps are those of an evaluation without one."""
    rec = tmp_path / "rec"
    cfg = dict(policy="expert", tasks="button-press-topdown-v3", episodes=2, workers=0, max_steps=70, videos=0,
               baseline_image_size=32, seed=7)  # fmt: skip
    res = evaluate(EvalConfig(**cfg, out=tmp_path / "ev", record=str(rec), record_tail=5))
    plain = evaluate(EvalConfig(**cfg, out=tmp_path / "plain"))
    episodes = res.info["episodes"]
    keys = ("seed", "success", "steps")
    assert [{k: e[k] for k in keys} for e in episodes] == [
        {k: e[k] for k in keys} for e in plain.info["episodes"]
    ]
    assert [(e["success"], e["steps"]) for e in episodes] == [(False, 70), (True, 62)]
    assert [e["tail_steps"] for e in episodes] == [0, 5] and "tail_steps" not in plain.info["episodes"][0]
    ds = open_dataset(rec)
    assert ds.num_episodes == 2
    assert ds.num_frames == sum(e["steps"] + e["tail_steps"] + 1 for e in episodes)
    info = json.loads((rec / "meta" / "info.json").read_text())
    assert info["vlaforge"]["policy"] == "expert" and info["vlaforge"]["model_sha256"] is None
    assert [e["seed"] for e in info["vlaforge"]["episodes"]] == [e["seed"] for e in episodes]
    nxt = ds.column("next.success").reshape(-1).astype(bool)
    seen = ds.column("observation.success").reshape(-1).astype(bool)
    actions, states = ds.actions(), ds.states()
    env = get_env("metaworld").make("button-press-topdown-v3", cameras=("corner2",), image_size=32)
    for e, ep in enumerate(episodes):
        idx = np.array(ds.episode_frames(e))
        assert nxt[idx[-1]] == ep["success"] and seen[idx[0]] == False  # noqa: E712
        assert np.array_equal(seen[idx[1:]], nxt[idx[:-1]])
        assert not actions[idx[-1]].any()
        # Replaying the recorded actions in the simulator reproduces the recorded states and flags.
        obs = env.reset(ep["seed"])
        np.testing.assert_allclose(states[idx[0]], obs.state, atol=1e-6)
        for t in idx[:-1]:
            obs, _, _, step = env.step(actions[t])
            assert bool(step["success"]) == nxt[t]
        np.testing.assert_allclose(states[idx[-1]], obs.state, atol=1e-5)
    frames = ds.frames("corner2")
    assert frames.shape == (ds.num_frames, 32, 32, 3) and frames.std() > 5
    env.close()
