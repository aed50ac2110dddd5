"""ChunkSampler: chunk contents, padding at episode ends, determinism, exact resume, DDP sharding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.data.sampler import ChunkSampler


@pytest.fixture(scope="module")
def ds(two_cam):
    return LeRobotDataset(two_cam[0])


def _expected_chunk(ds, i, H):
    ep = int(ds.column("episode_index")[i])
    end = ds.episode_frames(ep).stop
    steps = np.minimum(np.arange(i, i + H), end - 1)
    return ds.column("action")[steps], np.arange(i, i + H) >= end


def test_batch_contents(ds, two_cam):
    raw = two_cam[1]
    s = ChunkSampler(ds, batch_size=16, chunk_size=6, seed=3)
    b = next(iter(s))
    assert set(b) == {"images", "state", "instruction", "actions", "action_pad", "index"}
    assert set(b["images"]) == {"corner2", "gripperPOV"}
    assert b["images"]["corner2"].dtype == torch.uint8 and b["images"]["corner2"].shape == (16, 32, 32, 3)
    assert b["state"].dtype == torch.float32 and b["state"].shape == (16, 4)
    assert b["actions"].dtype == torch.float32 and b["actions"].shape == (16, 6, 4)
    assert b["action_pad"].dtype == torch.bool and b["index"].dtype == torch.int64
    frames = ds.video_frames("observation.images.corner2")
    for j, i in enumerate(b["index"].tolist()):
        actions, pad = _expected_chunk(ds, i, 6)
        np.testing.assert_array_equal(b["actions"][j].numpy(), actions)
        assert b["action_pad"][j].tolist() == pad.tolist()
        np.testing.assert_array_equal(b["state"][j].numpy(), ds.column("observation.state")[i])
        np.testing.assert_array_equal(b["images"]["corner2"][j].numpy(), frames[i])
        ep = int(ds.column("episode_index")[i])
        assert b["instruction"][j] == raw[ep][0]


def test_padding_at_episode_end(ds):
    s = ChunkSampler(ds, batch_size=4, chunk_size=5)
    last = ds.episode_frames(1).stop - 1
    b = s.batch_from_indices(np.array([last - 1, last, ds.episode_frames(2).start]))
    act = ds.column("action")
    assert b["action_pad"][0].tolist() == [False, False, True, True, True]
    assert b["action_pad"][1].tolist() == [False, True, True, True, True]
    assert not b["action_pad"][2].any()
    np.testing.assert_array_equal(b["actions"][1].numpy(), np.repeat(act[last : last + 1], 5, 0))
    np.testing.assert_array_equal(b["actions"][0, 2:].numpy(), np.repeat(act[last : last + 1], 3, 0))
    # the chunk never leaks into the next episode
    assert not np.isin(b["actions"][1].numpy(), act[last + 1]).all(axis=-1).any()


def test_each_epoch_visits_every_frame_once(ds):
    s = ChunkSampler(ds, batch_size=7, chunk_size=2, seed=0)
    seen = np.concatenate([s.next_indices() for _ in range(ds.num_frames // 7 + 2)])
    assert sorted(seen[: ds.num_frames].tolist()) == list(range(ds.num_frames))
    epoch0 = s.epoch_order(0)
    np.testing.assert_array_equal(seen[: ds.num_frames], epoch0)
    assert not np.array_equal(epoch0, s.epoch_order(1))  # reshuffled per epoch


def test_same_seed_same_batches(ds):
    a = ChunkSampler(ds, batch_size=8, chunk_size=3, seed=5)
    b = ChunkSampler(ds, batch_size=8, chunk_size=3, seed=5)
    c = ChunkSampler(ds, batch_size=8, chunk_size=3, seed=6)
    ia = [a.next_indices() for _ in range(30)]
    ib = [b.next_indices() for _ in range(30)]
    ic = [c.next_indices() for _ in range(30)]
    assert all(np.array_equal(x, y) for x, y in zip(ia, ib))
    assert not all(np.array_equal(x, y) for x, y in zip(ia, ic))


def test_resume_gives_identical_next_batch(ds):
    s = ChunkSampler(ds, batch_size=32, chunk_size=4, seed=2)
    it = iter(s)
    for _ in range(7):  # 224 samples: past the epoch boundary (130 frames)
        next(it)
    state = json.loads(json.dumps(s.state_dict()))
    expected = next(it)
    r = ChunkSampler(ds, batch_size=32, chunk_size=4, seed=999)
    r.load_state_dict(state)
    got = next(iter(r))
    for key in ("state", "actions", "action_pad", "index"):
        assert torch.equal(got[key], expected[key]), key
    assert got["instruction"] == expected["instruction"]
    assert torch.equal(got["images"]["corner2"], expected["images"]["corner2"])


def test_resume_rejects_other_dataset(ds):
    s = ChunkSampler(ds, batch_size=4, chunk_size=2)
    state = s.state_dict()
    state["num_frames"] += 1
    with pytest.raises(ValueError, match="different dataset"):
        s.load_state_dict(state)


def test_rank_shards_are_disjoint(ds):
    shards = [ChunkSampler(ds, batch_size=5, chunk_size=2, seed=4, rank=r, world_size=3) for r in range(3)]
    for epoch in (0, 1):
        orders = [s.epoch_order(epoch) for s in shards]
        assert len({len(o) for o in orders}) == 1  # equal length, so DDP ranks stay in step
        union = np.concatenate(orders)
        assert len(np.unique(union)) == len(union) == (ds.num_frames // 3) * 3
    batches = [next(iter(s))["index"].tolist() for s in shards]
    assert not set(batches[0]) & set(batches[1]) and not set(batches[1]) & set(batches[2])


def test_no_shuffle_and_camera_choice(ds):
    s = ChunkSampler(ds, batch_size=10, chunk_size=1, shuffle=False, cameras=["gripperPOV"])
    b = next(iter(s))
    assert b["index"].tolist() == list(range(10)) and list(b["images"]) == ["gripperPOV"]
    with pytest.raises(ValueError, match="camera 'wrist' is not in the dataset"):
        ChunkSampler(ds, batch_size=2, chunk_size=1, cameras=["wrist"])
