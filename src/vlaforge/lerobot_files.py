"""A LeRobot pi0 / SmolVLA policy directory, parsed without torch (JSON + numpy): the families' table, the
config, the robot it describes and its normalisation statistics.

`vlaforge.policy_files.read_policy_dir` reads such a directory through here (so evaluation's checks and
`vlaforge serve` take it as they take a vlaforge checkpoint); `vlaforge.models.formats.lerobot` adds the
weights and writes the layout back. The layout itself is described there.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.errors import InputError, did_you_mean
from vlaforge.types import STAT_KEYS, Embodiment, FeatureStats, NormStats

LEROBOT_CONFIG, SIDECAR_FILE = "config.json", "vlaforge.json"
PREPROCESSOR, POSTPROCESSOR = "policy_preprocessor", "policy_postprocessor"
NORMALIZER, UNNORMALIZER = "normalizer_processor", "unnormalizer_processor"
STATE_KEY, ACTION_KEY, IMAGE_PREFIX = "observation.state", "action", "observation.images."
WIDE_LIMIT = 1e6  # LeRobot clips nothing: limits that never bind, unless vlaforge.json gives the robot's


@dataclass(frozen=True)
class FamilyRow:
    """One family of `FAMILIES`.

    Attributes:
        type: LeRobot's config.json `"type"`.
        module: the vlaforge module with the family's config and model classes.
        config_class, model_class: their names there.
        resolution_key: the config.json field with the size images are resized (with padding) to.
        steps_key: the config.json field with the default number of flow steps at inference.
        pad_to_longest: the prompt is padded to the batch's longest (SmolVLA) instead of the max length.
        tokenizer_hint: the hub tokenizer LeRobot's processor names (what a user downloads).
        lr: LeRobot's default peak learning rate (`optimizer_lr`).
    """

    type: str
    module: str
    config_class: str
    model_class: str
    resolution_key: str
    steps_key: str
    pad_to_longest: bool
    tokenizer_hint: str
    lr: float


FAMILIES: dict[str, FamilyRow] = {
    r.type: r
    for r in (
        FamilyRow(
            "pi0",
            "vlaforge.models.pi0",
            "Pi0Config",
            "Pi0Model",
            "image_resolution",
            "num_inference_steps",
            False,
            "google/paligemma-3b-pt-224",
            2.5e-5,
        ),
        FamilyRow(
            "smolvla",
            "vlaforge.models.smolvla",
            "SmolVLAConfig",
            "SmolVLAModel",
            "resize_imgs_with_padding",
            "num_steps",
            True,
            "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
            1e-4,
        ),
    )
}


def get_family(name: str) -> FamilyRow:
    """The family called `name` (LeRobot's config `"type"`); a typo gets a "did you mean"."""
    if name in FAMILIES:
        return FAMILIES[name]
    raise InputError(
        f"unknown model family {name!r}{did_you_mean(name, FAMILIES)} (known: {', '.join(FAMILIES)})"
    )


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"{path}: missing; a LeRobot policy directory needs it")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e


def is_lerobot_config(cfg: Any) -> bool:
    """A LeRobot policy config of a known family (vlaforge's own configs carry a `"format"`)."""
    return isinstance(cfg, dict) and cfg.get("type") in FAMILIES and "format" not in cfg


def read_config(root: Path) -> dict[str, Any]:
    """config.json, its `"type"` checked against the known families."""
    file = root / LEROBOT_CONFIG
    cfg = read_json(file)
    if not isinstance(cfg, dict) or cfg.get("type") not in FAMILIES:
        kind = cfg.get("type") if isinstance(cfg, dict) else None
        get_family(str(kind))  # raises with a "did you mean"
    return cfg


