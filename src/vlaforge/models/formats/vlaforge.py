"""vlaforge's own checkpoint format: config.json, model.safetensors, norm_stats.json (see
`vlaforge.policy_files`, which parses it), plus dataset_stats.json for a mixture and tokenizer.json for the
Llama tokenizer. Written whole into a staging directory and swapped in, so no stale file survives a save."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlaforge.atomic import atomic_dir
from vlaforge.errors import InputError
from vlaforge.format_specs import FORMAT_SPECS
from vlaforge.models.formats.base import Bundle, CheckpointFormat, as_dtype, cast, check_keys
from vlaforge.models.presets import Preset
from vlaforge.policy_files import (
    CONFIG_FILE,
    DATASET_STATS_FILE,
    STATS_FILE,
    TOKENIZER_FILE,
    VERSION,
    WEIGHTS_FILE,
    read_policy_dir,
)
from vlaforge.policy_files import FORMAT as FORMAT_NAME

ALIASES = "aliases"  # model.safetensors metadata: {tied tensor's name: the stored name}


def detect(path: str | Path) -> bool:
    """A directory whose config.json says `"format": "vlaforge-policy"`."""
    cfg = Path(path) / CONFIG_FILE
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT_NAME
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def policy_config(bundle: Bundle) -> dict[str, Any]:
    """config.json: what rebuilds the model (preset, head, embodiment, tokenizer, normalisation mode)."""
    preset = bundle.preset.to_dict()
    preset["tokenizer_path"] = None  # a saved policy carries its own tokenizer.json
    text = dict(bundle.text) | ({"path": None} if bundle.text.get("kind") in ("llama", "hf") else {})
    source = bundle.extras.get("openvla")
    return {
        "format": FORMAT_NAME,
        "version": VERSION,
        "preset": preset,
        "head": dict(bundle.head),
        "chunk_size": int(bundle.head["chunk_size"]),
        "image_size": bundle.preset.image_size,
        "embodiment": bundle.embodiment.to_dict(),
        "text_tokenizer": text,
        "norm_mode": bundle.norm_mode,
        "training_data": bundle.training_data,
        # An OpenVLA checkpoint's config.json (its statistics aside) travels through fine-tuning, so the
        # OpenVLA export writes back the same architecture names.
        "openvla": {k: v for k, v in source["config"].items() if k != "norm_stats"} if source else None,
    }


def read(path: str | Path, dtype: torch.dtype | str | None = None) -> Bundle:
    """A policy directory as a bundle (config, embodiment and statistics validated by `read_policy_dir`)."""
    files = read_policy_dir(path)
    root = files.root
    preset = Preset.from_dict(files.preset)
    if preset.tokenizer in ("llama", "hf"):
        preset = preset.with_overrides(tokenizer_path=str(root))
    want = as_dtype(dtype) if dtype is not None else None
    weights = files.weights

    def load(expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with safe_open(str(weights), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get(ALIASES, "{}"))  # tied tensors, stored once
            keys = set(f.keys()) | set(aliases)
            for key in sorted(set(f.keys()) & set(expected)):
                shape = tuple(f.get_slice(key).get_shape())
                if shape != tuple(expected[key].shape):
                    raise InputError(
                        f"{weights}: tensor {key!r} has shape {shape}; the config expects "
                        f"{tuple(expected[key].shape)}"
                    )
        check_keys(str(weights), keys, set(expected), "the config")
        state = {k: cast(t, want) for k, t in load_file(str(weights)).items()}
        return state | {k: state[v] for k, v in aliases.items()}

    source = files.config.get("openvla")
    return Bundle(
        preset=preset,
        head=files.head,
        embodiment=files.embodiment,
        norm_stats=files.norm_stats,
        state=load,
        dataset_stats=dict(files.dataset_stats),
        norm_mode=files.norm_mode,
        training_data=files.training_data,
        text=dict(files.config.get("text_tokenizer") or {}),
        tokenizer_dir=str(root) if preset.tokenizer in ("llama", "hf") else None,
        extras={"openvla": {"config": source}} if source else {},
    )


def write(bundle: Bundle, directory: str | Path) -> Path:
    """Writes the policy directory whole: staged beside `directory`, then swapped in (`vlaforge.atomic`),
    so files of an earlier save (a mixture's dataset_stats.json) never survive and a crash leaves the
    previous policy. config.json is written last."""
    directory = Path(directory)
    state, aliases, seen = {}, {}, {}
    for k, v in bundle.tensors({}).items():
        if id(v) in seen:  # a tied parameter (embeddings shared with the output layer): stored once
            aliases[k] = seen[id(v)]
            continue
        seen[id(v)] = k
        state[k] = v.detach().contiguous().cpu()
    meta = {"format": FORMAT_NAME} | ({ALIASES: json.dumps(aliases, sort_keys=True)} if aliases else {})
    with atomic_dir(directory, overwrite=True) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata=meta)
        bundle.norm_stats.save(tmp / STATS_FILE)
        if bundle.dataset_stats:
            doc = {k: v.to_dict() for k, v in bundle.dataset_stats.items()}
            (tmp / DATASET_STATS_FILE).write_text(json.dumps(doc, indent=2))
        if bundle.preset.tokenizer in ("llama", "hf"):
            shutil.copyfile(Path(str(bundle.tokenizer_dir)) / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(policy_config(bundle), indent=2))
    return directory


FORMAT = CheckpointFormat(
    name="vlaforge",
    doc=FORMAT_SPECS["vlaforge"].doc,
    detect=detect,
    read=read,
    write=write,
    write_options=FORMAT_SPECS["vlaforge"].write_options,
)

__all__ = ["FORMAT", "detect", "policy_config", "read", "write"]
