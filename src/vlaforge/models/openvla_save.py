"""OpenVLA checkpoints out: a vlaforge policy written in OpenVLA's Hugging Face layout.

The reverse of `vlaforge.models.openvla`'s loader, through the same tensor mapping (`weight_groups`):
timm key names, ~5 GB shards and their index, config.json (an imported checkpoint's own, carried through
fine-tuning, or one built from the preset), dataset_statistics.json (unchanged entries written back
verbatim, a new dataset's under its name), the tokenizer files and preprocessor_config.json. Load, save and
load again is bit-identical.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vlaforge.errors import InputError
from vlaforge.models.openvla import (
    _VISION_BACKBONE_IDS,
    DATASET_STATISTICS_FILE,
    INDEX_FILE,
    PREPROCESSOR_FILE,
    SINGLE_FILE,
    TOKENIZER_FILES,
    norm_to_stats,
    preprocessor_config,
    stats_to_norm,
    weight_groups,
)
from vlaforge.models.presets import Preset
from vlaforge.types import NormStats


def _timm_ids(preset: Preset) -> list[str]:
    """The towers' timm model ids (each spec records the one its weights came from)."""
    missing = [s.kind for s in preset.vision if s.timm_id is None]
    if missing:
        raise InputError(
            f"the {missing} tower(s) of preset {preset.name!r} name no timm model, so OpenVLA's code could not "
            "rebuild them; only towers that came from timm (OpenVLA's presets and imported checkpoints) can be "
            "written in OpenVLA's layout"
        )
    return [str(s.timm_id) for s in preset.vision]


def openvla_config(policy: Any, stats: Mapping[str, Any]) -> dict[str, Any]:
    """config.json for `policy`: the imported config with its statistics updated, or one built from the
    preset for a model vlaforge made."""
    p: Preset = policy.preset
    source = (policy.openvla_source or {}).get("config")
    text = {
        "model_type": "llama",
        "hidden_size": p.llm.hidden_size,
        "intermediate_size": p.llm.intermediate_size,
        "num_hidden_layers": p.llm.num_layers,
        "num_attention_heads": p.llm.num_heads,
        "num_key_value_heads": p.llm.num_kv_heads or p.llm.num_heads,
        "max_position_embeddings": p.llm.max_position_embeddings,
        "rms_norm_eps": p.llm.rms_norm_eps,
        "rope_theta": p.llm.rope_theta,
        "vocab_size": p.llm.vocab_size,
        "pad_token_id": 32000,
    }
    dtype = str(next(policy.backbone.parameters()).dtype).replace("torch.", "")
    if source is not None:
        cfg = json.loads(json.dumps(source))
        cfg["text_config"] = {**cfg.get("text_config", {}), **text, "torch_dtype": dtype}
    else:
        ids = _timm_ids(p)
        fused = len(ids) == 2
        cfg = {
            "architectures": ["OpenVLAForActionPrediction"],
            "model_type": "openvla",
            "vision_backbone_id": _VISION_BACKBONE_IDS.get(tuple(ids), "custom"),
            "llm_backbone_id": "llama2-7b-pure",
            "arch_specifier": "no-align+fused-gelu-mlp" if fused else "no-align+gelu-mlp",
            "use_fused_vision_backbone": fused,
            "image_resize_strategy": p.resize_strategy,
            "image_sizes": [p.image_size] * len(ids),
            "timm_model_ids": ids,
            "timm_override_act_layers": [None] * len(ids),
            "llm_max_length": 2048,
            "pad_token_id": 32000,
            "pad_to_multiple_of": p.llm.vocab_size - p.action_vocab_size,
            "output_projector_states": False,
            "text_config": {**text, "torch_dtype": dtype},
        }
    cfg.update({"n_action_bins": p.n_bins, "norm_stats": dict(stats), "torch_dtype": dtype})
    return cfg