_NP = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A (small) safetensors file as numpy arrays (bfloat16 widened to float32)."""
    if not path.is_file():
        raise InputError(f"{path}: missing")
    data = path.read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a safetensors file ({e})") from e
    header.pop("__metadata__", None)
    out = {}
    for key, info in header.items():
        start, end = info["data_offsets"]
        raw = data[8 + n + start : 8 + n + end]
        if info["dtype"] == "BF16":
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in _NP:
            arr = np.frombuffer(raw, dtype=_NP[info["dtype"]])
        else:
            raise InputError(f"{path}: tensor {key!r} has dtype {info['dtype']}, which vlaforge cannot read")
        out[key] = arr.reshape(info["shape"])
    return out


def read_pipeline(root: Path, name: str) -> dict[str, Any]:
    doc = read_json(root / f"{name}.json")
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise InputError(f"{root / (name + '.json')}: not a LeRobot processor pipeline (no 'steps' list)")
    return doc


def stats_step(doc: dict[str, Any], registry: str) -> dict[str, Any] | None:
    return next((s for s in doc["steps"] if s.get("registry_name") == registry), None)


def state_file_path(root: Path, doc: dict[str, Any], name: str, step: Mapping[str, Any]) -> Path:
    path = root / str(step["state_file"])
    if not path.is_file():
        raise InputError(
            f"{path}: missing; {name}.json names it as the statistics of step {step.get('registry_name')!r}. "
            "Copy the whole checkpoint directory (every policy_*.safetensors file)"
        )
    return path


def feature_stats(flat: Mapping[str, Any], key: str, dim: int, where: str) -> FeatureStats | None:
    """One feature's statistics from flat `<key>.<stat>` arrays; min/max/q01/q99 not stored are derived
    (q01 = min, mean -+ 3 std) since MEAN_STD reads only mean and std. None when mean or std is missing."""
    got = {
        s: np.asarray(flat[f"{key}.{s}"], dtype=np.float64).reshape(-1)
        for s in STAT_KEYS
        if f"{key}.{s}" in flat
    }
    if "mean" not in got or "std" not in got:
        return None
    for s, v in got.items():
        if v.shape != (dim,):
            raise InputError(
                f"{where}: {key}.{s} has {v.shape[0]} values; config.json says {key} has {dim} dims"
            )
    mean, std = got["mean"], got["std"]
    got.setdefault("min", got.get("q01", mean - 3 * std))
    got.setdefault("max", got.get("q99", mean + 3 * std))
    got.setdefault("q01", got["min"])
    got.setdefault("q99", got["max"])
    return FeatureStats(**{s: got[s] for s in STAT_KEYS})


def identity_stats(dim: int) -> FeatureStats:
    z, o = np.zeros(dim), np.ones(dim)
    return FeatureStats(min=-o, max=o, mean=z, std=o, q01=-o, q99=o)


def features_of(cfg: Mapping[str, Any]) -> tuple[list[str], int, int]:
    """(image feature keys in order, state dim (0: none), action dim) from config.json's features."""
    inputs = dict(cfg.get("input_features") or {})
    outputs = dict(cfg.get("output_features") or {})
    images = [k for k, f in inputs.items() if f.get("type") == "VISUAL"]
    state = [int(np.prod(f["shape"])) for k, f in inputs.items() if f.get("type") == "STATE"]
    action = outputs.get(ACTION_KEY)
    if action is None or not images:
        raise InputError(
            f"config.json: input_features / output_features name {len(images)} camera(s) and "
            f"{'an' if action else 'no'} 'action'; a policy needs at least one VISUAL input and the action"
        )
    return images, (state[0] if state else 0), int(np.prod(action["shape"]))


def camera_name(key: str) -> str:
    """`observation.images.top` -> `top` (`observation.image` -> `image`)."""
    return key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else key.rsplit(".", 1)[-1]


def embodiment_from(cfg: Mapping[str, Any], side: Mapping[str, Any] | None) -> Embodiment:
    """The robot: vlaforge.json's embodiment when present (and consistent), else config.json's features
    with limits that never clip."""
    images, S, D = features_of(cfg)
    if side and side.get("embodiment"):
        emb = Embodiment.from_dict(side["embodiment"])
        if emb.action_dim == D and emb.state_dim == S and len(emb.camera_names) == len(images):
            return emb
    shape = cfg["input_features"][images[0]]["shape"]
    return Embodiment(
        action_dim=D,
        action_names=[f"a{i}" for i in range(D)],
        normalize_mask=[True] * D,
        action_low=[-WIDE_LIMIT] * D,
        action_high=[WIDE_LIMIT] * D,
        control_hz=float(cfg.get("fps") or 10.0),
        camera_names=[camera_name(k) for k in images],
        image_size=int(shape[-1]),
        state_dim=S,
        robot_type=f"lerobot:{cfg['type']}",
    )


