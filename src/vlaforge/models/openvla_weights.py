"""OpenVLA's tensors <-> vlaforge's: the timm vision towers onto transformers' modules, and the rest renamed.

OpenVLA's towers are timm ViTs, so its tensors carry timm's names; `weight_groups` maps every one of them
onto `Policy.state_dict()` keys, both ways (`Group.load` / `Group.save`). This mapping is where exact parity
is decided; the quirks it handles are in docs/openvla.md. `Shards` memory-maps a checkpoint's safetensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from vlaforge.errors import InputError
from vlaforge.models.presets import Preset, ViTSpec

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

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
VISION_BACKBONE_IDS = {  # Prismatic's names for the tower combinations vlaforge can build
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


def tower_spec(timm_id: str, image_size: int, prefix: str, shards: Shards) -> ViTSpec:
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


def stored_dtype(shards: Shards) -> torch.dtype:
    """The dtype the checkpoint stores its weights in (its projector's)."""
    key = next(k for k in sorted(shards.keys()) if k.startswith("projector."))
    return shards.get(key).dtype


__all__ = [
    "INDEX_FILE",
    "SINGLE_FILE",
    "TIMM_MODELS",
    "Group",
    "Shards",
    "register_timm_model",
    "stored_dtype",
    "tower_spec",
    "weight_groups",
]
