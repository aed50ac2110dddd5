"""Training on a mixture: a LeRobot dataset and an RLDS dataset, sampled by weight, each with its own stats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlaforge.data.convert import convert
from vlaforge.data.dataset import open_dataset
from vlaforge.data.mixture import MixtureDataset, parse_mixture
from vlaforge.data.sampler import make_sampler
from vlaforge.errors import InputError
from vlaforge.models.policy import Policy
from vlaforge.train.loop import TrainConfig, train


@pytest.fixture(scope="module")
def two(tmp_path_factory, dataset_factory):
    """A: gripper 0..1, 4 episodes (LeRobot). B: gripper 0..100, 2 episodes, converted to RLDS."""
    root = tmp_path_factory.mktemp("mix")
    dataset_factory(root / "arm_a", n_episodes=4, length=20, size=32, seed=1)
    b_src = dataset_factory(root / "b_src", n_episodes=2, length=20, size=32, seed=2, gripper_max=100.0)
    convert(b_src, "rlds", root / "arm_b", workers=1)
    mix = root / "mix.json"
    mix.write_text(json.dumps({"datasets": [{"path": "arm_a"}, {"path": "arm_b", "weight": 3.0}]}))
    return root, mix


def test_parse_mixture_and_its_errors(two, tmp_path):
    root, mix = two
    entries = parse_mixture(mix)
    assert [(e.key, e.weight) for e in entries] == [("arm_a", 1.0), ("arm_b", 3.0)]
    assert entries[0].path == root / "arm_a"
    assert [e.key for e in parse_mixture(f"{root / 'arm_a'},{root / 'arm_b'}")] == ["arm_a", "arm_b"]
    bad = tmp_path / "bad.json"
    for doc, match in [
        ({"datasets": [{"path": "x"}, {"path": "y/x"}]}, r"datasets \['x'\] appear twice"),
        ({"datasets": [{"path": "x", "weight": 0}]}, "weights must be > 0"),
        ({"datasets": [{"path": "x", "wieght": 2}]}, r"unknown keys \['wieght'\]"),
        ({"sets": []}, "a mixture file is"),
    ]:
        bad.write_text(json.dumps(doc))
        with pytest.raises(InputError, match=match):
            parse_mixture(bad)


def test_sampler_draws_by_weight_covers_epochs_resumes_and_shards(two):
    _, mix = two
    ds = open_dataset(mix)
    assert isinstance(ds, MixtureDataset) and ds.num_frames == 80 + 40 and ds.camera_names == ["corner2"]
    p = ds.sample_probabilities()  # weight x frames: 1 x 80 vs 3 x 40
    np.testing.assert_allclose(p, [0.4, 0.6])
    s = make_sampler(ds, 8, 2, seed=3)
    drawn = [next(s) for _ in range(50)]
    keys = [k for b in drawn for k in b["dataset"]]
    share_b = keys.count("arm_b") / len(keys)
    assert abs(share_b - 0.6) < 3 * np.sqrt(0.24 / len(keys))
    idx = np.concatenate([b["index"].numpy() for b in drawn])
    b_idx = idx[idx >= 80]
    assert sorted(b_idx[:40]) == list(range(80, 120))  # B's first epoch: each of its frames once
    for b in drawn:  # a sample's dataset key is the dataset its frame comes from
        assert [("arm_b" if i >= 80 else "arm_a") for i in b["index"].tolist()] == b["dataset"]
    # Exact resume: a fresh sampler loaded with the state continues with the same batches.
    state = s.state_dict()
    after = [next(s) for _ in range(3)]
    s2 = make_sampler(ds, 8, 2, seed=3)
    s2.load_state_dict(json.loads(json.dumps(state)))
    for x, y in zip(after, [next(s2) for _ in range(3)]):
        assert x["index"].tolist() == y["index"].tolist() and x["dataset"] == y["dataset"]
        assert torch.equal(x["images"]["corner2"], y["images"]["corner2"])
    # DDP: two ranks draw disjoint frames of each dataset within an epoch.
    r0, r1 = (make_sampler(ds, 4, 1, seed=3, rank=r, world_size=2) for r in (0, 1))
    f0 = {i for _ in range(5) for i in next(r0)["index"].tolist()}
    f1 = {i for _ in range(5) for i in next(r1)["index"].tolist()}
    assert not f0 & f1
    # Streaming mode (decode workers reading both formats) gives the same batches.
    streamed = make_sampler(ds, 8, 2, seed=3, cache_max_gb=0, decode_workers=1)
    try:
        for x in drawn[:3]:
            y = next(streamed)
            assert x["index"].tolist() == y["index"].tolist()
            assert torch.equal(x["images"]["corner2"], y["images"]["corner2"])
    finally:
        streamed.close()


def test_each_sample_is_normalised_with_its_own_dataset(two):
    _, mix = two
    ds = open_dataset(mix)
    torch.manual_seed(0)
    policy = Policy.from_preset("tiny", "chunk", ds.embodiment(), ds.norm_stats(), chunk_size=2)
    policy.set_dataset_stats(ds.dataset_norm_stats())
    policy.eval()
    batch = next(make_sampler(ds, 8, 2, seed=5))
    keys = batch["dataset"]
    assert set(keys) == {"arm_a", "arm_b"}

    def loss(sel):
        sub = {
            "images": {"corner2": batch["images"]["corner2"][sel]},
            "state": batch["state"][sel],
            "instruction": [batch["instruction"][i] for i in sel],
            "actions": batch["actions"][sel],
            "action_pad": batch["action_pad"][sel],
            "dataset": [keys[i] for i in sel],
        }
        with torch.no_grad():
            return policy.compute_loss(sub)[0].item()

    a = [i for i, k in enumerate(keys) if k == "arm_a"]
    b = [i for i, k in enumerate(keys) if k == "arm_b"]
    whole = loss(list(range(8)))
    # The L1 loss is a mean over the steps that are not padding: the mixed batch is the step-weighted mean
    # of its parts, which holds only if each sample is normalised with its own dataset's statistics.
    steps = (~batch["action_pad"]).sum(1).numpy()
    na, nb = steps[a].sum(), steps[b].sum()
    assert whole == pytest.approx((na * loss(a) + nb * loss(b)) / (na + nb), rel=1e-5)
    with pytest.raises(InputError, match="pass unnorm_key"):  # a batch without its samples' datasets
        policy.compute_loss(dict(batch, dataset=None))
    policy.set_dataset_stats(None)  # one pooled set of statistics: a different loss
    with torch.no_grad():
        assert policy.compute_loss(batch)[0].item() != pytest.approx(whole, rel=1e-3)


def test_train_on_the_mixture_saves_every_unnorm_key_and_resumes_exactly(two, tmp_path):
    _, mix = two
    # The constant schedule: the resume below extends `steps`.
    base = dict(dataset=str(mix), preset="tiny", head="chunk", steps=3, batch_size=4, log_every=1,
                device="cpu", schedule="constant")  # fmt: skip
    run = train(TrainConfig(out=str(tmp_path / "straight"), **base))
    stats = json.loads((run / "last" / "dataset_stats.json").read_text())
    assert sorted(stats) == ["arm_a", "arm_b"]
    assert (
        stats["arm_b"]["action"]["max"][3] == pytest.approx(100.0)
        and stats["arm_a"]["action"]["max"][3] <= 1.0
    )
    policy = Policy.from_pretrained(run / "last")
    assert policy.unnorm_keys == ["arm_a", "arm_b"]
    obs = {
        "images": {"corner2": np.zeros((32, 32, 3), np.uint8)},
        "state": np.zeros(4, np.float32),
        "instruction": "x",
    }
    with pytest.raises(InputError, match=r"pass unnorm_key, one of \['arm_a', 'arm_b'\]"):
        policy.predict_action(obs)
    with pytest.raises(InputError, match="'arm_c' is not one of"):
        policy.predict_action(obs, unnorm_key="arm_c")
    grip_a = policy.predict_action(obs, unnorm_key="arm_a")[:, 3]
    grip_b = policy.predict_action(obs, unnorm_key="arm_b")[:, 3]
    assert np.all(grip_b > grip_a)  # the same normalised output, in each robot's own units
    # 2 steps, then resume to 3: bitwise the same weights as 3 straight.
    train(TrainConfig(out=str(tmp_path / "resumed"), **{**base, "steps": 2}))
    resumed = train(TrainConfig(out=str(tmp_path / "resumed"), resume=True, **base))
    wa, wb = (
        load_file(str(run / "last" / "model.safetensors")),
        load_file(str(resumed / "last" / "model.safetensors")),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.sim
def test_eval_of_a_mixture_checkpoint_takes_the_unnorm_key(two, tmp_path):
    """`vlaforge eval --unnorm-key`: refused without one (two datasets' statistics), used with one, in
    the per-process runner (the recorded actions are that dataset's units) and the batched one."""
    from vlaforge.envs.metaworld import configure_rendering
    from vlaforge.eval.run import EvalConfig, evaluate

    configure_rendering()
    _, mix = two
    run = train(TrainConfig(dataset=str(mix), out=str(tmp_path / "run"), preset="tiny", head="chunk", steps=1,
                            batch_size=4, device="cpu", save_every=None))  # fmt: skip

    def ev(name, **kw):
        cfg = dict(policy=str(run / "last"), env="metaworld", tasks="reach-v3", episodes=1, max_steps=4,
                   workers=0, videos=0, instructions="train", out=tmp_path / name)  # fmt: skip
        return evaluate(EvalConfig(**{**cfg, **kw}))

    with pytest.raises(InputError, match=r"--unnorm-key, one of \['arm_a', 'arm_b'\]"):
        ev("none")
    with pytest.raises(InputError, match="arm_c: not a training dataset"):
        ev("bad", unnorm_key="arm_c")
    with pytest.raises(InputError, match="only a checkpoint directory"):
        ev("expert", policy="expert", unnorm_key="arm_a")
    grips = {}
    for key in ("arm_a", "arm_b"):
        res = ev(key, unnorm_key=key, record=str(tmp_path / f"rec-{key}"))  # per process
        assert res.info["protocol"]["unnorm_key"] == key
        grips[key] = open_dataset(tmp_path / f"rec-{key}").actions()[:-1, 3]
    # Same observations, same normalised output: the gripper in each robot's units (0..1 vs 0..100).
    # (The env clips what it executes; the recorded action is the policy's.)
    assert np.all(grips["arm_b"] > grips["arm_a"] + 1.0), grips
    batched = ev("batched", unnorm_key="arm_b", workers=1, envs_per_worker=1)
    assert (
        batched.info["protocol"]["runner"] == "batched" and batched.info["protocol"]["unnorm_key"] == "arm_b"
    )
