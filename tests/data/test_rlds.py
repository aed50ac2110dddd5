"""The RLDS reader against datasets written by the tests' own spec writer (tests/data/rlds_spec.py)."""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from vlaforge.cli import main
from vlaforge.data.dataset import TrainingDataset, open_dataset
from vlaforge.data.rlds import (
    RLDSError,
    RLDSFeature,
    decode_episode,
    encode_episode,
    features_to_json,
    parse_features,
)
from vlaforge.data.rlds_dataset import RLDSDataset
from vlaforge.data.sampler import make_sampler
from vlaforge.data.tfrecord import parse_example
from vlaforge.errors import InputError

from .rlds_spec import jpeg, libero_like, write_tfds


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    data = libero_like(n_episodes=6, shards=2, size=16, fmt="png")
    return data, write_tfds(tmp_path_factory.mktemp("rlds"), data)


def concat(data, key):
    return np.concatenate([e[key] for e in data["episodes"]])


def test_reads_every_value_written_by_the_spec_writer(spec):
    data, root = spec
    ds = open_dataset(root.parent)  # <name>/ finds its version directory
    assert isinstance(ds, RLDSDataset) and isinstance(ds, TrainingDataset)
    assert ds.num_episodes == 6 and ds.num_frames == sum(len(e["action"]) for e in data["episodes"])
    np.testing.assert_array_equal(ds.actions(), concat(data, "action"))
    np.testing.assert_array_equal(ds.states(), concat(data, "state"))
    for e, ep in enumerate(data["episodes"]):
        r = ds.episode_frames(e)
        assert len(r) == len(ep["action"])
        assert {ds.tasks[t] for t in ds.task_indices()[r.start : r.stop]} == {ep["instruction"]}
    assert ds.camera_names == ["image", "wrist_image"]
    np.testing.assert_array_equal(ds.frames("image"), concat(data, "image"))  # PNG: lossless
    np.testing.assert_array_equal(ds.frames("wrist_image"), concat(data, "wrist_image"))
    idx = np.array([7, 0, 30, 7])
    np.testing.assert_array_equal(ds.frame_reader("wrist_image").read(idx), concat(data, "wrist_image")[idx])
    emb = ds.embodiment()
    assert (emb.action_dim, emb.state_dim, emb.image_size) == (7, 8, 16)
    stats = ds.norm_stats()
    np.testing.assert_allclose(
        stats["action"].q99, np.quantile(concat(data, "action"), 0.99, axis=0), rtol=1e-5
    )


def test_jpeg_frames_are_the_decoded_bytes_and_resize_is_bicubic(tmp_path):
    data = libero_like(n_episodes=3, shards=1, size=24, fmt="jpeg", seed=3)
    root = write_tfds(tmp_path, data)
    ds = RLDSDataset(root, image_size=10)
    img = data["episodes"][1]["image"][2]
    native = np.asarray(Image.open(io.BytesIO(jpeg(img))).convert("RGB"))  # what the stored bytes decode to
    want = np.asarray(Image.fromarray(native).resize((10, 10), Image.Resampling.BICUBIC))
    i = ds.episode_frames(1).start + 2
    np.testing.assert_array_equal(ds.frames("image")[i], want)
    np.testing.assert_array_equal(ds.frame_reader("image").read(np.array([i]))[0], want)


def test_index_is_cached_and_rebuilt_when_a_shard_changes(tmp_path):
    root = write_tfds(tmp_path, libero_like(n_episodes=4, shards=2))
    assert RLDSDataset(root).index_built
    assert not RLDSDataset(root).index_built
    shard = sorted(root.glob("*.tfrecord-*"))[0]
    shard.write_bytes(shard.read_bytes())  # same bytes, new mtime: the index cannot know, so it rebuilds
    os.utime(shard, ns=(1, 1))
    assert RLDSDataset(root).index_built


def test_concurrent_openers_build_the_index_once(tmp_path):
    root = write_tfds(tmp_path, libero_like(n_episodes=4, shards=2))
    with ThreadPoolExecutor(3) as pool:  # flock excludes separate open files, threads included
        opened = list(pool.map(lambda _: RLDSDataset(root), range(3)))
    assert sorted(d.index_built for d in opened) == [False, False, True]
    assert all(np.array_equal(d.actions(), opened[0].actions()) for d in opened)


def test_streaming_and_cached_batches_are_identical(spec):
    _, root = spec
    ds = RLDSDataset(root, image_size=8)
    cached = make_sampler(ds, 5, 3, seed=1)
    streamed = make_sampler(ds, 5, 3, seed=1, cache_max_gb=0, decode_workers=1)
    try:
        assert streamed.streaming and not cached.streaming
        for _ in range(4):
            a, b = next(cached), next(streamed)
            for cam in ds.camera_names:
                assert np.array_equal(a["images"][cam].numpy(), b["images"][cam].numpy())
            assert (
                np.array_equal(a["actions"].numpy(), b["actions"].numpy())
                and a["instruction"] == b["instruction"]
            )
    finally:
        streamed.close()


# ------------------------------------------------------------------ the format