def preset_dict(cfg: Mapping[str, Any], tokenizer_path: str | None) -> dict[str, Any]:
    """The vlaforge preset (as `Preset.from_dict` takes it) of a family model: its sizes stay in
    `family["config"]`, LeRobot's config.json."""
    row = get_family(str(cfg["type"]))
    res = cfg.get(row.resolution_key) or (224, 224)
    return {
        "name": row.type,
        "vision": [],
        "image_size": int(res[0]),
        "llm": None,
        "tokenizer": "hf",
        "tokenizer_path": tokenizer_path,
        "prompt": "instruction",
        "use_state": True,
        "chunk_size": int(cfg.get("chunk_size", 50)),
        "lr": float(cfg.get("optimizer_lr", row.lr)),
        "family": {"type": row.type, "config": dict(cfg)},
    }


@dataclass
class LeRobotFiles:
    """A parsed LeRobot policy directory (the weights are not read).

    Attributes:
        root: the directory.
        config: config.json.
        sidecar: vlaforge.json (the embodiment and training data vlaforge adds), or None.
        pipelines: the pre- and post-processor JSON by name.
        embodiment: the robot.
        norm_stats: the action (and state) statistics of the normalizer step.
        stats_file: the safetensors those came from.
        identity: features whose statistics lack mean / std (passed through unnormalised, as LeRobot does).
    """

    root: Path
    config: dict[str, Any]
    sidecar: dict[str, Any] | None
    pipelines: dict[str, dict[str, Any]]
    embodiment: Embodiment
    norm_stats: NormStats
    stats_file: Path
    identity: list[str] = field(default_factory=list)

    def policy_config(self) -> dict[str, Any]:
        """The directory described as a vlaforge policy config.json (what `PolicyFiles.config` holds)."""
        chunk = int(self.config.get("chunk_size", 50))
        return {
            "format": "lerobot",
            "preset": preset_dict(self.config, str(self.root)),
            "head": {"kind": self.config["type"], "chunk_size": chunk},
            "chunk_size": chunk,
            "embodiment": self.embodiment.to_dict(),
            "norm_mode": "mean_std",
            "training_data": (self.sidecar or {}).get("training_data"),
        }


def read_lerobot_dir(root: str | Path) -> LeRobotFiles:
    """Reads and validates a LeRobot pi0 / SmolVLA directory's config, robot and statistics.

    Raises:
        InputError: an unknown `"type"`, a missing or invalid file (the processor JSON, the statistics a
            step names), or statistics that do not fit the features.
    """
    root = Path(root)
    cfg = read_config(root)
    side = read_json(root / SIDECAR_FILE) if (root / SIDECAR_FILE).is_file() else None
    embodiment = embodiment_from(cfg, side)
    pipelines = {name: read_pipeline(root, name) for name in (PREPROCESSOR, POSTPROCESSOR)}
    for name, doc in pipelines.items():  # every statistics file a step names must be there
        for step in doc["steps"]:
            if step.get("state_file"):
                state_file_path(root, doc, name, step)
    step = stats_step(pipelines[PREPROCESSOR], NORMALIZER)
    if step is None or not step.get("state_file"):
        raise InputError(f"{root / (PREPROCESSOR + '.json')}: no normalizer_processor step with statistics")
    path = state_file_path(root, pipelines[PREPROCESSOR], PREPROCESSOR, step)
    flat = read_safetensors(path)
    feats, identity = {}, []
    for key, dim in ((ACTION_KEY, embodiment.action_dim), (STATE_KEY, embodiment.state_dim)):
        if dim:
            fs = feature_stats(flat, key, dim, str(path))
            if fs is None:
                identity.append(key)
                fs = identity_stats(dim)
            feats[key] = fs
    return LeRobotFiles(root, cfg, side, pipelines, embodiment, NormStats(feats), path, identity)


__all__ = [
    "FAMILIES",
    "FamilyRow",
    "LeRobotFiles",
    "camera_name",
    "embodiment_from",
    "features_of",
    "get_family",
    "is_lerobot_config",
    "preset_dict",
    "read_lerobot_dir",
    "read_safetensors",
]
