"""LeRobot's policy checkpoint layout (0.4) for the pi0 and SmolVLA families, read and written.

A directory holds (LeRobot's `PreTrainedPolicy.save_pretrained` and `PolicyProcessorPipeline`):

    config.json                     the policy config; `"type"` names the family ("pi0", "smolvla"),
                                    `input_features` / `output_features` ({"type": "VISUAL"|"STATE"|"ACTION",
                                    "shape": [...]}) the robot, `normalization_mapping` the modes
    model.safetensors               the weights, keys `model.<family model's state-dict key>`
    policy_preprocessor.json        {"name", "steps": [{"registry_name", "config", "state_file"?}]}: rename,
                                    batch, new line, tokenizer (names a hub tokenizer), device, normalizer
    policy_postprocessor.json       unnormalizer, device
    policy_preprocessor_step_<i>_normalizer_processor.safetensors
    policy_postprocessor_step_<i>_unnormalizer_processor.safetensors
                                    the statistics, flat `<feature>.<stat>` float32 tensors (mean, std, ...)

vlaforge adds `tokenizer.json` (when the policy has one) and `vlaforge.json` (the embodiment's limits,
names and control rate, the training data), which LeRobot ignores. Statistics follow LeRobot's MEAN_STD
for state and action (IDENTITY for images). Weights are memory-mapped and assigned to a model built on the
meta device, so loading holds one copy of them. Load, save and load again is bit-identical.
"""

from __future__ import annotations

import copy
import json
import mmap
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from vlaforge.atomic import atomic_dir
from vlaforge.errors import InputError
from vlaforge.format_specs import FORMAT_SPECS
from vlaforge.lerobot_files import (
    ACTION_KEY,
    FAMILIES,
    IMAGE_PREFIX,
    LEROBOT_CONFIG,
    NORMALIZER,
    POSTPROCESSOR,
    PREPROCESSOR,
    SIDECAR_FILE,
    STATE_KEY,
    UNNORMALIZER,
    get_family,
    is_lerobot_config,
    preset_dict,
    read_lerobot_dir,
)
from vlaforge.models.family import TOKENIZER_FILE
from vlaforge.models.formats.base import Bundle, CheckpointFormat, as_dtype, cast, check_keys
from vlaforge.models.presets import Preset
from vlaforge.types import STAT_KEYS, Embodiment, NormStats

WEIGHTS_FILE = "model.safetensors"
WEIGHT_PREFIX = "model."  # LeRobot's policy wraps the family model as `self.model`
OURS_PREFIX = "backbone.model."  # where `Policy` keeps it


# ----------------------------------------------------------------------------------------- detection


def _config(path: Path) -> dict[str, Any] | None:
    try:
        file = path / LEROBOT_CONFIG
        cfg = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return cfg if isinstance(cfg, dict) else None


def is_hub_id(text: str) -> bool:
    """`owner/name` that is not a local path and names a family (e.g. lerobot/smolvla_base, lerobot/pi0)."""
    if Path(text).exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
        return False
    name = text.split("/")[1].lower()
    return any(name.startswith(f) or f"_{f}" in name or f"-{f}" in name for f in FAMILIES)


def detect(path: str | Path) -> bool:
    """A directory whose config.json has `"type"` of a known family, or a hub id naming one."""
    cfg = _config(Path(path))
    if cfg is not None:
        return is_lerobot_config(cfg)
    return is_hub_id(str(path))


def resolve(path_or_id: str | Path) -> Path:
    """A local directory as is; a hub id through `huggingface_hub` (JSON and safetensors only)."""
    p = Path(path_or_id)
    if p.exists():
        return p
    text = str(path_or_id)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # offline, unknown repo: say which and what to do
        raise InputError(
            f"{text}: not a local directory, and downloading it from the Hugging Face hub failed ({e}). "
            f"Download it where there is network (`huggingface-cli download {text} --local-dir DIR`) and "
            "pass DIR."
        ) from e


# ----------------------------------------------------------------------------------------- files


