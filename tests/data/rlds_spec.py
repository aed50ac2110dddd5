"""An RLDS / TFDS writer written for the tests from the published formats, independent of vlaforge's.

- TFRecord framing: uint64 length (LE), uint32 masked CRC-32C of the length bytes, the data, uint32 masked
  CRC-32C of the data; mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2^32 (TensorFlow's TFRecord guide).
- CRC-32C: bitwise, reflected polynomial 0x82F63B78 (RFC 3720 B.4), checked against its check value here.
- tf.train.Example in the protobuf wire format (example.proto, feature.proto; protobuf encoding guide):
  Example{1: Features{1: map entry{1: key, 2: Feature{1: BytesList | 2: FloatList | 3: Int64List}}}}, lists
  packed (floats as little-endian float32, int64s as varints, negatives in ten bytes).
- The TFDS layout of an RLDS episode: every step feature flattened under `steps/`, values concatenated over
  the steps; bools as int64; images as encoded bytes per step; features.json and dataset_info.json as TFDS
  writes them (shardLengths as strings).
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from .conftest import smooth_images


def spec_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


assert spec_crc32c(b"123456789") == 0xE3069283  # the published check value


def spec_masked(data: bytes) -> int:
    c = spec_crc32c(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % (1 << 32)


def frame_record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", spec_masked(length)) + data + struct.pack("<I", spec_masked(data))


def varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def feature_bytes(values: list[bytes]) -> bytes:
    return ld(1, b"".join(ld(1, v) for v in values))


def feature_floats(values) -> bytes:
    return ld(2, ld(1, struct.pack(f"<{len(values)}f", *values)))


def feature_ints(values) -> bytes:
    return ld(3, ld(1, b"".join(varint(int(v)) for v in values)))


def example(features: dict[str, bytes]) -> bytes:
    entries = b"".join(ld(1, ld(1, k.encode()) + ld(2, v)) for k, v in features.items())
    return ld(1, entries)


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def tensor(shape, dtype) -> dict:
    cls = "scalar.Scalar" if not shape else "tensor_feature.Tensor"
    return {
        "pythonClassName": f"tensorflow_datasets.core.features.{cls}",
        "tensor": {
            "shape": {"dimensions": [str(d) for d in shape]} if shape else {},
            "dtype": dtype,
            "encoding": "none",
        },
    }


def image(h, w, fmt) -> dict:
    return {
        "pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
        "image": {"shape": {"dimensions": [str(h), str(w), "3"]}, "dtype": "uint8", "encodingFormat": fmt},
    }


def fdict(children: dict) -> dict:
    return {
        "pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
        "featuresDict": {"features": children},
    }


TEXT = {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}}


def libero_like(n_episodes=6, shards=2, size=16, fmt="png", seed=0, action_dim=7, state_dim=8) -> dict:
    """Episodes shaped like OpenVLA's LIBERO RLDS: image + wrist_image, 8-D state, 7-D action, instruction."""
    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(n_episodes):
        T = 5 + e % 4
        episodes.append(
            {
                "image": smooth_images(T, size, size, seed * 100 + 2 * e),
                "wrist_image": smooth_images(T, size, size, seed * 100 + 2 * e + 1),
                "state": rng.normal(size=(T, state_dim)).astype(np.float32),
                "action": rng.normal(size=(T, action_dim)).astype(np.float32),
                "instruction": ["open the top drawer", "put the bowl on the plate", "turn on the stove"][
                    e % 3
                ],
                "file_path": f"/raw/episode_{e}.hdf5",
            }
        )
    return {"episodes": episodes, "shards": shards, "size": size, "fmt": fmt}


