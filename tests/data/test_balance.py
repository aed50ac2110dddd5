"""Task-balanced sampling: every task gets the same share of an epoch, however long its episodes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.data.sampler import ChunkSampler
from vlaforge.errors import InputError


@pytest.fixture(scope="module")
def ds(two_cam):
    return LeRobotDataset(two_cam[0])  # 5 episodes, tasks alternating: 78 frames of task 0, 52 of task 1


def _task_of(ds):
    return np.asarray(ds.task_indices())


def test_an_epoch_serves_every_task_equally(ds):
    n = ds.num_frames
    task = _task_of(ds)
    assert np.bincount(task).tolist() == [78, 52]  # unbalanced on purpose
    s = ChunkSampler(ds, batch_size=8, chunk_size=2, seed=1, balance="tasks")
    for epoch in range(3):
        order = s.epoch_order(epoch)
        assert len(order) == n
        assert np.bincount(task[order]).tolist() == [n // 2, n - n // 2]
        for t in (0, 1):
            frames = np.flatnonzero(task == t)
            counts = np.bincount(order[task[order] == t], minlength=n)[frames]
            k = int((task[order] == t).sum())
            # back-to-back permutations: every frame of the task drawn floor or ceil of k / len times
            assert counts.min() >= k // len(frames) and counts.max() <= -(-k // len(frames))
    assert not np.array_equal(s.epoch_order(0), s.epoch_order(1))
    plain = ChunkSampler(ds, batch_size=8, chunk_size=2, seed=1)
    assert sorted(plain.epoch_order(0).tolist()) == list(range(n))  # the default is unchanged


def test_balanced_batches_and_resume(ds):
    s = ChunkSampler(ds, batch_size=16, chunk_size=3, seed=4, balance="tasks")
    seen = np.concatenate([next(s)["index"].numpy() for _ in range(20)])
    share = np.bincount(_task_of(ds)[seen]) / len(seen)
    assert abs(share[0] - 0.5) < 0.1  # vs 0.6 of the frames
    state = json.loads(json.dumps(s.state_dict()))
    want = next(s)["index"].tolist()
    r = ChunkSampler(ds, batch_size=16, chunk_size=3, seed=0, balance="tasks")
    r.load_state_dict(state)
    assert next(r)["index"].tolist() == want
    other = ChunkSampler(ds, batch_size=16, chunk_size=3, seed=0)
    with pytest.raises(InputError, match="saved with balance='tasks'; this sampler has balance='frames'"):
        other.load_state_dict(state)


def test_bad_balance_is_refused(ds):
    with pytest.raises(InputError, match="balance must be one of"):
        ChunkSampler(ds, batch_size=4, chunk_size=1, balance="episodes")
