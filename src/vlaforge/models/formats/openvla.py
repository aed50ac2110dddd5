"""The OpenVLA checkpoint format: the Hugging Face `openvla/openvla-7b` layout, read and written with standard
parts (transformers' DINOv2 / SigLIP / Llama; no `trust_remote_code`, no timm).

A directory holds `config.json` (`model_type: "openvla"`), sharded safetensors with
`model.safetensors.index.json`, `dataset_statistics.json`, the Llama tokenizer and
`preprocessor_config.json`. The tensor mapping is `vlaforge.models.openvla_weights`; the quirks it and the
config handle are in docs/openvla.md. Load, save and load again is bit-identical.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from vlaforge.atomic import atomic_dir
from vlaforge.errors import InputError
from vlaforge.format_specs import FORMAT_SPECS
from vlaforge.models.formats.base import Bundle, CheckpointFormat, as_dtype, cast, check_keys
from vlaforge.models.openvla_weights import (
    INDEX_FILE,
    SINGLE_FILE,
    VISION_BACKBONE_IDS,
    Shards,
    stored_dtype,
    tower_spec,
    weight_groups,
)
from vlaforge.models.presets import LLMSpec, Preset
from vlaforge.models.processor import PREPROCESSOR_FILE, check_preprocessor, preprocessor_config
from vlaforge.types import Embodiment, NormStats

DATASET_STATISTICS_FILE = "dataset_statistics.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
)

CODE_FILES = ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py")

# transformers 4.40's LlamaConfig defaults: OpenVLA's config.json stores only the fields that differ.
LLAMA_DEFAULTS = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,  # None: as many as attention heads
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
}


def is_openvla_dir(path: str | Path) -> bool:
    """True for a directory whose config.json says `model_type: "openvla"`."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "openvla"
    except (json.JSONDecodeError, AttributeError):
        return False


def is_hub_id(path_or_id: str | Path) -> bool:
    """True for `owner/name` that is not a local path (what `resolve` would download)."""
    text = str(path_or_id)
    return not Path(text).exists() and text.count("/") == 1 and not text.startswith((".", "/", "~"))


