"""A writer of tiny OpenVLA-layout checkpoints (timm key names, fused qkv, `scale_factor`, registers, sharded
safetensors + index, dataset_statistics.json, a Llama-style tokenizer) and the reference model that reads
them (`openvla_reference.RefModel`). Like the reference, it shares no code with vlaforge.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from openvla_reference import (
    LLAMA_EMPTY_TOKEN,
    LLAMA_PAD,
    LLM_GAIN,
    LM_HEAD_GAIN,
    N_ACTION_BINS,
    PAD_TO_MULTIPLE_OF,
    PROMPT_WORDS,
    TEXT_VOCAB,
    RefModel,
    RefTower,
    default_dinov2_tower,
    default_siglip_tower,
)


class _Init:
    """Seeded random tensors whose scale makes every mistake visible at fp32 1e-5."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g)

    def weight(self, out: int, inp: int, std: float | None, gain: float = 1.0) -> torch.Tensor:
        """Linear weight, std = gain/sqrt(fan_in) unless ``std`` is given (so attention is far from uniform)."""
        return self.randn(out, inp) * (std if std is not None else gain * inp**-0.5)

    def bias(self, n: int) -> torch.Tensor:
        return 0.02 * self.randn(n)

    def norm_weight(self, n: int) -> torch.Tensor:
        return 1.0 + 0.1 * self.randn(n)

    def layer_scale(self, n: int) -> torch.Tensor:
        return 0.5 + torch.rand(n, generator=self.g)


def _tower_state(tower: RefTower, n_patches: int, pre: str, init: _Init, std: float | None) -> dict:
    d, p = tower.hidden, tower.patch
    s: dict[str, torch.Tensor] = {}
    if tower.kind == "dinov2_reg":
        s[pre + "cls_token"] = 0.5 * init.randn(1, 1, d)
        if tower.registers:
            s[pre + "reg_token"] = 0.5 * init.randn(1, tower.registers, d)
    s[pre + "pos_embed"] = 0.5 * init.randn(1, n_patches, d)
    s[pre + "patch_embed.proj.weight"] = init.randn(d, 3, p, p) * (
        std if std is not None else (3 * p * p) ** -0.5
    )
    s[pre + "patch_embed.proj.bias"] = init.bias(d)

    def lin(name: str, out: int, inp: int) -> None:
        s[name + ".weight"] = init.weight(out, inp, std)
        s[name + ".bias"] = init.bias(out)

    def norm(name: str) -> None:
        s[name + ".weight"] = init.norm_weight(d)
        s[name + ".bias"] = init.bias(d)

    for i in range(tower.layers):
        b = f"{pre}blocks.{i}."
        norm(b + "norm1")
        lin(b + "attn.qkv", 3 * d, d)
        lin(b + "attn.proj", d, d)
        if tower.kind == "dinov2_reg":
            s[b + "ls1.scale_factor"] = init.layer_scale(d)
        norm(b + "norm2")
        lin(b + "mlp.fc1", tower.mlp, d)
        lin(b + "mlp.fc2", d, tower.mlp)
        if tower.kind == "dinov2_reg":
            s[b + "ls2.scale_factor"] = init.layer_scale(d)
    norm(pre + "norm")
    if tower.kind == "siglip":
        a = pre + "attn_pool."
        s[a + "latent"] = 0.5 * init.randn(1, 1, d)
        lin(a + "q", d, d)
        lin(a + "kv", 2 * d, d)
        lin(a + "proj", d, d)
        norm(a + "norm")
        lin(a + "mlp.fc1", tower.mlp, d)
        lin(a + "mlp.fc2", d, tower.mlp)
    return s


def _llm_state(llm: dict, init: _Init, std: float | None) -> dict:
    d, hd = llm["hidden"], llm["hidden"] // llm["heads"]
    v, f = llm["vocab_size"], llm["intermediate"]
    p = "language_model.model."
    s = {p + "embed_tokens.weight": init.randn(v, d)}
    for i in range(llm["layers"]):
        b = f"{p}layers.{i}."
        s[b + "input_layernorm.weight"] = init.norm_weight(d)
        s[b + "self_attn.q_proj.weight"] = init.weight(llm["heads"] * hd, d, std, LLM_GAIN)
        s[b + "self_attn.k_proj.weight"] = init.weight(llm["kv_heads"] * hd, d, std, LLM_GAIN)
        s[b + "self_attn.v_proj.weight"] = init.weight(llm["kv_heads"] * hd, d, std, LLM_GAIN)
        s[b + "self_attn.o_proj.weight"] = init.weight(d, llm["heads"] * hd, std, LLM_GAIN)
        s[b + "post_attention_layernorm.weight"] = init.norm_weight(d)
        s[b + "mlp.gate_proj.weight"] = init.weight(f, d, std, LLM_GAIN)
        s[b + "mlp.up_proj.weight"] = init.weight(f, d, std, LLM_GAIN)
        s[b + "mlp.down_proj.weight"] = init.weight(d, f, std, LLM_GAIN)
    s[p + "norm.weight"] = init.norm_weight(d)
    head = init.weight(v, d, std, LM_HEAD_GAIN)
    # The rows of the 256 action tokens (the last Llama ids, below <PAD>) are scaled up so that greedy
    # decoding lands in the action bins and the decoded action depends on the input.
    action_vocab = v - PAD_TO_MULTIPLE_OF
    head[action_vocab - N_ACTION_BINS : action_vocab] *= 3.0
    s["language_model.lm_head.weight"] = head
    return s