def test_features_json_round_trip_and_episode_coding():
    feats = [
        RLDSFeature("steps/observation/image", "image", "uint8", (4, 4, 3), True, "jpeg"),
        RLDSFeature("steps/observation/joints", "tensor", "float64", (2, 3), True, "bytes"),
        RLDSFeature("steps/action", "tensor", "float32", (2,), True),
        RLDSFeature("steps/count", "tensor", "int32", (), True),
        RLDSFeature("steps/is_first", "tensor", "bool", (), True),
        RLDSFeature("steps/language_instruction", "text", "string", (), True),
        RLDSFeature("episode_metadata/seed", "tensor", "int64", (), False),
        RLDSFeature("episode_metadata/file_path", "text", "string", (), False),
    ]
    doc = features_to_json(feats)
    steps = doc["featuresDict"]["features"]["steps"]
    assert steps["pythonClassName"].endswith("dataset_feature.Dataset")
    assert parse_features(json.loads(json.dumps(doc))) == {f.key: f for f in feats}
    by_key = {f.key: f for f in feats}
    joints = np.random.default_rng(0).normal(size=(3, 2, 3))  # float64 with encoding "bytes": exact
    values = {
        "steps/observation/image": [b"a", b"bb", b"ccc"],
        "steps/observation/joints": joints,
        "steps/action": np.arange(6, dtype=np.float32).reshape(3, 2),
        "steps/count": np.array([-1, 0, 2**31 - 1]),
        "steps/is_first": np.array([True, False, False]),
        "steps/language_instruction": ["pick", "pick", "pick"],
        "episode_metadata/seed": np.int64(-5),
        "episode_metadata/file_path": "/raw/x.h5",
    }
    data = encode_episode(values, by_key)
    T, out = decode_episode(parse_example(data), by_key, "test")
    assert T == 3
    assert out["steps/observation/image"] == [b"a", b"bb", b"ccc"]
    np.testing.assert_array_equal(out["steps/observation/joints"], joints)
    assert out["steps/count"].dtype == np.int32 and out["steps/count"].tolist() == [-1, 0, 2**31 - 1]
    assert out["steps/is_first"].tolist() == [True, False, False]
    assert out["episode_metadata/seed"] == -5 and out["episode_metadata/file_path"] == "/raw/x.h5"


def test_values_that_do_not_fill_whole_steps():
    feats = {"steps/action": RLDSFeature("steps/action", "tensor", "float32", (7,), True)}
    with pytest.raises(RLDSError, match="holds 10 values, not a whole number of steps"):
        decode_episode({"steps/action": np.zeros(10, np.float32)}, feats, "rec")


# ------------------------------------------------------------------ bad input


def test_corrupt_record_names_file_and_offset(tmp_path):
    root = write_tfds(tmp_path, libero_like(n_episodes=4, shards=1))
    shard = next(root.glob("*.tfrecord-*"))
    raw = bytearray(shard.read_bytes())
    first_len = int.from_bytes(raw[:8], "little")
    second = 16 + first_len
    raw[second + 40] ^= 0xFF  # a data byte of the second record
    shard.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=rf"{shard.name}: corrupt record at byte offset {second}"):
        RLDSDataset(root)


def test_truncated_shard(tmp_path):
    root = write_tfds(tmp_path, libero_like(n_episodes=4, shards=1))
    shard = next(root.glob("*.tfrecord-*"))
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(InputError, match=f"{shard.name}: truncated record at byte offset"):
        RLDSDataset(root)


def test_shard_cut_at_a_record_boundary_disagrees_with_dataset_info(tmp_path):
    root = write_tfds(tmp_path, libero_like(n_episodes=4, shards=1))
    shard = next(root.glob("*.tfrecord-*"))
    raw = shard.read_bytes()
    shard.write_bytes(raw[: 16 + int.from_bytes(raw[:8], "little")])  # exactly one whole record left
    with pytest.raises(RLDSError, match="holds 1 episode records but dataset_info.json says 4"):
        RLDSDataset(root)


def test_missing_shard(tmp_path):
    root = write_tfds(tmp_path, libero_like(n_episodes=4, shards=2))
    gone = sorted(root.glob("*.tfrecord-*"))[1]
    gone.unlink()
    with pytest.raises(RLDSError, match=rf"1 of 2 shard\(s\).*{gone.name}"):
        open_dataset(root)


def test_feature_missing_from_features_json(tmp_path):
    root = write_tfds(tmp_path, libero_like(n_episodes=2, shards=1), extra_feature=True)
    with pytest.raises(
        RLDSError, match=r"\['steps/observation/undeclared'\] are not declared in features.json"
    ):
        RLDSDataset(root)


def test_unknown_split_and_not_a_dataset(tmp_path):
    root = write_tfds(tmp_path, libero_like(n_episodes=2, shards=1))
    with pytest.raises(RLDSError, match=r"no split 'validation'.*\['train'\]"):
        RLDSDataset(root, split="validation")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RLDSError, match="no dataset_info.json"):
        RLDSDataset(tmp_path / "empty")


# ------------------------------------------------------------------ the CLI


def test_dataset_info_and_view_on_rlds(spec, tmp_path, capsys):
    _, root = spec
    main(["dataset", "info", str(root)])
    out = capsys.readouterr().out
    assert "RLDS dataset libero_like 1.0.0" in out and "6 episodes" in out and "open the top drawer" in out
    main(
        [
            "dataset",
            "view",
            str(root),
            "--episode",
            "2",
            "--camera",
            "wrist_image",
            "--out",
            str(tmp_path / "e.mp4"),
        ]
    )
    assert (tmp_path / "e.mp4").stat().st_size > 1000
