"""The dataset interface: open_dataset, the cache at the training size, the per-node cache lock, and
streaming batches that equal the cached ones bit for bit (resume included)."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest
import torch
from PIL import Image

from vlaforge.data.dataset import FORMATS, TrainingDataset, open_dataset
from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.data.sampler import ChunkSampler, make_sampler
from vlaforge.data.synth import SynthConfig, write_synthetic
from vlaforge.data.video import SeekingDecoder, read_video
from vlaforge.errors import InputError

KEY = "observation.images.corner2"


@pytest.fixture(scope="module")
def gop4(tmp_path_factory):
    """6 episodes x 23 frames, 32 px, keyframes every 4 frames (so seeking really seeks)."""
    out = tmp_path_factory.mktemp("gop") / "ds"
    return write_synthetic(SynthConfig(out=str(out), episodes=6, length=23, image_size=32, video_gop=4))


def test_open_dataset_recognises_lerobot_and_refuses_the_rest(gop4, tmp_path):
    ds = open_dataset(gop4, image_size=16)
    assert isinstance(ds, LeRobotDataset) and isinstance(ds, TrainingDataset)
    assert ds.image_size == 16 and ds.embodiment().image_size == 16 and ds.camera_names == ["corner2"]
    with pytest.raises(InputError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="is not a dataset vlaforge can read") as e:
        open_dataset(tmp_path / "plain")
    for name, fmt in FORMATS.items():  # the error says what every format looks like
        assert f"{name}: {fmt.looks_like}" in str(e.value)
    assert "meta/info.json" in str(e.value) and "dataset_info.json" in str(e.value)
    rlds = tmp_path / "bridge" / "1.0.0"
    rlds.mkdir(parents=True)
    (rlds / "dataset_info.json").write_text("{}")
    (rlds / "bridge-train.tfrecord-00000-of-00001").write_bytes(b"")
    with pytest.raises(InputError, match="features.json is missing"):  # now read by the RLDS reader
        open_dataset(rlds)


def test_cache_at_training_size_is_the_antialiased_resize(gop4):
    native = LeRobotDataset(gop4).frames("corner2")  # (N, 32, 32, 3)
    ds = LeRobotDataset(gop4, image_size=12)
    small = ds.frames("corner2")
    assert small.shape == (ds.num_frames, 12, 12, 3) and small.dtype == np.uint8
    for i in (0, 17, ds.num_frames - 1):  # Pillow's bicubic on each native frame, independently
        ref = np.asarray(Image.fromarray(np.array(native[i])).resize((12, 12), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(small[i], ref)
    # antialiased: the mean colour survives the 32 -> 12 shrink (a point sampler would alias)
    assert np.abs(small.mean((1, 2)) - np.asarray(native).mean((1, 2))).max() < 2.0
    # both sizes coexist in the cache, each with its own sidecar naming the size
    assert (gop4 / ".cache" / f"{KEY}.32x32.u8").is_file() and (gop4 / ".cache" / f"{KEY}.12x12.u8").is_file()
    side = json.loads((gop4 / ".cache" / f"{KEY}.12x12.json").read_text())
    assert side["shape"] == [ds.num_frames, 12, 12, 3] and side["resize"].startswith("PIL bicubic")
    assert ds.cache_bytes() == ds.num_frames * 12 * 12 * 3
    item = ds[5]
    assert item[KEY].shape == (12, 12, 3)


def _open_cache(root: str, size: int, barrier) -> tuple[list[str], bytes]:
    ds = LeRobotDataset(root, image_size=size)
    barrier.wait()  # both processes ask for the missing cache at the same moment
    frames = ds.frames("corner2")
    return ds.cache_builds, np.asarray(frames).tobytes()


def test_two_processes_build_the_cache_once(tmp_path):
    root = write_synthetic(SynthConfig(out=str(tmp_path / "ds"), episodes=8, length=40, image_size=48))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(2)
        with ctx.Pool(2) as pool:
            results = pool.starmap(_open_cache, [(str(root), 24, barrier)] * 2)
    builds = [b for r in results for b in r[0]]
    assert builds == [f"{KEY}.24x24"]  # exactly one of the two decoded
    assert results[0][1] == results[1][1]  # and the other read the same frames
    expected = LeRobotDataset(root, image_size=24).frames("corner2")
    assert np.frombuffer(results[0][1], np.uint8).tobytes() == np.asarray(expected).tobytes()
    assert not list((root / ".cache").glob(".*tmp*"))


def test_seeking_decoder_equals_sequential_decode(gop4):
    ds = LeRobotDataset(gop4)
    path = ds.video_path(KEY, 0)
    times, frames = read_video(path)
    dec = SeekingDecoder()
    want = np.array([50, 3, 4, 4, 90, 0, 137, 12, 13, 70])
    got = dec.frames_at(path, times[want], ds.fps)
    np.testing.assert_array_equal(got, frames[want])
    dec.close()


@pytest.mark.parametrize("size", [None, 20])
def test_streaming_batches_equal_cached_batches_and_resume(gop4, size):
    ds = LeRobotDataset(gop4, image_size=size)
    kw = dict(batch_size=16, chunk_size=4, seed=7)
    cached = make_sampler(ds, **kw, cache_max_gb=None)
    stream = make_sampler(ds, **kw, cache_max_gb=0, decode_workers=2)
    assert not cached.streaming and stream.streaming
    try:
        for _ in range(12):  # 192 samples: past the end of the first epoch (138 frames)
            a, b = next(cached), next(stream)
            for k in ("state", "actions", "action_pad", "index"):
                assert torch.equal(a[k], b[k]), k
            assert a["instruction"] == b["instruction"]
            assert torch.equal(a["images"]["corner2"], b["images"]["corner2"])
        state = json.loads(json.dumps(stream.state_dict()))  # the consumed position, not the prefetched
        assert state == cached.state_dict()
        expected = [next(cached) for _ in range(2)]
    finally:
        stream.close()
    resumed = make_sampler(
        ds,
        **kw,
        cache_max_gb=0,
        decode_workers=1,
    )
    resumed.load_state_dict(state)
    try:
        for e in expected:
            got = next(resumed)
            assert torch.equal(got["index"], e["index"])
            assert torch.equal(got["images"]["corner2"], e["images"]["corner2"])
    finally:
        resumed.close()


def test_cache_budget_picks_the_mode(gop4):
    ds = LeRobotDataset(gop4, image_size=16)
    need = ds.num_frames * 16 * 16 * 3
    assert not make_sampler(ds, 4, 1, cache_max_gb=need / 1e9).streaming  # fits exactly
    s = make_sampler(ds, 4, 1, cache_max_gb=(need - 1) / 1e9)
    assert s.streaming and s.cache_bytes == need
    s.close()
    with pytest.raises(InputError, match="cache_max_gb=-1"):
        make_sampler(ds, 4, 1, cache_max_gb=-1)


class ArrayDataset:
    """A second `TrainingDataset` implementation, held in memory: the sampler must need nothing else."""

    def __init__(self, lengths, image_size=6):
        n = sum(lengths)
        self.num_frames, self.num_episodes = n, len(lengths)
        self.tasks = ["left", "right"]
        self.camera_names = ["wrist"]
        self.image_size = image_size
        self._starts = np.cumsum([0, *lengths])
        self._actions = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
        self._images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 6, 6, 3), np.uint8)

    def episode_frames(self, e):
        return range(int(self._starts[e]), int(self._starts[e + 1]))

    def actions(self):
        return self._actions

    def states(self):
        return self._actions[:, :1] * -1

    def task_indices(self):
        return np.arange(self.num_frames) % 2

    def frames(self, camera):
        return self._images

    def cache_bytes(self, cameras=None):
        return self._images.nbytes

    def embodiment(self): ...

    def norm_stats(self): ...

    def training_data(self):
        return {}

    def frame_reader(self, camera): ...

    def sampler(self, *a, **k):
        return ChunkSampler(self, *a, **k)


def test_sampler_works_on_any_training_dataset():
    ds = ArrayDataset([3, 4])
    assert isinstance(ds, TrainingDataset)
    b = make_sampler(ds, batch_size=3, chunk_size=3, shuffle=False).batch_from_indices(np.array([1, 2, 3]))
    np.testing.assert_array_equal(b["actions"][1].numpy(), [[4, 5], [4, 5], [4, 5]])  # frame 2 ends ep 0
    assert b["action_pad"].tolist() == [[False, False, True], [False, True, True], [False, False, False]]
    np.testing.assert_array_equal(b["actions"][2].numpy(), [[6, 7], [8, 9], [10, 11]])
    assert b["instruction"] == ["right", "left", "right"] and b["state"][:, 0].tolist() == [-2, -4, -6]
    assert b["images"]["wrist"][:, 0, 0, 0].tolist() == [1, 2, 3]