class MappedSafetensors:
    """A safetensors file mapped into memory: `get` returns tensors that share the file's pages (no copy;
    copy-on-write if written to), so a loaded model holds the weights once."""

    DTYPES = {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
    }

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise InputError(f"{path}: missing; a LeRobot policy directory holds its weights there")
        with open(path, "rb") as f:
            try:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InputError(f"{path}: not a safetensors file ({e})") from e
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if path.stat().st_size else None
        self.metadata = header.pop("__metadata__", None) or {}
        self.header = header
        self.base = 8 + n

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.header[key]["shape"])

    def get(self, key: str) -> torch.Tensor:
        info = self.header[key]
        dtype = self.DTYPES.get(info["dtype"])
        if dtype is None:
            raise InputError(
                f"{self.path}: tensor {key!r} has dtype {info['dtype']}, which vlaforge cannot read"
            )
        start, end = info["data_offsets"]
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        if count == 0:
            return torch.empty(info["shape"], dtype=dtype)
        t = torch.frombuffer(self.map, dtype=dtype, count=count, offset=self.base + start)
        return t.view(info["shape"])


_ST_DTYPES = {v: k for k, v in MappedSafetensors.DTYPES.items()}


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    """A safetensors file written tensor by tensor from the tensors' own memory (safetensors' `save_file`
    first copies every tensor into Python bytes: twice the weights in memory for a 6.6 GB pi0)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))  # as safetensors orders them
    offset = 0
    for k in order:
        t = tensors[k]
        n = t.numel() * t.element_size()
        header[k] = {
            "dtype": _ST_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for k in order:
            t = tensors[k].detach().contiguous().cpu()
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def _state_files(root: Path, doc: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """{state file name: its tensors, as stored} for every step of a pipeline that has one."""
    out = {}
    for step in doc["steps"]:
        if step.get("state_file"):
            m = MappedSafetensors(root / step["state_file"])
            out[step["state_file"]] = {k: m.get(k).clone() for k in m.header}
    return out


# ----------------------------------------------------------------------------------------- reading


def read(
    path_or_id: str | Path, dtype: torch.dtype | str | None = None, tokenizer: str | Path | None = None
) -> Bundle:
    """A LeRobot pi0 / SmolVLA checkpoint as a bundle.

    Args:
        path_or_id: the directory, or a hub id (downloaded: JSON and safetensors only).
        dtype: cast floating weights to it (None: as stored).
        tokenizer: a directory with the family's tokenizer.json (None: the checkpoint directory's).
    """
    root = resolve(path_or_id)
    files = read_lerobot_dir(root)
    cfg, embodiment = files.config, files.embodiment
    pipes = files.pipelines
    state_files = {**_state_files(root, pipes[PREPROCESSOR]), **_state_files(root, pipes[POSTPROCESSOR])}
    tok_dir = str(tokenizer) if tokenizer is not None else str(root)
    preset = Preset.from_dict(preset_dict(cfg, tok_dir))
    weights = MappedSafetensors(root / WEIGHTS_FILE)
    want = as_dtype(dtype) if dtype is not None else None

    def load(expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        theirs = {WEIGHT_PREFIX + k[len(OURS_PREFIX) :]: k for k in expected}
        present = set(weights.keys())
        # Tied tensors (one parameter under two names) are stored once, as Hugging Face saves them.
        tied: dict[int, list[str]] = {}
        for k, t in expected.items():
            tied.setdefault(id(t), []).append(k)
        fill = {}
        for names in tied.values():
            stored = [n for n in names if WEIGHT_PREFIX + n[len(OURS_PREFIX) :] in present]
            for n in names:
                if n not in stored and stored:
                    fill[n] = stored[0]
        check_keys(
            str(weights.path), present, {t for t, o in theirs.items() if o not in fill}, "its config.json"
        )
        state = {}
        for t, o in theirs.items():
            if o in fill:
                continue
            shape = weights.shape(t)
            if shape != tuple(expected[o].shape):
                raise InputError(
                    f"{weights.path}: tensor {t!r} has shape {shape}; config.json ({cfg['type']}) expects "
                    f"{tuple(expected[o].shape)}"
                )
            state[o] = cast(weights.get(t), want)
        for o, src in fill.items():
            state[o] = state[src]
        return state

    source = {
        "config": cfg,
        "pipelines": pipes,
        "state_files": state_files,
        "embodiment": embodiment.to_dict(),
        "norm_stats": files.norm_stats.to_dict(),
        "identity_stats": files.identity,
        "weight_keys": sorted(weights.keys()),
        "weights_metadata": dict(weights.metadata),
    }
    if files.identity:
        print(
            f"vlaforge: {files.stats_file} has no mean/std for {files.identity}; they pass through "
            "unnormalised (as LeRobot does). Fine-tuning takes the dataset's statistics.",
            file=sys.stderr,
        )
    return Bundle(
        preset=preset,
        head={"kind": cfg["type"], "chunk_size": int(cfg.get("chunk_size", 50))},
        embodiment=embodiment,
        norm_stats=files.norm_stats,
        state=load,
        norm_mode="mean_std",
        training_data=(files.sidecar or {}).get("training_data"),
        text={"kind": "hf", "path": tok_dir},
        tokenizer_dir=tok_dir,
        extras={"lerobot": source},
        build_on_meta=True,
        keep_alive=weights,
    )


# ----------------------------------------------------------------------------------------- writing


def lerobot_features(emb: Embodiment, source: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """(input_features, output_features) of config.json for the embodiment; the imported checkpoint's own
    (keys, order) when they still describe it."""
    if source and source.get("embodiment") == emb.to_dict():
        cfg = source["config"]
        return dict(cfg["input_features"]), dict(cfg["output_features"])
    inputs: dict[str, Any] = {}
    if emb.state_dim:
        inputs[STATE_KEY] = {"type": "STATE", "shape": [emb.state_dim]}
    for cam in emb.camera_names:
        inputs[IMAGE_PREFIX + cam] = {"type": "VISUAL", "shape": [3, emb.image_size, emb.image_size]}
    return inputs, {ACTION_KEY: {"type": "ACTION", "shape": [emb.action_dim]}}


def _flat_stats(ns: NormStats) -> dict[str, torch.Tensor]:
    return {
        f"{key}.{s}": torch.from_numpy(np.asarray(getattr(fs, s), dtype=np.float32).copy())
        for key, fs in ns.features.items()
        if key in (ACTION_KEY, STATE_KEY)
        for s in STAT_KEYS
    }


def _template(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A processor pipeline as LeRobot's `make_pi0_pre_post_processors` / `make_smolvla_...` build it."""
    row = get_family(cfg["type"])
    if name == POSTPROCESSOR:
        return {"name": name, "steps": [{"registry_name": UNNORMALIZER, "config": {}}, _device("cpu")]}
    tokenizer = {
        "max_length": int(cfg.get("tokenizer_max_length", 48)),
        "task_key": "task",
        "padding_side": "right",
        "padding": cfg.get("pad_language_to", "longest") if row.pad_to_longest else "max_length",
        "truncation": True,
        "tokenizer_name": cfg.get("vlm_model_name") or row.tokenizer_hint,
    }
    return {
        "name": name,
        "steps": [
            {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
            {"registry_name": "to_batch_processor", "config": {}},
            {"registry_name": f"{row.type}_new_line_processor", "config": {}},
            {"registry_name": "tokenizer_processor", "config": tokenizer},
            _device(cfg.get("device") or "cpu"),
            {"registry_name": NORMALIZER, "config": {}},
        ],
    }


def _device(device: str) -> dict[str, Any]:
    return {"registry_name": "device_processor", "config": {"device": device, "float_dtype": None}}


def _norm_map(cfg: Mapping[str, Any]) -> dict[str, str]:
    return dict(
        cfg.get("normalization_mapping") or {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
    )


def write(bundle: Bundle, directory: str | Path) -> Path:
    """Writes `bundle` in LeRobot's layout (readable by LeRobot's `from_pretrained` and
    `PolicyProcessorPipeline.from_pretrained`); staged and swapped in whole."""
    if bundle.preset.family is None:
        raise InputError(
            f"only pi0 / SmolVLA policies can be written in LeRobot's layout; this one is a Prismatic "
            f"{bundle.head.get('kind')!r} policy (use --format vlaforge)"
        )
    source = bundle.extras.get("lerobot") or None
    emb = bundle.embodiment
    cfg = copy.deepcopy(dict(bundle.preset.family["config"]))
    inputs, outputs = lerobot_features(emb, source)
    same_robot = bool(source) and source.get("embodiment") == emb.to_dict()
    same_stats = same_robot and source.get("norm_stats") == bundle.norm_stats.to_dict()
    cfg["input_features"], cfg["output_features"] = inputs, outputs
    cfg.setdefault("normalization_mapping", _norm_map(cfg))  # what vlaforge applies, said explicitly
    ours = dict(bundle.tensors({}))  # parameters themselves: a tied one is one object under two names
    bad = sorted(k for k in ours if not k.startswith(OURS_PREFIX))
    if bad:
        raise RuntimeError(f"a family policy holds tensors outside its model: {bad[:5]}")
    state: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    keep = set(source["weight_keys"]) if source else None
    for k in sorted(
        ours, key=lambda k: (keep is not None and WEIGHT_PREFIX + k[len(OURS_PREFIX) :] not in keep, k)
    ):
        t = ours[k]
        if id(t) in seen:  # a tied tensor is stored once, under its first name (as save_torch_state_dict)
            continue
        seen[id(t)] = k
        state[WEIGHT_PREFIX + k[len(OURS_PREFIX) :]] = t.detach()
    flat = _flat_stats(bundle.norm_stats)
    pipelines, files = {}, {}
    for name in (PREPROCESSOR, POSTPROCESSOR):
        doc = copy.deepcopy(source["pipelines"][name]) if source else _template(cfg, name)
        for i, step in enumerate(doc["steps"]):
            reg = step.get("registry_name")
            if reg not in (NORMALIZER, UNNORMALIZER):
                continue
            if not same_robot:
                feats = {**inputs, **outputs} if reg == NORMALIZER else dict(outputs)
                step["config"] = {
                    "eps": float(step.get("config", {}).get("eps", 1e-8)),
                    "features": {k: {"type": f["type"], "shape": list(f["shape"])} for k, f in feats.items()},
                    "norm_map": _norm_map(cfg),
                }
            fname = step.get("state_file") or f"{name}_step_{i}_{reg}.safetensors"
            step["state_file"] = fname
            files[fname] = (
                source["state_files"][fname] if same_stats and fname in source["state_files"] else flat
            )
        pipelines[name] = doc
    with atomic_dir(Path(directory), overwrite=True) as tmp:
        meta = (source or {}).get("weights_metadata") or {"format": "pt"}
        write_safetensors(state, tmp / WEIGHTS_FILE, meta)
        for fname, tensors in files.items():
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / fname))
        for name, doc in pipelines.items():
            (tmp / f"{name}.json").write_text(json.dumps(doc, indent=2))
        if bundle.tokenizer_dir and (Path(bundle.tokenizer_dir) / TOKENIZER_FILE).is_file():
            (tmp / TOKENIZER_FILE).write_bytes((Path(bundle.tokenizer_dir) / TOKENIZER_FILE).read_bytes())
        side = {"embodiment": emb.to_dict(), "training_data": bundle.training_data}
        (tmp / SIDECAR_FILE).write_text(json.dumps(side, indent=2))
        (tmp / LEROBOT_CONFIG).write_text(json.dumps(cfg, indent=4))
    return Path(directory)


FORMAT = CheckpointFormat(
    name="lerobot",
    doc=FORMAT_SPECS["lerobot"].doc,
    detect=detect,
    read=read,
    write=write,
    write_options=FORMAT_SPECS["lerobot"].write_options,
)

__all__ = [
    "FORMAT",
    "MappedSafetensors",
    "detect",
    "lerobot_features",
    "read",
    "resolve",
    "write",
]
