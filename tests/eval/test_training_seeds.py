"""Evaluation refuses episodes that start from a scene the policy was trained on, unless told otherwise."""

from __future__ import annotations

import pytest

from vlaforge.envs.collect import CollectConfig, collect
from vlaforge.envs.metaworld import episode_seed
from vlaforge.errors import InputError
from vlaforge.eval.run import EvalConfig, evaluate
from vlaforge.policy_files import read_policy_dir

pytestmark = pytest.mark.sim

TASK = "button-press-topdown-v3"
COLLECT_SEED = 5
EPISODES = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny chunk-head policy trained for two steps on demonstrations collected with COLLECT_SEED."""
    from vlaforge.train.loop import TrainConfig, train

    root = tmp_path_factory.mktemp("seeds")
    data = collect(
        CollectConfig(
            tasks=TASK, episodes=EPISODES, out=root / "data", image_size=32, workers=0, seed=COLLECT_SEED,
            max_steps=200,
        )
    )  # fmt: skip
    train(
        TrainConfig(
            dataset=str(data), out=str(root / "run"), preset="tiny", head="chunk", steps=2, batch_size=4,
            log_every=1, device="cpu",
        )
    )  # fmt: skip
    return root / "run" / "last"


def _cfg(policy, out, seed, **kw) -> EvalConfig:
    return EvalConfig(
        policy=str(policy), tasks=TASK, episodes=EPISODES, out=out, workers=0, max_steps=4, videos=0,
        seed=seed, **kw,
    )  # fmt: skip


def test_the_checkpoint_records_its_training_seeds(trained):
    seeds = read_policy_dir(trained).training_seeds()
    assert set(seeds) == {TASK} and len(seeds[TASK]) == EPISODES
    attempts = [k for k in range(4 * EPISODES) if episode_seed(COLLECT_SEED, TASK, k) in seeds[TASK]]
    assert len(attempts) == EPISODES  # every kept episode came from one of collection's attempts


def test_evaluating_with_the_collection_seed_is_refused(trained, tmp_path):
    seeds = read_policy_dir(trained).training_seeds()[TASK]
    overlap = sum(episode_seed(COLLECT_SEED, TASK, i) in seeds for i in range(EPISODES))
    assert overlap >= 1  # the expert solves this task from its first seeds
    out = tmp_path / "same-seed"
    with pytest.raises(InputError) as e:
        evaluate(_cfg(trained, out, COLLECT_SEED))
    msg = str(e.value)
    assert f"{overlap} of the {EPISODES} evaluation episodes" in msg
    assert TASK in msg and "--allow-training-seeds" in msg and str(trained) in msg
    assert not out.exists()  # refused before any rollout or output

    # With the flag it runs, and the protocol says how many episodes replayed training scenes.
    res = evaluate(_cfg(trained, out, COLLECT_SEED, allow_training_seeds=True))
    proto = res.info["protocol"]
    assert proto["training_seed_overlap"] == overlap and proto["allow_training_seeds"] is True
    assert [ep["steps"] for ep in res.info["episodes"]] == [4, 4]
    page = res.report_path.read_text()
    assert f"{overlap} episodes start from scenes the policy was trained on" in page


def test_another_seed_runs(trained, tmp_path):
    res = evaluate(_cfg(trained, tmp_path / "other", 1000))
    proto = res.info["protocol"]
    assert proto["training_seed_overlap"] == 0 and proto["allow_training_seeds"] is False
    assert res.overall["n"] == EPISODES
    assert "trained on" not in res.report_path.read_text()


def test_baselines_and_untracked_checkpoints_have_no_overlap(tmp_path, tiny_policy):
    from vlaforge.envs.metaworld import embodiment

    ckpt = tiny_policy(tmp_path / "ckpt", embodiment(("corner2",), 32))  # no training_data recorded
    res = evaluate(_cfg(ckpt, tmp_path / "untracked", COLLECT_SEED))
    assert res.info["protocol"]["training_seed_overlap"] == 0
    res = evaluate(
        EvalConfig(policy="random", tasks=TASK, episodes=1, out=tmp_path / "r", workers=0, max_steps=3,
                   videos=0, seed=COLLECT_SEED, baseline_image_size=32)
    )  # fmt: skip
    assert res.info["protocol"]["training_seed_overlap"] == 0
