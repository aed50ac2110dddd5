"""RLDS / TFDS datasets on disk (Open X-Embodiment, LIBERO, Bridge, DROID in RLDS), without TensorFlow.

A TFDS dataset directory (DESIGN.md, "RLDS / TFDS on disk")::

    <name>/<version>/dataset_info.json      name, version, splits with their shardLengths
    <name>/<version>/features.json          the nested FeaturesDict; "steps" is a Dataset of step dicts
    <name>/<version>/<name>-<split>.tfrecord-00000-of-00004   TFRecord shards, one Example per episode

Every episode is one `tf.train.Example` whose keys are the flattened feature paths (`steps/action`,
`steps/observation/image`, `steps/language_instruction`, `steps/is_first`, `episode_metadata/file_path`),
each holding the values of every step concatenated. How TFDS serializes a feature, as this module decodes
and encodes it (tensorflow_datasets/core/features: tensor_feature.py, image_feature.py, text_feature.py,
and core/example_serializer.py): integers and bools in an int64_list, floats in a float_list (float32 on
disk, so float64 features come back at float32 precision), strings and Text in a bytes_list, a Tensor with
`encoding: "bytes"` as one raw little-endian buffer per step, an Image as one encoded JPEG/PNG per step.

This module holds the format: features.json (`parse_features`, `features_to_json`), the directory and
its shards (`open_tfds`), one episode record (`decode_episode`, `encode_episode`), and writing shards and
metadata (`write_shard`, `write_metadata`). `vlaforge.data.rlds_dataset.RLDSDataset` serves an RLDS
dataset to training.

Nothing is skipped: a bad CRC, a truncated shard, a missing shard, a record count that disagrees with
dataset_info.json, a feature that features.json does not declare (or that a record lacks), values that
do not fill whole steps: each is an `RLDSError` naming the file, the record's byte offset and the key.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlaforge.atomic import write_json
from vlaforge.data.tfrecord import ByteSpans, encode_example, iter_records, parse_example
from vlaforge.errors import InputError

VLAFORGE_META = "vlaforge.json"  # vlaforge's metadata beside dataset_info.json (datasets it wrote)
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"  # TFDS's default file name template
_SHARD_RE = re.compile(r"^(?P<stem>.+)\.tfrecord-(?P<i>\d+)-of-(?P<n>\d+)$")
_NUMERIC_DTYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "bfloat16",
}  # fmt: skip


class RLDSError(InputError):
    """An RLDS / TFDS dataset that cannot be read as it is; the message names the file, record or key."""


# ---------------------------------------------------------------------------------------------------------
# features.json
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RLDSFeature:
    """One leaf of features.json.

    Attributes:
        key: the flat Example key, e.g. "steps/observation/image".
        kind: "tensor" (Tensor, Scalar, ClassLabel), "image" or "text".
        dtype: numpy dtype name ("float32", "bool", "uint8", ...; "string" for text and string tensors).
        shape: the shape of one value (one step for features under `steps`); -1 marks a free dim.
        per_step: True for features inside the `steps` Dataset.
        encoding: tensors "none" or "bytes"; images "jpeg" or "png".
        description: the feature's doc string.
    """

    key: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    per_step: bool
    encoding: str = "none"
    description: str = ""

    @property
    def size(self) -> int:
        """Values per step (or per episode); -1 when the shape has a free dim."""
        return -1 if any(d < 0 for d in self.shape) else int(np.prod(self.shape, dtype=np.int64))


def _dims(node: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    shape = node.get("shape") or {}
    try:
        return tuple(int(d) for d in shape.get("dimensions", []))
    except (TypeError, ValueError) as e:
        raise RLDSError(f"{where}: feature {key!r} has a malformed shape {shape!r}") from e


def parse_features(doc: Mapping[str, Any], where: str = "features.json") -> dict[str, RLDSFeature]:
    """The leaves of a TFDS features.json, by flat Example key.

    Nodes are recognised by their content key (`featuresDict`, `sequence`, `tensor`, `image`, `text`,
    `classLabel`), so files that omit `pythonClassName` read too.

    Raises:
        RLDSError: a feature type this reader does not decode (named, with its key), or a nested Dataset
            inside `steps`.
    """
    out: dict[str, RLDSFeature] = {}

    def walk(node: Mapping[str, Any], prefix: str, per_step: bool) -> None:
        desc = str(node.get("description", ""))
        if "featuresDict" in node:
            for name, child in (node["featuresDict"].get("features") or {}).items():
                walk(child, f"{prefix}/{name}" if prefix else name, per_step)
        elif "sequence" in node:
            if per_step:
                raise RLDSError(f"{where}: {prefix!r} is a Dataset inside a Dataset; RLDS has one level")
            walk(node["sequence"]["feature"], prefix, True)
        elif "tensor" in node:
            t = node["tensor"]
            dtype = str(t.get("dtype", "float32"))
            if dtype not in _NUMERIC_DTYPES and dtype != "string":
                raise RLDSError(f"{where}: feature {prefix!r} has dtype {dtype!r}, which TFDS cannot store")
            enc = str(t.get("encoding", "none")).lower()
            if enc not in ("none", "bytes"):
                raise RLDSError(
                    f"{where}: feature {prefix!r} uses encoding {enc!r}; this reader decodes 'none' and 'bytes'"
                )
            out[prefix] = RLDSFeature(prefix, "tensor", dtype, _dims(t, prefix, where), per_step, enc, desc)
        elif "image" in node:
            im = node["image"]
            fmt = str(im.get("encodingFormat") or "png").lower()
            if fmt not in ("jpeg", "png"):
                raise RLDSError(
                    f"{where}: image {prefix!r} is encoded as {fmt!r}; this reader decodes jpeg/png"
                )
            dtype = str(im.get("dtype", "uint8"))
            out[prefix] = RLDSFeature(prefix, "image", dtype, _dims(im, prefix, where), per_step, fmt, desc)
        elif "text" in node:
            out[prefix] = RLDSFeature(prefix, "text", "string", (), per_step, "none", desc)
        elif "classLabel" in node:
            out[prefix] = RLDSFeature(prefix, "tensor", "int64", (), per_step, "none", desc)
        else:
            kind = node.get("pythonClassName", sorted(node))
            raise RLDSError(f"{where}: feature {prefix!r} is of a type this reader does not decode ({kind})")

    walk(doc, "", False)
    return out


_CLASS = "tensorflow_datasets.core.features."


def features_to_json(features: Sequence[RLDSFeature]) -> dict[str, Any]:
    """The features.json document for `features` (the inverse of `parse_features`), as TFDS writes it."""

    def leaf(f: RLDSFeature) -> dict[str, Any]:
        shape = {"dimensions": [str(d) for d in f.shape]} if f.shape else {}
        if f.kind == "image":
            body = {"shape": shape, "dtype": f.dtype, "encodingFormat": f.encoding}
            return {
                "pythonClassName": _CLASS + "image_feature.Image",
                "image": body,
                "description": f.description,
            }
        if f.kind == "text":
            return {"pythonClassName": _CLASS + "text_feature.Text", "text": {}, "description": f.description}
        cls = "scalar.Scalar" if not f.shape else "tensor_feature.Tensor"
        body = {"shape": shape, "dtype": f.dtype, "encoding": f.encoding}
        return {"pythonClassName": _CLASS + cls, "tensor": body, "description": f.description}

    def node(children: dict[str, Any]) -> dict[str, Any]:
        return {
            "pythonClassName": _CLASS + "features_dict.FeaturesDict",
            "featuresDict": {"features": children},
        }

    tree: dict[str, Any] = {}
    steps: dict[str, Any] = {}
    for f in features:
        parts = f.key.split("/")
        if f.per_step:
            if parts[0] != "steps":
                raise ValueError(f"per-step feature {f.key!r} must live under 'steps/'")
            target, parts = steps, parts[1:]
        else:
            target = tree
        for p in parts[:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = f

    def build(d: dict[str, Any]) -> dict[str, Any]:
        return node({k: leaf(v) if isinstance(v, RLDSFeature) else build(v) for k, v in d.items()})

    root = {k: leaf(v) if isinstance(v, RLDSFeature) else build(v) for k, v in tree.items()}
    if steps:
        seq = {"feature": build(steps), "length": "-1"}
        root["steps"] = {"pythonClassName": _CLASS + "dataset_feature.Dataset", "sequence": seq}
    return node(root)


# ---------------------------------------------------------------------------------------------------------
# One episode record
# ---------------------------------------------------------------------------------------------------------


def decode_episode(
    example: Mapping[str, Any], features: Mapping[str, RLDSFeature], source: str, data: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    """The steps of one parsed Example, per features.json.

    Args:
        example: `parse_example(record)` (bytes lists may be `ByteSpans`).
        features: `parse_features(...)`.
        source: names the record in errors ("<file> record at byte offset N").
        data: the serialized Example, needed when `example` was parsed with spans (text and bytes-encoded
            tensors are then read from it; images stay spans).

    Returns:
        (T, values): the number of steps and, per feature key, a numpy array (T, *shape) (per episode:
        (*shape)) of the feature's dtype for tensors, a list of T str for text, and the encoded images as
        `ByteSpans` or a list of T bytes.

    Raises:
        RLDSError: a key features.json does not declare, a declared key the record lacks, or values that
            do not divide into whole steps / disagree on the number of steps.
    """
    extra = sorted(set(example) - set(features))
    if extra:
        raise RLDSError(
            f"{source}: feature(s) {extra} are not declared in features.json (it declares {sorted(features)}); "
            "the dataset's features.json does not describe its records"
        )
    missing = sorted(set(features) - set(example))
    if missing:
        raise RLDSError(f"{source}: the record lacks feature(s) {missing} that features.json declares")
    steps: int | None = None
    out: dict[str, Any] = {}
    for key, f in features.items():
        raw = example[key]
        if isinstance(raw, ByteSpans) and f.kind != "image":
            if data is None:
                raise ValueError("decode_episode needs `data` for an example parsed with spans")
            raw = [data[a:b] for a, b in raw.spans.tolist()]
        n = len(raw.spans) if isinstance(raw, ByteSpans) else len(raw)
        if f.kind in ("image", "text") or f.encoding == "bytes" or f.dtype == "string":
            t_here, per = (n, 1) if f.per_step else (None, n)
            if not f.per_step and f.kind in ("image", "text") and n != 1:
                raise RLDSError(f"{source}: episode feature {key!r} holds {n} values, expected 1")
        else:
            size = f.size
            if size < 0:
                raise RLDSError(
                    f"{source}: feature {key!r} has a free dim in {f.shape}; only fixed shapes read"
                )
            if f.per_step:
                if size == 0 or n % size:
                    raise RLDSError(
                        f"{source}: feature {key!r} holds {n} values, not a whole number of steps of shape "
                        f"{list(f.shape)}"
                    )
                t_here = n // size
            else:
                if n != size:
                    raise RLDSError(
                        f"{source}: feature {key!r} holds {n} values; its shape {list(f.shape)} needs {size}"
                    )
                t_here = None
            per = size
        if t_here is not None:
            if steps is None:
                steps = t_here
            elif t_here != steps:
                raise RLDSError(f"{source}: feature {key!r} has {t_here} steps, other features {steps}")
        out[key] = _decode_value(raw, f, per, source)
    return int(steps or 0), out


def _decode_value(raw: Any, f: RLDSFeature, per: int, source: str) -> Any:
    if f.kind == "image":
        return raw
    if f.kind == "text" or f.dtype == "string":
        try:
            texts = [b.decode("utf-8") for b in raw]
        except UnicodeDecodeError as e:
            raise RLDSError(f"{source}: text feature {f.key!r} is not UTF-8 ({e})") from e
        return texts if f.per_step or f.kind != "text" else texts[0]
    dtype = np.dtype(f.dtype if f.dtype != "bfloat16" else "float32")
    if f.encoding == "bytes":
        want = f.size * dtype.itemsize
        arrays = []
        for i, b in enumerate(raw):
            if len(b) != want:
                raise RLDSError(
                    f"{source}: {f.key!r} value {i} has {len(b)} bytes; shape {list(f.shape)} of {dtype} needs {want}"
                )
            arrays.append(np.frombuffer(b, dtype=dtype.newbyteorder("<")).astype(dtype))
        arr = np.stack(arrays) if arrays else np.zeros((0, f.size), dtype)
        return arr.reshape((-1, *f.shape) if f.per_step else f.shape)
    arr = np.asarray(raw)
    arr = arr != 0 if dtype == np.bool_ else arr.astype(dtype)
    return arr.reshape((-1, *f.shape) if f.per_step else f.shape)


def decode_image(data: bytes, where: str) -> np.ndarray:
    """uint8 (H, W, 3) from encoded JPEG/PNG bytes (grayscale and RGBA become RGB)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as e:  # PIL raises several types for damaged data
        raise RLDSError(f"{where}: cannot decode the image ({type(e).__name__}: {e})") from e


