"""OpenVLA checkpoints in: the Hugging Face `openvla/openvla-7b` layout, read with standard parts
(transformers' DINOv2 / SigLIP / Llama, no `trust_remote_code`, no timm). Writing it back, through the same
tensor mapping, is `vlaforge.models.openvla_save`.

An OpenVLA directory holds `config.json` (`model_type: "openvla"`), sharded safetensors with
`model.safetensors.index.json`, `dataset_statistics.json`, the Llama tokenizer and
`preprocessor_config.json`. Its vision towers are timm ViTs, so their tensors carry timm's names; the
mapping onto transformers' modules (`_tower_groups`) is where exact parity is decided:

- timm fuses attention into one `qkv` Linear (rows q, k, v); transformers has three. Split on load,
  concatenated on save.
- OpenVLA renames timm's LayerScale `gamma` to `scale_factor` (transformers' loader used to rewrite any
  key containing "gamma"); it maps to `layer_scale{1,2}.lambda1`.
- DINOv2 with registers is built with timm's `no_embed_class`: position embeddings are added to the
  patches only, then [class, registers, patches] are concatenated. transformers adds a position row to
  the class token too, so the import prepends a zero row; the export folds whatever that row holds into
  the class token (timm's `cls` equals transformers' `cls + pos[0]`, bit for bit), so fine-tuning
  loses nothing.
- transformers' DINOv2 carries a mask token (masked-image pre-training only) that OpenVLA lacks: zeros
  on load, dropped on save.
- SigLIP's attention-pool head: timm's `q` and `kv` Linears are `nn.MultiheadAttention`'s `in_proj`.
- `config.json` leaves out every Llama field equal to transformers 4.40's `LlamaConfig` defaults (what
  OpenVLA pins), e.g. `rms_norm_eps` 1e-6, not Llama-2's published 1e-5; reading the config with those
  defaults is what reproduces OpenVLA's numbers.

Every tensor is accounted for: a missing or unexpected key is an error that lists them. The policy is
built with its parameters on the meta device and the shards are memory-mapped, so a 7B load holds one
copy of the weights (`bench/bench_openvla.py` measures it). Action tokens: the last `n_action_bins` ids
of the Llama vocab before OpenVLA's padding to a multiple of 64 (32064 - 64 = 32000, ids 31744..31999).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from vlaforge.errors import InputError
from vlaforge.models.presets import LLMSpec, Preset, ViTSpec
from vlaforge.types import Embodiment, NormStats

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DATASET_STATISTICS_FILE = "dataset_statistics.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
)

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

# timm model id -> (tower kind, attention heads). Widths, depths, patch size and registers are read from
# the tensors; the head count is the one thing the weights do not say.
TIMM_MODELS: dict[str, tuple[str, int]] = {
    "vit_large_patch14_reg4_dinov2.lvd142m": ("dinov2_reg", 16),
    "vit_base_patch14_reg4_dinov2.lvd142m": ("dinov2_reg", 12),
    "vit_small_patch14_reg4_dinov2.lvd142m": ("dinov2_reg", 6),
    "vit_giant_patch14_reg4_dinov2.lvd142m": ("dinov2_reg", 24),
    "vit_large_patch14_dinov2.lvd142m": ("dinov2", 16),
    "vit_base_patch14_dinov2.lvd142m": ("dinov2", 12),
    "vit_so400m_patch14_siglip_224": ("siglip", 16),
    "vit_so400m_patch14_siglip_384": ("siglip", 16),
    "vit_base_patch16_siglip_224": ("siglip", 12),
    "vit_large_patch16_siglip_256": ("siglip", 16),
}
_VISION_BACKBONE_IDS = {  # Prismatic's names for the tower combinations vlaforge can build
    ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"): "dinosiglip-vit-so-224px",
    ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_384"): "dinosiglip-vit-so-384px",
    ("vit_so400m_patch14_siglip_224",): "siglip-vit-so400m",
    ("vit_so400m_patch14_siglip_384",): "siglip-vit-so400m-384px",
    ("vit_large_patch14_reg4_dinov2.lvd142m",): "dinov2-vit-l",
}


def register_timm_model(timm_id: str, kind: str, num_heads: int) -> None:
    """Teaches the loader a timm vision tower it does not know (e.g. a custom Prismatic backbone)."""
    if kind not in ("dinov2_reg", "dinov2", "siglip"):
        raise InputError(f"tower kind {kind!r} is not one of 'dinov2_reg', 'dinov2', 'siglip'")
    TIMM_MODELS[timm_id] = (kind, int(num_heads))


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


# ----------------------------------------------------------------------------------------- weights


class Shards:
    """The safetensors of a checkpoint, memory-mapped: tensors are read lazily and shared with the file."""

    def __init__(self, root: Path):
        self.root = root
        index = root / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise InputError(f"{index}: not a safetensors index (needs a 'weight_map'): {e}") from e
            files = sorted(set(weight_map.values()))
        elif (root / SINGLE_FILE).is_file():
            files, weight_map = [SINGLE_FILE], None
        else:
            raise InputError(f"{root}: no {INDEX_FILE} and no {SINGLE_FILE}; not a checkpoint directory")
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise InputError(
                f"{root}: shard(s) {missing} named in {INDEX_FILE} are missing; download them again"
            )
        self.handles = {f: safe_open(str(root / f), framework="pt") for f in files}
        self.where: dict[str, str] = {}
        for f, h in self.handles.items():
            for k in h.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                self.where[k] = f
        if weight_map is not None:
            wrong = sorted(k for k, f in weight_map.items() if self.where.get(k) != f)
            if wrong:
                raise InputError(
                    f"{index}: {len(wrong)} key(s) are not in the shard it names, e.g. {wrong[:3]}"
                )

    def keys(self) -> set[str]:
        return set(self.where)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.handles[self.where[key]].get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        return self.handles[self.where[key]].get_tensor(key)


@dataclass
class Group:
    """timm tensors <-> vlaforge tensors that map onto each other (1:1 renames, splits and merges).

    `load` takes the OpenVLA tensors (in `theirs` order) and returns ours; `save` the reverse.
    """

    theirs: tuple[str, ...]
    ours: tuple[str, ...]
    load: Callable[..., tuple[torch.Tensor, ...]]
    save: Callable[..., tuple[torch.Tensor, ...]]


def _same(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return ts


def _rename(theirs: str, ours: str) -> Group:
    return Group((theirs,), (ours,), _same, _same)


def _linear(theirs: str, ours: str) -> list[Group]:
    return [_rename(f"{theirs}.weight", f"{ours}.weight"), _rename(f"{theirs}.bias", f"{ours}.bias")]


def _split_qkv(theirs: str, ours: tuple[str, str, str]) -> list[Group]:
    """timm's fused `qkv` (rows q, k, v) <-> three projections."""

    def load(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t.chunk(3, dim=0))

    def save(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.cat([q, k, v], dim=0),)

    return [
        Group((f"{theirs}.{p}",), tuple(f"{o}.{p}" for o in ours), load, save) for p in ("weight", "bias")
    ]