def resolve(path_or_id: str | Path) -> Path:
    """A local directory as is; a hub id (`owner/name`) downloaded through `huggingface_hub` (only the
    JSON, safetensors and tokenizer files: no code is fetched, none is run)."""
    p = Path(path_or_id)
    if p.exists():
        return p
    text = str(path_or_id)
    if not is_hub_id(text):
        raise InputError(f"{text}: no such directory (and not a hub id like openvla/openvla-7b)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "tokenizer.model"]))
    except Exception as e:  # offline, unknown repo, gated: say which and what to do
        raise InputError(
            f"{text}: not a local directory, and downloading it from the Hugging Face hub failed ({e}). "
            "Download it where there is network (`huggingface-cli download openvla/openvla-7b --local-dir "
            "DIR`) and pass DIR."
        ) from e


# ----------------------------------------------------------------------------------------- reading


def read_config(root: Path) -> dict[str, Any]:
    path = root / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read the checkpoint config ({e})") from e
    if cfg.get("model_type") != "openvla":
        raise InputError(f"{path}: model_type is {cfg.get('model_type')!r}, not 'openvla'")
    return cfg


def preset_from_config(cfg: Mapping[str, Any], root: Path, shards: Shards) -> Preset:
    """The vlaforge preset of an OpenVLA config.json (+ the tensors' shapes)."""
    ids = list(cfg.get("timm_model_ids") or [])
    sizes = list(cfg.get("image_sizes") or [])
    acts = list(cfg.get("timm_override_act_layers") or [None] * len(ids))
    fused = bool(cfg.get("use_fused_vision_backbone", len(ids) == 2))
    if not ids or len(ids) != (2 if fused else 1) or len(sizes) != len(ids):
        raise InputError(
            f"{root}/config.json: timm_model_ids {ids} / image_sizes {sizes} do not describe "
            f"{'two fused towers' if fused else 'one tower'}"
        )
    if any(a is not None for a in acts):
        raise InputError(
            f"{root}/config.json: towers with overridden activations {acts} (CLIP's quick_gelu) are not supported"
        )
    if len(set(sizes)) != 1:
        raise InputError(f"{root}/config.json: towers of different image sizes {sizes} are not supported")
    prefixes = ["vision_backbone.featurizer.", "vision_backbone.fused_featurizer."]
    towers = tuple(tower_spec(t, sizes[0], prefixes[i], shards) for i, t in enumerate(ids))
    text = {**LLAMA_DEFAULTS, **dict(cfg.get("text_config") or {})}
    if text.get("model_type", "llama") != "llama":
        raise InputError(
            f"{root}/config.json: text_config model_type {text.get('model_type')!r}; only Llama is supported"
        )
    rope = text.get("rope_scaling")
    if rope:
        raise InputError(f"{root}/config.json: rope_scaling {rope} is not supported")
    vocab = int(text["vocab_size"])
    pad = int(cfg.get("pad_to_multiple_of") or 0)
    llm = LLMSpec(
        hidden_size=int(text["hidden_size"]),
        num_layers=int(text["num_hidden_layers"]),
        num_heads=int(text["num_attention_heads"]),
        intermediate_size=int(text["intermediate_size"]),
        vocab_size=vocab,
        num_kv_heads=int(text["num_key_value_heads"] or text["num_attention_heads"]),
        max_position_embeddings=int(text["max_position_embeddings"]),
        rms_norm_eps=float(text["rms_norm_eps"]),
        rope_theta=float(text.get("rope_theta") or 10000.0),
    )
    strategy = str(cfg.get("image_resize_strategy", "resize-naive"))
    return Preset(
        name=f"openvla:{root.name}",
        vision=towers,
        image_size=int(sizes[0]),
        llm=llm,
        tokenizer="llama",
        tokenizer_path=str(root),
        prompt="openvla",
        action_vocab_size=vocab - pad,  # 32064 - 64 = 32000: OpenVLA's ActionTokenizer vocab
        n_bins=int(cfg.get("n_action_bins", 256)),
        use_state=False,
        chunk_size=8,  # for a chunk head fine-tuned from it; the token head decodes one step
        lr=2e-5,
        image_resize="bicubic-pil",
        resize_strategy=strategy,
    )


def read_dataset_statistics(root: Path, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """dataset_statistics.json (or the config's norm_stats when the file is absent)."""
    path = root / DATASET_STATISTICS_FILE
    if path.is_file():
        try:
            stats = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from e
    else:
        stats = cfg.get("norm_stats")
    if not stats:
        raise InputError(
            f"{root}: no {DATASET_STATISTICS_FILE} and no norm_stats in config.json; actions cannot be "
            "un-normalised without them"
        )
    for key, entry in stats.items():
        if "action" not in entry:
            raise InputError(f"{path}: dataset {key!r} has no 'action' statistics")
    return stats


def stats_to_norm(key: str, entry: Mapping[str, Any], where: str) -> NormStats:
    """One dataset's OpenVLA statistics -> NormStats ("proprio" becomes "observation.state").

    The action mask is the entry's own, all True when it has none: OpenVLA's `predict_action` un-normalises
    each `unnorm_key` with `stats.get("mask", np.ones_like(stats["q01"], dtype=bool))`.
    """
    action = dict(entry["action"])
    action.setdefault("mask", [True] * len(action.get("q01", ())))
    feats = {"action": action}
    if "proprio" in entry:
        feats["observation.state"] = entry["proprio"]
    return NormStats.from_dict(feats, where=f"{where}[{key!r}]")


def norm_to_stats(ns: NormStats) -> dict[str, Any]:
    """NormStats -> one dataset's entry of dataset_statistics.json."""
    out: dict[str, Any] = {"action": ns["action"].to_dict()}
    if "mask" not in out["action"]:
        out["action"]["mask"] = [True] * ns["action"].dim
    if "observation.state" in ns:
        out["proprio"] = ns["observation.state"].to_dict()
    return out


def embodiment_from_stats(stats: Mapping[str, Any], image_size: int) -> Embodiment:
    """An embodiment for an OpenVLA checkpoint, which stores none: one camera ("image"), no state, the
    action dim and mask of its statistics, and limits wide enough never to clip an un-normalised action
    (OpenVLA clips nothing: a masked dim lands in [q01, q99], an unmasked one in [-1, 1])."""
    from vlaforge.data.oxe import find_dataset

    first_key = next(iter(stats))
    dims = {len(e["action"]["q01"]) for e in stats.values()}
    if len(dims) != 1:
        raise InputError(f"{DATASET_STATISTICS_FILE}: datasets with different action dims {sorted(dims)}")
    D = dims.pop()
    masks = [list(map(bool, e["action"].get("mask", [True] * D))) for e in stats.values()]
    low = np.minimum.reduce([np.where(m, e["action"]["q01"], -1.0) for m, e in zip(masks, stats.values())])
    high = np.maximum.reduce([np.where(m, e["action"]["q99"], 1.0) for m, e in zip(masks, stats.values())])
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"] if D == 7 else [f"a{i}" for i in range(D)]
    row = find_dataset(first_key, required=False)
    hz = row.control_hz if row is not None and row.control_hz else 5.0
    return Embodiment(
        action_dim=D,
        action_names=names,
        normalize_mask=masks[0],
        action_low=(low - 1e-6 * np.abs(low) - 1e-6).tolist(),  # float32 round-off must not clip
        action_high=(high + 1e-6 * np.abs(high) + 1e-6).tolist(),
        control_hz=float(hz),
        camera_names=["image"],
        image_size=image_size,
        state_dim=0,
        robot_type=f"openvla:{first_key}",
    )


def detect(path: str | Path) -> bool:
    """An OpenVLA directory, or a hub id (`owner/name`) to download one from."""
    return is_openvla_dir(path) or is_hub_id(path)


def read(path_or_id: str | Path, dtype: torch.dtype | str | None = None) -> Bundle:
    """An OpenVLA checkpoint as a bundle: a token head with chunk 1, one camera ("image"), every
    `unnorm_key`'s statistics with its own mask, and the weights memory-mapped (read lazily)."""
    root = resolve(path_or_id)
    cfg = read_config(root)
    shards = Shards(root)
    preset = preset_from_config(cfg, root, shards)
    check_preprocessor(root, preset)
    raw_stats = read_dataset_statistics(root, cfg)
    embodiment = embodiment_from_stats(raw_stats, preset.image_size)
    where = str(root / DATASET_STATISTICS_FILE)
    per_key = {k: stats_to_norm(k, e, where) for k, e in raw_stats.items()}
    want = as_dtype(dtype) if dtype is not None else None

    def load(expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        groups = weight_groups(preset, set(expected))
        uncovered = sorted(set(expected) - {k for g in groups for k in g.ours})
        if uncovered:  # a bug in the mapping, not the user's file
            raise RuntimeError(f"the OpenVLA mapping leaves vlaforge tensors unassigned: {uncovered[:5]}")
        check_keys(str(root), shards.keys(), {k for g in groups for k in g.theirs}, "its config.json")
        state: dict[str, torch.Tensor] = {}
        for g in groups:
            if not g.theirs:  # a transformers-only tensor (DINOv2's mask token): zeros
                for k in g.ours:
                    state[k] = torch.zeros(expected[k].shape, dtype=want or stored_dtype(shards))
                continue
            for k, t in zip(g.ours, g.load(*[shards.get(k) for k in g.theirs])):
                if tuple(t.shape) != tuple(expected[k].shape):
                    raise InputError(
                        f"{root}: tensor {g.theirs} gives {k!r} of shape {tuple(t.shape)}; the config expects "
                        f"{tuple(expected[k].shape)}"
                    )
                state[k] = cast(t, want)
        return state

    return Bundle(
        preset=preset,
        head={"kind": "tokens", "chunk_size": 1},
        embodiment=embodiment,
        norm_stats=next(iter(per_key.values())),
        state=load,
        dataset_stats=per_key,
        text={"kind": "llama", "path": str(root)},
        tokenizer_dir=str(root),
        extras={"openvla": {"config": cfg, "dataset_statistics": raw_stats, "source": str(root)}},
        build_on_meta=True,
        keep_alive=shards,
    )


# ----------------------------------------------------------------------------------------- writing


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


def openvla_config(bundle: Bundle, stats: Mapping[str, Any]) -> dict[str, Any]:
    """config.json for `bundle`: the imported config with its statistics updated, or one built from the
    preset for a model vlaforge made."""
    p = bundle.preset
    source = (bundle.extras.get("openvla") or {}).get("config")
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
    dtype = str(bundle.dtype).replace("torch.", "")
    if source is not None:
        cfg = json.loads(json.dumps(source))
        cfg["text_config"] = {**cfg.get("text_config", {}), **text, "torch_dtype": dtype}
    else:
        ids = _timm_ids(p)
        fused = len(ids) == 2
        cfg = {
            "architectures": ["OpenVLAForActionPrediction"],
            "model_type": "openvla",
            "vision_backbone_id": VISION_BACKBONE_IDS.get(tuple(ids), "custom"),
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


def check_exportable(bundle: Bundle) -> None:
    """Raises an InputError naming everything OpenVLA's layout cannot express."""
    p, head, emb = bundle.preset, bundle.head, bundle.embodiment
    if p.family is not None:
        raise InputError(
            f"this {p.family['type']} policy cannot be written as an OpenVLA checkpoint; use --format lerobot"
        )
    problems = []
    if head["kind"] != "tokens" or int(head["chunk_size"]) != 1:
        problems.append(
            f"head {head['kind']!r} with chunk {head['chunk_size']} (OpenVLA decodes one step of tokens)"
        )
    if p.tokenizer != "llama":
        problems.append(f"tokenizer {p.tokenizer!r} (OpenVLA uses the Llama tokenizer)")
    if p.use_state and emb.state_dim:
        problems.append("a state token (OpenVLA reads no proprioception)")
    if p.keypoints:
        problems.append(f"{p.keypoints} keypoint tokens (OpenVLA reads patches only)")
    if len(emb.camera_names) != 1:
        problems.append(f"{len(emb.camera_names)} cameras (OpenVLA reads one image)")
    if p.llm.model_type != "llama":
        problems.append(f"LLM {p.llm.model_type!r}")
    pad = p.llm.vocab_size - p.action_vocab_size
    if pad < 0 or (pad and p.llm.vocab_size % pad):
        problems.append(
            f"LLM vocab {p.llm.vocab_size} vs action vocab {p.action_vocab_size} (OpenVLA pads 32000 to a multiple of 64)"
        )
    if problems:
        raise InputError("this policy cannot be written as an OpenVLA checkpoint: " + "; ".join(problems))


def export_stats(bundle: Bundle, unnorm_key: str | None) -> dict[str, Any]:
    """dataset_statistics.json: each key's stats, the imported file's entries kept verbatim where unchanged."""
    source = (bundle.extras.get("openvla") or {}).get("dataset_statistics") or {}
    if bundle.dataset_stats:
        items = dict(bundle.dataset_stats)
    else:
        key = unnorm_key
        if key is None:
            data = (bundle.training_data or {}).get("dataset")
            key = Path(str(data)).name if data else "dataset"
        items = {key: bundle.norm_stats}
    out = {}
    for key, ns in items.items():
        entry = source.get(key)
        if entry is not None and stats_to_norm(key, entry, "source").to_dict() == ns.to_dict():
            out[key] = entry  # unchanged: written back exactly as read
        else:
            out[key] = norm_to_stats(ns)
    return out


def _shards(state: Mapping[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """The tensors in key order, cut into shards of at most `max_bytes` (a larger tensor alone)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(state):
        nbytes = state[k].numel() * state[k].element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = state[k]
        size += nbytes
    return shards


def write(
    bundle: Bundle, directory: str | Path, max_shard_bytes: int = 5 * 10**9, unnorm_key: str | None = None
) -> Path:
    """Writes `bundle` in OpenVLA's layout, readable by OpenVLA's own code.

    The directory is built beside `directory` and swapped in whole (`vlaforge.atomic`): a crash or a full
    disk mid-way leaves the previous checkpoint there, unchanged.

    Args:
        bundle: a token-head policy with the Llama tokenizer, one camera and no state.
        directory: replaced whole.
        max_shard_bytes: the largest shard (OpenVLA's hub files use about 5 GB).
        unnorm_key: the name of the statistics of a policy trained on one dataset (default: its
            dataset's directory name, or "dataset").
    """
    check_exportable(bundle)
    directory = Path(directory)
    stats = export_stats(bundle, unnorm_key)
    ours = {k: v.detach() for k, v in bundle.tensors({}).items()}
    state: dict[str, torch.Tensor] = {}
    for g in weight_groups(bundle.preset, set(ours)):
        for k, t in zip(g.theirs, g.save(*[ours[k] for k in g.ours])):
            state[k] = t.contiguous().cpu()
    shards = _shards(state, max_shard_bytes)
    source = bundle.extras.get("openvla") or {}
    source_dir = Path(source["source"]) if source.get("source") else None
    with atomic_dir(directory, overwrite=True) as tmp:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2))
        (tmp / DATASET_STATISTICS_FILE).write_text(json.dumps(stats, indent=2))
        if source_dir is not None:
            # OpenVLA's own loader (`trust_remote_code`) reads its modeling files from the checkpoint
            # directory: when the imported one has them, they go along (copied as files; never imported).
            for code in CODE_FILES:
                if (source_dir / code).is_file():
                    shutil.copyfile(source_dir / code, tmp / code)
        if source_dir is not None and (source_dir / PREPROCESSOR_FILE).is_file():  # as imported, verbatim
            shutil.copyfile(source_dir / PREPROCESSOR_FILE, tmp / PREPROCESSOR_FILE)
        else:
            (tmp / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor_config(bundle.preset), indent=2))
        if bundle.tokenizer_dir:
            for name in TOKENIZER_FILES:
                if (Path(bundle.tokenizer_dir) / name).is_file():
                    shutil.copyfile(Path(bundle.tokenizer_dir) / name, tmp / name)
        (tmp / "config.json").write_text(json.dumps(openvla_config(bundle, stats), indent=2))
    return directory


FORMAT = CheckpointFormat(
    name="openvla",
    doc=FORMAT_SPECS["openvla"].doc,
    detect=detect,
    read=read,
    write=write,
    write_options=FORMAT_SPECS["openvla"].write_options,
)

__all__ = [
    "DATASET_STATISTICS_FILE",
    "FORMAT",
    "INDEX_FILE",
    "SINGLE_FILE",
    "embodiment_from_stats",
    "is_hub_id",
    "is_openvla_dir",
    "norm_to_stats",
    "openvla_config",
    "read",
    "resolve",
    "stats_to_norm",
    "write",
]