def encode_image(image: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """JPEG (4:2:0, the given quality) or PNG bytes of a uint8 (H, W, 3) image."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        raise InputError(f"image format {fmt!r}: use 'jpeg' or 'png'")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# The directory
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TFDSDirectory:
    """A TFDS dataset version directory, validated: metadata, features and the shards of one split.

    Attributes:
        root: the version directory (holds dataset_info.json).
        name, version: from dataset_info.json.
        split: the split read ("train").
        info: dataset_info.json as a dict.
        features: `parse_features(features.json)`.
        shards: the split's shard files, in order.
        shard_lengths: episodes per shard from dataset_info.json (None when it does not say).
        vlaforge: vlaforge.json (metadata of datasets vlaforge wrote), or None.
    """

    root: Path
    name: str
    version: str
    split: str
    info: dict[str, Any]
    features: dict[str, RLDSFeature]
    shards: list[Path]
    shard_lengths: list[int] | None
    vlaforge: dict[str, Any] | None

    @property
    def num_episodes(self) -> int | None:
        return sum(self.shard_lengths) if self.shard_lengths is not None else None


def is_rlds(path: str | Path) -> bool:
    """True when `path` is a TFDS version directory or a dataset directory holding one."""
    root = Path(path)
    if (root / "dataset_info.json").is_file():
        return True
    return root.is_dir() and any((p / "dataset_info.json").is_file() for p in root.iterdir() if p.is_dir())


def find_version_dir(path: str | Path) -> Path:
    """The TFDS version directory at or under `path` (a `<name>/` with one or more versions: the highest).

    Raises:
        RLDSError: when neither `path` nor a subdirectory holds dataset_info.json.
    """
    root = Path(path)
    if (root / "dataset_info.json").is_file():
        return root
    if not root.is_dir():
        raise RLDSError(f"{root} does not exist; pass a TFDS dataset directory (<name>/<version>/)")
    versions = [p for p in root.iterdir() if p.is_dir() and (p / "dataset_info.json").is_file()]
    if not versions:
        raise RLDSError(
            f"{root}: no dataset_info.json here or in a version subdirectory; an RLDS dataset is a TFDS "
            "directory <name>/<version>/ with dataset_info.json, features.json and *.tfrecord-* shards"
        )

    def key(p: Path) -> tuple:
        return tuple(int(x) if x.isdigit() else -1 for x in p.name.split("."))

    return max(versions, key=key)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RLDSError(
            f"{path} is missing; a TFDS dataset directory needs dataset_info.json and features.json"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RLDSError(f"{path}: not valid JSON ({e})") from e


def open_tfds(path: str | Path, split: str = "train") -> TFDSDirectory:
    """Reads and checks a TFDS directory's metadata and finds the shards of `split`.

    Raises:
        RLDSError: missing/broken metadata, an unknown split (listing the known ones), a missing shard
            (named), or shard files that disagree with dataset_info.json.
    """
    root = find_version_dir(path)
    info = _read_json(root / "dataset_info.json")
    features = parse_features(_read_json(root / "features.json"), str(root / "features.json"))
    if not any(f.per_step for f in features.values()):
        raise RLDSError(f"{root / 'features.json'}: no 'steps' Dataset feature; this is not an RLDS dataset")
    name = str(info.get("name") or root.parent.name)
    version = str(info.get("version") or root.name)
    if info.get("fileFormat", "tfrecord") not in ("tfrecord", "TFRECORD"):
        raise RLDSError(f"{root}: fileFormat {info.get('fileFormat')!r}; this reader reads tfrecord shards")
    splits = {s.get("name"): s for s in info.get("splits") or []}
    lengths: list[int] | None = None
    if splits:
        if split not in splits:
            raise RLDSError(f"{root}: no split {split!r} in dataset_info.json; it has {sorted(splits)}")
        s = splits[split]
        lengths = [int(x) for x in s.get("shardLengths") or []] or None
    if lengths is not None:
        template = str(splits[split].get("filepathTemplate") or DEFAULT_TEMPLATE)
        n = len(lengths)
        shards = [
            root
            / template.replace("{DATASET}", name)
            .replace("{SPLIT}", split)
            .replace("{FILEFORMAT}", "tfrecord")
            .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{n:05d}")
            for i in range(n)
        ]
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise RLDSError(
                f"{root}: {len(missing)} of {n} shard(s) of split {split!r} are missing ({missing[:3]}"
                f"{' ...' if len(missing) > 3 else ''}); dataset_info.json lists {n} shards. Copy the "
                "missing files, or the dataset is incomplete"
            )
    else:
        shards = sorted(p for p in root.glob(f"*-{split}.tfrecord-*") if _SHARD_RE.match(p.name))
        if not shards:
            raise RLDSError(f"{root}: no shard files *-{split}.tfrecord-NNNNN-of-MMMMM")
        totals = {int(_SHARD_RE.match(p.name)["n"]) for p in shards}  # type: ignore[index]
        if len(totals) != 1 or len(shards) != totals.pop():
            raise RLDSError(
                f"{root}: the {len(shards)} shard files of split {split!r} are not a complete set"
            )
    meta_path = root / VLAFORGE_META
    meta = _read_json(meta_path) if meta_path.is_file() else None
    return TFDSDirectory(root, name, version, split, info, features, shards, lengths, meta)


def iter_episodes(
    tfds: TFDSDirectory, shard: int, *, spans: bool = False
) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
    """Decodes the episodes of one shard: yields (record offset, record length, T, values) per record."""
    path = tfds.shards[shard]
    count = 0
    for offset, data in iter_records(path):
        source = f"{path} record at byte offset {offset}"
        example = parse_example(data, source=source, spans=spans)
        steps, values = decode_episode(example, tfds.features, source, data)
        yield offset, len(data), steps, values
        count += 1
    if tfds.shard_lengths is not None and count != tfds.shard_lengths[shard]:
        raise RLDSError(
            f"{path}: holds {count} episode records but dataset_info.json says {tfds.shard_lengths[shard]}; "
            "the shard is truncated or does not belong to this dataset"
        )


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


def encode_episode(
    values: Mapping[str, Any], features: Mapping[str, RLDSFeature], where: str = "episode"
) -> bytes:
    """One episode as a serialized `tf.train.Example`, the inverse of `decode_episode`.

    Args:
        values: per feature key: numeric arrays (T, *shape) (episode features: (*shape)), a list of T str for
            per-step text (a str for episode text), a list of T encoded images (bytes) for images.
        features: the dataset's features; every one must be given, and nothing else.
    """
    missing, extra = sorted(set(features) - set(values)), sorted(set(values) - set(features))
    if missing or extra:
        raise RLDSError(f"{where}: values do not match the features (missing {missing}, unexpected {extra})")
    out: dict[str, Any] = {}
    for key, f in features.items():
        v = values[key]
        if f.kind == "image":
            out[key] = [bytes(b) for b in v]
        elif f.kind == "text" or f.dtype == "string":
            out[key] = [v] if isinstance(v, str) else [str(t) for t in v]
        elif f.encoding == "bytes":
            arr = np.asarray(v, dtype=np.dtype(f.dtype).newbyteorder("<"))
            out[key] = [a.tobytes() for a in arr.reshape(len(arr), -1)] if f.per_step else [arr.tobytes()]
        else:
            arr = np.asarray(v)
            want = np.dtype(f.dtype)
            if want.kind == "f":
                arr = arr.astype(np.float32)
            elif want.kind == "b":
                arr = arr.astype(bool).astype(np.int64)
            else:
                arr = arr.astype(np.int64)
            out[key] = arr.reshape(-1)
    return encode_example(out)


def shard_name(name: str, split: str, index: int, count: int) -> str:
    """TFDS's default shard file name: `<name>-<split>.tfrecord-00003-of-00010`."""
    return f"{name}-{split}.tfrecord-{index:05d}-of-{count:05d}"


def write_metadata(
    root: Path,
    name: str,
    version: str,
    split: str,
    features: Sequence[RLDSFeature],
    shard_lengths: Sequence[int],
    description: str = "",
    vlaforge: Mapping[str, Any] | None = None,
) -> None:
    """Writes dataset_info.json and features.json (and vlaforge.json) of a TFDS directory `root`."""
    num_bytes = sum(
        (root / shard_name(name, split, i, len(shard_lengths))).stat().st_size
        for i in range(len(shard_lengths))
    )
    info = {
        "name": name,
        "version": version,
        "description": description,
        "fileFormat": "tfrecord",
        "moduleName": "vlaforge.data.rlds",
        "splits": [
            {
                "name": split,
                "numBytes": str(num_bytes),
                "shardLengths": [str(n) for n in shard_lengths],
                "filepathTemplate": DEFAULT_TEMPLATE,
            }
        ],
    }
    write_json(root / "dataset_info.json", info)
    write_json(root / "features.json", features_to_json(features))
    if vlaforge is not None:
        write_json(root / VLAFORGE_META, dict(vlaforge))
