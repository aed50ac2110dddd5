"""Observation history in the sampler: each sample's T frames, oldest first, padded at episode starts."""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.data.sampler import ChunkSampler
from vlaforge.errors import InputError


@pytest.fixture(scope="module")
def ds(two_cam):
    return LeRobotDataset(two_cam[0])


@pytest.mark.parametrize("cache_max_gb", [None, 0])  # cached and streamed give the same batches
def test_history_frames_and_padding(ds, cache_max_gb):
    T = 3
    s = ChunkSampler(ds, batch_size=8, chunk_size=2, history=T, cache_max_gb=cache_max_gb, decode_workers=1)
    starts = [ds.episode_frames(e).start for e in range(ds.num_episodes)]
    idx = np.array([starts[1], starts[1] + 1, starts[1] + 2, starts[2] + 7], dtype=np.int64)
    b = s.batch_from_indices(idx)
    frames = ds.video_frames("observation.images.corner2")
    states = ds.column("observation.state")
    assert b["images"]["corner2"].shape == (4, T, 32, 32, 3) and b["state"].shape == (4, T, 4)
    for j, i in enumerate(idx):
        start = max(s for s in starts if s <= i)
        want = [max(i - k, start) for k in (2, 1, 0)]  # oldest first, clamped to the episode's first frame
        np.testing.assert_array_equal(b["images"]["corner2"][j].numpy(), frames[want])
        np.testing.assert_array_equal(b["state"][j].numpy(), states[want])
        assert b["history_pad"][j].tolist() == [i - k < start for k in (2, 1, 0)]
    s.close()


def test_history_one_keeps_the_batch_unchanged(ds):
    a = ChunkSampler(ds, batch_size=8, chunk_size=4, seed=1)
    b = ChunkSampler(ds, batch_size=8, chunk_size=4, seed=1, history=1)
    x, y = next(a), next(b)
    assert "history_pad" not in y and x["images"]["corner2"].shape == (8, 32, 32, 3)
    for k in ("state", "actions", "index"):
        assert np.array_equal(x[k].numpy(), y[k].numpy())


def test_bad_history_is_refused(ds):
    with pytest.raises(InputError, match="history must be >= 1"):
        ChunkSampler(ds, batch_size=2, chunk_size=1, history=0)