def _tower_groups(spec: ViTSpec, theirs: str, ours: str, hf_keys: set[str]) -> list[Group]:
    """The mapping of one timm tower (prefix `theirs`) onto its transformers module (prefix `ours`)."""
    groups: list[Group] = []
    n = spec.num_layers
    if spec.kind == "siglip":
        groups += _linear(f"{theirs}patch_embed.proj", f"{ours}embeddings.patch_embedding")
        groups.append(
            Group(
                (f"{theirs}pos_embed",),
                (f"{ours}embeddings.position_embedding.weight",),
                lambda p: (p[0],),  # (1, N, D) -> (N, D)
                lambda p: (p[None],),
            )
        )
        for i in range(n):
            t, o = f"{theirs}blocks.{i}.", f"{ours}encoder.layers.{i}."
            groups += _linear(f"{t}norm1", f"{o}layer_norm1") + _linear(f"{t}norm2", f"{o}layer_norm2")
            groups += _split_qkv(f"{t}attn.qkv", tuple(f"{o}self_attn.{x}_proj" for x in "qkv"))
            groups += _linear(f"{t}attn.proj", f"{o}self_attn.out_proj")
            groups += _linear(f"{t}mlp.fc1", f"{o}mlp.fc1") + _linear(f"{t}mlp.fc2", f"{o}mlp.fc2")
        groups += _linear(f"{theirs}norm", f"{ours}post_layernorm")
        if spec.use_head:
            t, o = f"{theirs}attn_pool.", f"{ours}head."
            groups.append(_rename(f"{t}latent", f"{o}probe"))
            for p in ("weight", "bias"):
                groups.append(
                    Group(
                        (f"{t}q.{p}", f"{t}kv.{p}"),  # kv rows: k then v, as in_proj's second and third
                        (f"{o}attention.in_proj_{p}",),
                        lambda q, kv: (torch.cat([q, kv], dim=0),),
                        lambda w: (w[: w.shape[0] // 3], w[w.shape[0] // 3 :]),
                    )
                )
            groups += _linear(f"{t}proj", f"{o}attention.out_proj") + _linear(f"{t}norm", f"{o}layernorm")
            groups += _linear(f"{t}mlp.fc1", f"{o}mlp.fc1") + _linear(f"{t}mlp.fc2", f"{o}mlp.fc2")
        return groups

    e = f"{ours}embeddings."
    groups += _linear(f"{theirs}patch_embed.proj", f"{e}patch_embeddings.projection")
    if spec.kind == "dinov2_reg":  # timm no_embed_class: no position row for the class token
        groups.append(
            Group(
                (f"{theirs}cls_token", f"{theirs}pos_embed"),
                (f"{e}cls_token", f"{e}position_embeddings"),
                lambda cls, pos: (cls, torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)),
                lambda cls, pos: (cls + pos[:, :1], pos[:, 1:]),
            )
        )
        groups.append(_rename(f"{theirs}reg_token", f"{e}register_tokens"))
    else:
        groups += [
            _rename(f"{theirs}cls_token", f"{e}cls_token"),
            _rename(f"{theirs}pos_embed", f"{e}position_embeddings"),
        ]
    groups.append(Group((), (f"{e}mask_token",), None, lambda m: ()))  # type: ignore[arg-type]
    # transformers renamed DINOv2's attention projections over its versions; use what this one has.
    new_names = f"{ours}encoder.layer.0.attention.q_proj.weight" in hf_keys
    for i in range(n):
        t, o = f"{theirs}blocks.{i}.", f"{ours}encoder.layer.{i}."
        groups += _linear(f"{t}norm1", f"{o}norm1") + _linear(f"{t}norm2", f"{o}norm2")
        if new_names:
            qkv = tuple(f"{o}attention.{x}_proj" for x in "qkv")
            out = f"{o}attention.o_proj"
        else:
            qkv = tuple(f"{o}attention.attention.{x}" for x in ("query", "key", "value"))
            out = f"{o}attention.output.dense"
        groups += _split_qkv(f"{t}attn.qkv", qkv) + _linear(f"{t}attn.proj", out)
        groups.append(_rename(f"{t}ls1.scale_factor", f"{o}layer_scale1.lambda1"))
        groups.append(_rename(f"{t}ls2.scale_factor", f"{o}layer_scale2.lambda1"))
        groups += _linear(f"{t}mlp.fc1", f"{o}mlp.fc1") + _linear(f"{t}mlp.fc2", f"{o}mlp.fc2")
    groups += _linear(f"{theirs}norm", f"{ours}layernorm")
    return groups


def weight_groups(preset: Preset, our_keys: set[str]) -> list[Group]:
    """Every OpenVLA tensor of a model with this preset, mapped onto `Policy.state_dict()` keys."""
    groups: list[Group] = []
    for i, spec in enumerate(preset.vision):
        name = "featurizer" if i == 0 else "fused_featurizer"
        groups += _tower_groups(spec, f"vision_backbone.{name}.", f"backbone.vision.{name}.", our_keys)
    for k in sorted(our_keys):
        if k.startswith("backbone.projector."):
            groups.append(_rename(k.replace("backbone.", "", 1), k))
        elif k.startswith("backbone.llm."):
            groups.append(_rename("language_model." + k[len("backbone.llm.") :], k))
    return groups


def _tower_spec(timm_id: str, image_size: int, prefix: str, shards: Shards) -> ViTSpec:
    """A tower's spec: kind and heads from `TIMM_MODELS`, every size from the tensors."""
    if timm_id not in TIMM_MODELS:
        raise InputError(
            f"vision tower {timm_id!r} is not one vlaforge knows ({sorted(TIMM_MODELS)}); if it is a DINOv2 "
            "or SigLIP ViT, register it with vlaforge.models.openvla.register_timm_model(id, kind, num_heads)"
        )
    kind, heads = TIMM_MODELS[timm_id]
    keys = shards.keys()
    need = f"{prefix}patch_embed.proj.weight"
    if need not in keys:
        raise InputError(f"{shards.root}: no {need!r}; the checkpoint's vision tower {timm_id!r} is missing")
    hidden, _, patch, _ = shards.shape(need)
    layers = 0  # blocks 0, 1, ... as long as they come; a stray higher index is reported as unexpected
    while f"{prefix}blocks.{layers}.norm1.weight" in keys:
        layers += 1
    mlp = shards.shape(f"{prefix}blocks.0.mlp.fc1.weight")[0]
    registers = shards.shape(f"{prefix}reg_token")[1] if f"{prefix}reg_token" in keys else 0
    if (kind == "dinov2_reg") != (registers > 0):
        raise InputError(
            f"{shards.root}: tower {timm_id!r} is registered as {kind} but has {registers} registers"
        )
    n_pos = shards.shape(f"{prefix}pos_embed")[1]
    want = (image_size // patch) ** 2 + (1 if kind == "dinov2" else 0)
    if n_pos != want:
        raise InputError(
            f"{shards.root}: {prefix}pos_embed has {n_pos} positions; image size {image_size} with patch {patch} "
            f"needs {want}"
        )
    return ViTSpec(
        kind,
        hidden,
        layers,
        heads,
        mlp,
        patch,
        num_register_tokens=registers,
        use_head=f"{prefix}attn_pool.latent" in keys,
        timm_id=timm_id,
    )


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
    towers = tuple(_tower_spec(t, sizes[0], prefixes[i], shards) for i, t in enumerate(ids))
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


# ----------------------------------------------------------------------------------------- statistics


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
    """One dataset's OpenVLA statistics -> NormStats ("proprio" becomes "observation.state")."""
    feats = {"action": entry["action"]}
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


# ----------------------------------------------------------------------------------------- loading


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to the meta device as soon as it is created (its CPU
    allocation is never touched, so never resident); buffers stay real, so rotary frequencies and pixel
    statistics keep their values. Load the weights with `load_state_dict(..., assign=True)`."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        p = module._parameters.get(name)
        if p is not None and p.device.type != "meta":
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def load_openvla(
    path_or_id: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu"
) -> Any:
    """An OpenVLA checkpoint as a vlaforge `Policy` (token head, chunk 1), weights memory-mapped.

    Args:
        path_or_id: the checkpoint directory or a hub id.
        dtype: the weights' dtype; None keeps the checkpoint's (bfloat16 for openvla-7b).
        device: where the policy goes.
    """
    from vlaforge.models.policy import Policy

    root = resolve(path_or_id)
    cfg = read_config(root)
    shards = Shards(root)
    preset = preset_from_config(cfg, root, shards)
    check_preprocessor(root, preset)
    raw_stats = read_dataset_statistics(root, cfg)
    embodiment = embodiment_from_stats(raw_stats, preset.image_size)
    where = str(root / DATASET_STATISTICS_FILE)
    per_key = {k: stats_to_norm(k, e, where) for k, e in raw_stats.items()}
    with parameters_on_meta():
        policy = Policy(preset, {"kind": "tokens", "chunk_size": 1}, embodiment, next(iter(per_key.values())))
    policy.set_dataset_stats(per_key)
    policy.openvla_source = {"config": cfg, "dataset_statistics": raw_stats, "source": str(root)}

    ours = policy.state_dict()
    groups = weight_groups(preset, set(ours))
    theirs_expected = {k for g in groups for k in g.theirs}
    ours_covered = {k for g in groups for k in g.ours}
    uncovered = sorted(set(ours) - ours_covered)
    if uncovered:  # a bug in the mapping, not the user's file
        raise RuntimeError(f"the OpenVLA mapping leaves vlaforge tensors unassigned: {uncovered[:5]}")
    present = shards.keys()
    missing, unexpected = sorted(theirs_expected - present), sorted(present - theirs_expected)
    if missing or unexpected:
        raise InputError(
            f"{root}: the checkpoint's tensors do not match its config.json: "
            f"{len(missing)} missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"{len(unexpected)} unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    want_dtype = _dtype(dtype) if dtype is not None else None
    state: dict[str, torch.Tensor] = {}
    for g in groups:
        if not g.theirs:  # a transformers-only tensor (DINOv2's mask token): zeros
            for k in g.ours:
                state[k] = torch.zeros(ours[k].shape, dtype=want_dtype or _stored_dtype(cfg, shards))
            continue
        tensors = [shards.get(k) for k in g.theirs]
        for k, t in zip(g.ours, g.load(*tensors)):
            if tuple(t.shape) != tuple(ours[k].shape):
                raise InputError(
                    f"{root}: tensor {g.theirs} gives {k!r} of shape {tuple(t.shape)}; the config expects "
                    f"{tuple(ours[k].shape)}"
                )
            state[k] = t if want_dtype is None or t.dtype == want_dtype else t.to(want_dtype)
    policy.load_state_dict(state, strict=True, assign=True)
    del state
    policy._shards = shards  # keeps the memory maps open as long as the policy lives
    return policy.to(device)


def _dtype(d: torch.dtype | str) -> torch.dtype:
    if isinstance(d, torch.dtype):
        return d
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if d not in table:
        raise InputError(f"unknown dtype {d!r}; choose one of {sorted(table)}")
    return table[d]


def _stored_dtype(cfg: Mapping[str, Any], shards: Shards) -> torch.dtype:
    key = next(k for k in sorted(shards.keys()) if k.startswith("projector."))
    return shards.get(key).dtype


def preprocessor_config(preset: Preset) -> dict[str, Any]:
    """OpenVLA's preprocessor_config.json for a preset (its processor's resize and normalisation)."""
    from vlaforge.models.vision import IMAGENET_MEAN, IMAGENET_STD, SIGLIP_MEAN, SIGLIP_STD

    means = [list(SIGLIP_MEAN if s.kind == "siglip" else IMAGENET_MEAN) for s in preset.vision]
    stds = [list(SIGLIP_STD if s.kind == "siglip" else IMAGENET_STD) for s in preset.vision]
    n = len(preset.vision)
    return {
        "image_processor_type": "PrismaticImageProcessor",
        "processor_class": "PrismaticProcessor",
        "use_fused_vision_backbone": n == 2,
        "image_resize_strategy": preset.resize_strategy,
        "input_sizes": [[3, preset.image_size, preset.image_size]] * n,
        "interpolations": ["bicubic"] * n,
        "means": means,
        "stds": stds,
    }


def check_preprocessor(root: Path, preset: Preset) -> None:
    """A preprocessor_config.json whose normalisation differs from the towers' is refused, not ignored."""
    path = root / PREPROCESSOR_FILE
    if not path.is_file():
        return
    have = json.loads(path.read_text())
    want = preprocessor_config(preset)
    for key in ("means", "stds"):
        got = have.get(key)
        if got is not None and not np.allclose(
            np.asarray(got, dtype=float), np.asarray(want[key], dtype=float), atol=1e-6
        ):
            raise InputError(
                f"{path}: {key} {got} differ from the towers' {want[key]}; vlaforge cannot reproduce them"
            )
    interp = have.get("interpolations")
    if interp is not None and any(i != "bicubic" for i in interp):
        raise InputError(f"{path}: interpolations {interp}; only bicubic (OpenVLA's) is supported")


class Processor:
    """OpenVLA's processor contract for any vlaforge policy: `processor(prompt, image)` -> `input_ids`
    (BOS + the prompt's ids, left-padded in a batch), `attention_mask` and `pixel_values`
    (B, 3 * n_towers, S, S), resized and normalised exactly as the policy does it internally (for an
    imported OpenVLA checkpoint: its processor's bicubic resize and per-tower mean/std). Pass the result
    to `policy.predict_action(**inputs, unnorm_key=...)`.
    """

    def __init__(self, policy: Any):
        self.policy = policy
        self.tokenizer = policy.text

    def __call__(
        self, text: str | list[str], images: Any, return_tensors: str = "pt"
    ) -> dict[str, torch.Tensor]:
        texts = [text] if isinstance(text, str) else list(text)
        imgs = images if isinstance(images, (list, tuple)) else [images]
        if len(imgs) != len(texts):
            raise InputError(f"{len(texts)} prompts for {len(imgs)} images; pass one image per prompt")
        if return_tensors != "pt":
            raise InputError(f"return_tensors={return_tensors!r}: only 'pt' (torch tensors) is supported")
        tok = self.tokenizer
        ids = [[tok.bos_id] + tok.encode(t) for t in texts]
        T = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), T), tok.pad_id, dtype=torch.long)
        mask = torch.zeros(len(ids), T, dtype=torch.long)
        for b, x in enumerate(ids):  # left padding, as OpenVLA's processor requires
            input_ids[b, T - len(x) :] = torch.as_tensor(x)
            mask[b, T - len(x) :] = 1
        vision = self.policy.backbone.vision
        pixels = []
        for img in imgs:
            arr = np.asarray(img.convert("RGB")) if hasattr(img, "convert") else np.asarray(img)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
                raise InputError(
                    f"images must be PIL images or uint8 (H, W, 3) arrays; got {arr.dtype} {arr.shape}"
                )
            with torch.no_grad():
                pixels.append(vision.preprocess(torch.from_numpy(np.ascontiguousarray(arr))[None]))
        return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": torch.cat(pixels).cpu()}


__all__ = [
    "Processor",
    "is_hub_id",
    "TIMM_MODELS",
    "is_openvla_dir",
    "load_openvla",
    "preprocessor_config",
    "register_timm_model",
]