def _check_exportable(policy: Any) -> None:
    p: Preset = policy.preset
    problems = []
    if policy.head.kind != "tokens" or policy.head.chunk_size != 1:
        problems.append(
            f"head {policy.head.kind!r} with chunk {policy.head.chunk_size} (OpenVLA decodes one step of tokens)"
        )
    if p.tokenizer != "llama":
        problems.append(f"tokenizer {p.tokenizer!r} (OpenVLA uses the Llama tokenizer)")
    if policy.uses_state:
        problems.append("a state token (OpenVLA reads no proprioception)")
    if len(policy.embodiment.camera_names) != 1:
        problems.append(f"{len(policy.embodiment.camera_names)} cameras (OpenVLA reads one image)")
    if p.llm.model_type != "llama":
        problems.append(f"LLM {p.llm.model_type!r}")
    pad = p.llm.vocab_size - p.action_vocab_size
    if pad < 0 or (pad and p.llm.vocab_size % pad):
        problems.append(
            f"LLM vocab {p.llm.vocab_size} vs action vocab {p.action_vocab_size} (OpenVLA pads 32000 to a multiple of 64)"
        )
    if problems:
        raise InputError("this policy cannot be written as an OpenVLA checkpoint: " + "; ".join(problems))


def save_openvla(
    policy: Any, directory: str | Path, max_shard_bytes: int = 5 * 10**9, unnorm_key: str | None = None
) -> Path:
    """Writes `policy` in OpenVLA's Hugging Face layout (see the module docstring).

    Args:
        policy: a token-head policy with the Llama tokenizer, one camera and no state.
        directory: created if needed; existing OpenVLA files in it are replaced.
        max_shard_bytes: the largest shard (OpenVLA's hub files use about 5 GB).
        unnorm_key: the name of the statistics of a policy trained on one dataset (default: its
            dataset's directory name, or "dataset").
    """
    _check_exportable(policy)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stats = _export_stats(policy, unnorm_key)

    ours = {k: v.detach() for k, v in policy.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for g in weight_groups(policy.preset, set(ours)):
        outs = g.save(*[ours[k] for k in g.ours])
        for k, t in zip(g.theirs, outs):
            state[k] = t.contiguous().cpu()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(state):
        nbytes = state[k].numel() * state[k].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = state[k]
        size += nbytes
    for old in directory.glob("model-*-of-*.safetensors"):
        old.unlink()
    (directory / SINGLE_FILE).unlink(missing_ok=True)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / INDEX_FILE).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    (directory / "config.json").write_text(json.dumps(openvla_config(policy, stats), indent=2))
    (directory / DATASET_STATISTICS_FILE).write_text(json.dumps(stats, indent=2))
    source_dir = Path((policy.openvla_source or {}).get("source") or directory)
    elsewhere = source_dir.resolve() != directory.resolve()
    if elsewhere:
        # OpenVLA's own loader (`trust_remote_code`) reads its modeling files from the checkpoint directory:
        # when the imported one has them, they go along (copied as files; vlaforge never imports them).
        for code in ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py"):
            if (source_dir / code).is_file():
                shutil.copyfile(source_dir / code, directory / code)
    if elsewhere and (source_dir / PREPROCESSOR_FILE).is_file():  # as imported, verbatim
        shutil.copyfile(source_dir / PREPROCESSOR_FILE, directory / PREPROCESSOR_FILE)
    else:
        (directory / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor_config(policy.preset), indent=2))
    tok_dir = Path(policy.text.path)
    for name in TOKENIZER_FILES:
        src = tok_dir / name
        if src.is_file() and src.resolve() != (directory / name).resolve():
            shutil.copyfile(src, directory / name)
    return directory


def _export_stats(policy: Any, unnorm_key: str | None) -> dict[str, Any]:
    """dataset_statistics.json: each key's stats, the imported file's extra fields kept where unchanged."""
    source = (policy.openvla_source or {}).get("dataset_statistics") or {}
    if policy.dataset_stats:
        items = dict(policy.dataset_stats)
    else:
        key = unnorm_key
        if key is None:
            data = (policy.training_data or {}).get("dataset")
            key = Path(str(data)).name if data else "dataset"
        items = {key: policy.norm_stats}
    out = {}
    for key, ns in items.items():
        entry = source.get(key)
        if entry is not None and _same_stats(stats_to_norm(key, entry, "source"), ns):
            out[key] = entry  # unchanged: written back exactly as read
        else:
            out[key] = norm_to_stats(ns)
    return out


def _same_stats(a: NormStats, b: NormStats) -> bool:
    return a.to_dict() == b.to_dict()