def write_tfds(root: Path, data: dict, name: str = "libero_like", extra_feature: bool = False) -> Path:
    """Writes `data` (from `libero_like`) as `root/<name>/1.0.0/`; returns the version directory."""
    out = Path(root) / name / "1.0.0"
    out.mkdir(parents=True)
    size, fmt = data["size"], data["fmt"]
    enc = png if fmt == "png" else jpeg
    eps = data["episodes"]
    records = []
    for ep in eps:
        T = len(ep["action"])
        feats = {
            "steps/observation/image": feature_bytes([enc(i) for i in ep["image"]]),
            "steps/observation/wrist_image": feature_bytes([enc(i) for i in ep["wrist_image"]]),
            "steps/observation/state": feature_floats(ep["state"].reshape(-1).tolist()),
            "steps/action": feature_floats(ep["action"].reshape(-1).tolist()),
            "steps/language_instruction": feature_bytes([ep["instruction"].encode()] * T),
            "steps/is_first": feature_ints([1] + [0] * (T - 1)),
            "steps/is_last": feature_ints([0] * (T - 1) + [1]),
            "steps/is_terminal": feature_ints([0] * (T - 1) + [1]),
            "steps/reward": feature_floats([0.0] * (T - 1) + [1.0]),
            "episode_metadata/file_path": feature_bytes([ep["file_path"].encode()]),
        }
        if extra_feature:
            feats["steps/observation/undeclared"] = feature_floats([0.0] * T)
        records.append(example(feats))
    n = data["shards"]
    per = -(-len(records) // n)
    lengths = []
    for s in range(n):
        chunk = records[s * per : (s + 1) * per]
        lengths.append(len(chunk))
        (out / f"{name}-train.tfrecord-{s:05d}-of-{n:05d}").write_bytes(
            b"".join(frame_record(r) for r in chunk)
        )
    steps = fdict(
        {
            "observation": fdict(
                {
                    "image": image(size, size, fmt),
                    "wrist_image": image(size, size, fmt),
                    "state": tensor([eps[0]["state"].shape[1]], "float32"),
                }
            ),
            "action": tensor([eps[0]["action"].shape[1]], "float32"),
            "language_instruction": TEXT,
            "is_first": tensor([], "bool"),
            "is_last": tensor([], "bool"),
            "is_terminal": tensor([], "bool"),
            "reward": tensor([], "float32"),
        }
    )
    features = fdict(
        {
            "steps": {
                "pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
                "sequence": {"feature": steps, "length": "-1"},
            },
            "episode_metadata": fdict({"file_path": TEXT}),
        }
    )
    (out / "features.json").write_text(json.dumps(features))
    info = {
        "name": name,
        "version": "1.0.0",
        "fileFormat": "tfrecord",
        "splits": [{"name": "train", "shardLengths": [str(x) for x in lengths], "numBytes": "0"}],
    }
    (out / "dataset_info.json").write_text(json.dumps(info))
    return out


def write_steps_tfds(root: Path, name: str, episodes: list[dict], instruction: str = "do the task") -> Path:
    """Writes episodes given as {step key (without ``steps/``): value} as `root/<name>/1.0.0/` (one shard).

    A value is a float array (T, n), or a uint8 image array (T, h, w, 3) stored as PNG; every episode has
    the same keys. Adds language_instruction, is_first, is_last and is_terminal. Returns the version dir.
    """
    out = Path(root) / name / "1.0.0"
    out.mkdir(parents=True)
    first = episodes[0]
    records = []
    for ep in episodes:
        T = len(next(iter(ep.values())))
        feats = {}
        for key, v in ep.items():
            v = np.asarray(v)
            feats[f"steps/{key}"] = (
                feature_bytes([png(i) for i in v]) if v.dtype == np.uint8 else
                feature_floats(v.astype(np.float32).reshape(-1).tolist())
            )  # fmt: skip
        feats["steps/language_instruction"] = feature_bytes([instruction.encode()] * T)
        feats["steps/is_first"] = feature_ints([1] + [0] * (T - 1))
        feats["steps/is_last"] = feature_ints([0] * (T - 1) + [1])
        feats["steps/is_terminal"] = feature_ints([0] * (T - 1) + [1])
        records.append(example(feats))
    (out / f"{name}-train.tfrecord-00000-of-00001").write_bytes(b"".join(frame_record(r) for r in records))

    def nest(keys: dict) -> dict:
        tree: dict = {}
        for key, leaf in keys.items():
            node = tree
            *parents, last = key.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = leaf
        return tree

    def to_fdict(tree: dict) -> dict:
        return fdict({k: (to_fdict(v) if "pythonClassName" not in v else v) for k, v in tree.items()})

    leaves = {}
    for key, v in first.items():
        v = np.asarray(v)
        leaves[key] = image(*v.shape[1:3], "png") if v.dtype == np.uint8 else tensor([v.shape[1]], "float32")
    leaves.update({"language_instruction": TEXT, "is_first": tensor([], "bool"), "is_last": tensor([], "bool"),
                   "is_terminal": tensor([], "bool")})  # fmt: skip
    steps = {
        "pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
        "sequence": {"feature": to_fdict(nest(leaves)), "length": "-1"},
    }
    (out / "features.json").write_text(json.dumps(fdict({"steps": steps})))
    info = {"name": name, "version": "1.0.0", "fileFormat": "tfrecord",
            "splits": [{"name": "train", "shardLengths": [str(len(records))], "numBytes": "0"}]}  # fmt: skip
    (out / "dataset_info.json").write_text(json.dumps(info))
    return out