def make_dataset_statistics(names: Sequence[str], action_dim: int = 7) -> dict:
    """OpenVLA ``dataset_statistics.json`` entries: distinct q01/q99 per dim, the last (gripper) dim unmasked."""
    out = {}
    dims = np.arange(action_dim, dtype=np.float64)
    for k, name in enumerate(names):
        q01 = -(0.3 + 0.1 * dims + 0.05 * k)
        q99 = 0.2 + 0.15 * dims + 0.07 * k
        q99[-1], q01[-1] = 1.0, 0.0  # a gripper in [0, 1], left unnormalised by the mask

        def r(a: np.ndarray) -> list[float]:
            return [round(float(x), 6) for x in a]

        action = {
            "mean": r((q01 + q99) / 2),
            "std": r((q99 - q01) / 4),
            "max": r(q99 + 0.1),
            "min": r(q01 - 0.1),
            "q01": r(q01),
            "q99": r(q99),
            "mask": [True] * (action_dim - 1) + [False],
        }
        zeros = [0.0] * 7
        proprio = {stat: list(zeros) for stat in ("mean", "std", "max", "min", "q01", "q99")}
        out[name] = {
            "action": action,
            "proprio": proprio,
            "num_transitions": 1000 + 17 * k,
            "num_trajectories": 10 + k,
        }
    return out


def write_tokenizer(path: Path) -> dict[str, int]:
    """A Llama-like WordLevel tokenizer.json (WhitespaceSplit) with 32001 entries; returns its vocab.

    0 <unk>, 1 <s>, 2 </s>, PROMPT_WORDS at 3.., 29871 "▁", "<extra_i>" fillers, 32000 <PAD>.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i, w in enumerate(PROMPT_WORDS):
        vocab[w] = 3 + i
    vocab["▁"] = LLAMA_EMPTY_TOKEN
    vocab["<PAD>"] = LLAMA_PAD
    used = set(vocab.values())
    for i in range(LLAMA_PAD):
        if i not in used:
            vocab[f"<extra_{i}>"] = i
    assert len(vocab) == LLAMA_PAD + 1 and sorted(vocab.values()) == list(range(LLAMA_PAD + 1))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return vocab


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]


def write_safetensors(directory: Path, tensors: dict[str, torch.Tensor], n_shards: int, single_file: bool):
    """HF layout: ``model.safetensors``, or ``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``.

    Keys are split in order into n_shards contiguous groups of roughly equal bytes.
    """
    from safetensors.torch import save_file

    meta = {"format": "pt"}
    if single_file:
        save_file(tensors, str(directory / "model.safetensors"), metadata=meta)
        return
    keys = list(tensors)
    if not 1 <= n_shards <= len(keys):
        raise ValueError(f"n_shards must be in [1, {len(keys)}]")
    sizes = [tensors[k].numel() * tensors[k].element_size() for k in keys]
    total = sum(sizes)
    cum_before = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cuts = [0]
    for j in range(1, n_shards):
        target = j * total / n_shards
        i = int(np.searchsorted(cum_before, target, side="left"))
        cuts.append(min(max(i, cuts[-1] + 1), len(keys) - (n_shards - j)))  # every shard non-empty
    cuts.append(len(keys))
    groups = [keys[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    weight_map = {}
    for j, group in enumerate(groups):
        name = f"model-{j + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({k: tensors[k] for k in group}, str(directory / name), metadata=meta)
        weight_map.update(dict.fromkeys(group, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def make_openvla_checkpoint(
    directory,
    *,
    fused: bool = True,
    image_size: int = 28,
    towers: Sequence[RefTower] | None = None,
    llm: dict | None = None,
    action_dim: int = 7,
    datasets: Sequence[str] | dict = ("bridge_orig",),
    n_shards: int = 2,
    single_file: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    tokenizer: bool = True,
    preprocessor: bool = True,
    init_std: float | None = None,
    vision_backbone_id: str | None = None,
) -> RefModel:
    """Write a random OpenVLA checkpoint in the Hugging Face layout and return its reference model.

    ``towers`` defaults to a tiny DINOv2-reg + SigLIP pair (fused) or the SigLIP tower alone; ``llm`` to
    {hidden 64, layers 2, heads 4, kv_heads 4, intermediate 128, rms_norm_eps 1e-6, rope_theta 10000}
    (vocab 32064). ``datasets`` is a list of names (statistics made up) or a full statistics dict.
    Linear weights have std gain/sqrt(fan_in) (gain 1 in the vision towers and projector, LLM_GAIN and
    LM_HEAD_GAIN in the Llama), or ``init_std`` everywhere if given; biases 0.02 N(0, 1), norm weights
    1 + 0.1 N(0, 1), LayerScale U(0.5, 1.5), cls/register/position/latent tokens 0.5 N(0, 1), token
    embeddings N(0, 1). The lm_head rows of the 256 action tokens are scaled by 3.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if towers is None:
        towers = [default_dinov2_tower(), default_siglip_tower()] if fused else [default_siglip_tower()]
    towers = list(towers)
    if len(towers) != (2 if fused else 1):
        raise ValueError("a fused backbone has two towers, a single one has one")
    if fused and (towers[0].kind, towers[1].kind) != ("dinov2_reg", "siglip"):
        raise ValueError("OpenVLA fuses DINOv2 (first) with SigLIP (second)")
    for t in towers:
        if image_size % t.patch:
            raise ValueError("image_size must be a multiple of every tower's patch size")
    llm_cfg = {
        "hidden": 64,
        "layers": 2,
        "heads": 4,
        "kv_heads": 4,
        "intermediate": 128,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "vocab_size": TEXT_VOCAB,
    }
    llm_cfg.update(llm or {})

    stats = (
        copy.deepcopy(dict(datasets))
        if isinstance(datasets, dict)
        else make_dataset_statistics(list(datasets), action_dim)
    )

    # --- tensors ---
    init = _Init(seed)
    tensors: dict[str, torch.Tensor] = {}
    for t, tower in enumerate(towers):
        pre = "vision_backbone.featurizer." if t == 0 else "vision_backbone.fused_featurizer."
        tensors.update(_tower_state(tower, (image_size // tower.patch) ** 2, pre, init, init_std))
    dv, dl = sum(t.hidden for t in towers), llm_cfg["hidden"]
    if fused:
        dims = [("fc1", dv, 4 * dv), ("fc2", 4 * dv, dl), ("fc3", dl, dl)]
    else:
        dims = [("fc1", dv, dl), ("fc2", dl, dl)]
    for name, inp, out in dims:
        tensors[f"projector.{name}.weight"] = init.weight(out, inp, init_std)
        tensors[f"projector.{name}.bias"] = init.bias(out)
    tensors.update(_llm_state(llm_cfg, init, init_std))
    tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    write_safetensors(directory, tensors, n_shards, single_file)

    # --- config.json ---
    dname = _dtype_name(dtype)
    config = {
        "model_type": "openvla",
        "architectures": ["OpenVLAForActionPrediction"],
        "vision_backbone_id": vision_backbone_id
        or ("dinosiglip-vit-so-224px" if fused else "siglip-vit-so400m"),
        "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+fused-gelu-mlp" if fused else "no-align+gelu-mlp",
        "use_fused_vision_backbone": fused,
        "image_resize_strategy": "resize-naive",
        "image_sizes": [image_size] * len(towers),
        "timm_model_ids": [t.timm_id for t in towers],
        "timm_override_act_layers": [None] * len(towers),
        "llm_max_length": 2048,
        "pad_token_id": LLAMA_PAD,
        "pad_to_multiple_of": PAD_TO_MULTIPLE_OF,
        "n_action_bins": N_ACTION_BINS,
        "norm_stats": stats,
        "output_projector_states": False,
        "torch_dtype": dname,
        "transformers_version": "4.40.1",
        "text_config": {
            "model_type": "llama",
            "hidden_size": llm_cfg["hidden"],
            "intermediate_size": llm_cfg["intermediate"],
            "num_hidden_layers": llm_cfg["layers"],
            "num_attention_heads": llm_cfg["heads"],
            "num_key_value_heads": llm_cfg["kv_heads"],
            "max_position_embeddings": 2048,
            "rms_norm_eps": llm_cfg["rms_norm_eps"],
            "rope_theta": llm_cfg["rope_theta"],
            "vocab_size": llm_cfg["vocab_size"],
            "pad_token_id": LLAMA_PAD,
            "torch_dtype": dname,
        },
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "dataset_statistics.json").write_text(json.dumps(stats, indent=2) + "\n")

    if preprocessor:
        pre_cfg = {
            "image_processor_type": "PrismaticImageProcessor",
            "processor_class": "PrismaticProcessor",
            "use_fused_vision_backbone": fused,
            "image_resize_strategy": "resize-naive",
            "input_sizes": [[3, image_size, image_size] for _ in towers],
            "interpolations": ["bicubic" for _ in towers],
            "means": [list(t.mean) for t in towers],
            "stds": [list(t.std) for t in towers],
        }
        (directory / "preprocessor_config.json").write_text(json.dumps(pre_cfg, indent=2) + "\n")
    if tokenizer:
        write_tokenizer(directory / "tokenizer.json")

    return RefModel(
        state={k: v.float() for k, v in tensors.items()},
        config=config,
        towers=towers,
        image_size=image_size,
        llm=llm_cfg,
        dataset_statistics=copy.deepcopy(stats),
        directory=directory,
    )
