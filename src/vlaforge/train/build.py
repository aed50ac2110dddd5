"""Building the policy a run trains, and rebuilding it from a checkpoint.

Four starting points (`TrainConfig.preset` / `init`): a preset trained from scratch, a vlaforge policy
directory, an OpenVLA checkpoint (its backbone under a fresh head for the run's robot), or a LeRobot pi0 /
SmolVLA checkpoint (the whole family model continues, `vlaforge.models.family`). Then, for
QLoRA, the backbone is quantised on the training device (`vlaforge.train.qlora`), and freezing or LoRA is
applied (`vlaforge.train.finetune`, the OpenVLA paper's strategies). A LoRA checkpoint holds the trained
tensors only, so resuming or `restore_policy` rebuilds the frozen base and checks its fingerprint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from vlaforge.errors import InputError
from vlaforge.models.quantize import is_quantized_layer
from vlaforge.models.registry import HEADS
from vlaforge.policy_files import WEIGHTS_FILE, PolicyFiles, read_policy_dir
from vlaforge.train import checkpoint as ckpt
from vlaforge.train.config import TrainConfig
from vlaforge.train.finetune import apply_freeze, apply_lora, freeze_unused
from vlaforge.train.qlora import quantize_base, upcast_adapters


def build_policy(
    cfg: TrainConfig,
    embodiment: Any,
    norm_stats: Any,
    device: torch.device | str = "cpu",
    say: Callable[[str], None] | None = None,
) -> tuple[nn.Module, dict[str, int]]:
    """The policy of this run, with freezing or LoRA applied; returns it and its parameter counts.

    `say` (the training log's printer) gets one line on what a policy directory's weights initialised.

    Under ``cfg.quantize`` (QLoRA) the pretrained backbone is quantised on `device`, the training device,
    before LoRA wraps its layers (`vlaforge.train.qlora`); the rest of the policy stays where it was built.
    """
    from vlaforge.models import openvla
    from vlaforge.models.formats import lerobot as lerobot_format
    from vlaforge.models.policy import Policy
    from vlaforge.models.presets import Preset

    init = cfg.init if cfg.init is not None else cfg.preset
    init_dir = Path(init)
    from_lerobot = cfg.init is not None and lerobot_format.detect(init)
    from_openvla = (
        cfg.init is not None
        and not from_lerobot
        and (openvla.is_openvla_dir(init_dir) or openvla.is_hub_id(init))
    )
    if cfg.keypoints and (from_lerobot or from_openvla):
        raise InputError(
            f"--keypoints {cfg.keypoints}: keypoint tokens are built into vlaforge's Prismatic backbone; "
            f"{init} is an OpenVLA or LeRobot checkpoint (train from a preset or a vlaforge policy directory)"
        )
    if from_lerobot:
        policy = _from_lerobot(cfg, embodiment, norm_stats)
    elif from_openvla:
        # An OpenVLA checkpoint: its backbone (memory-mapped, no second copy) under a fresh head for
        # this dataset's embodiment; float32 weights train; a base quantised on CUDA keeps its dtype
        # (bfloat16 for openvla-7b), which autocast computes in.
        on_cuda = torch.device(device).type == "cuda"
        src = openvla.load_openvla(init, dtype=None if cfg.quantize and on_cuda else torch.float32)
        preset = src.preset
        overrides = {"chunk_size": cfg.chunk_size} if cfg.chunk_size else {}
        if cfg.history:
            overrides["history"] = cfg.history
        spec = HEADS[cfg.head]
        if spec.default_chunk is not None and not cfg.chunk_size:
            overrides["chunk_size"] = spec.default_chunk
        preset = preset.with_overrides(**overrides)
        policy = Policy(
            preset,
            {"kind": cfg.head, "chunk_size": preset.chunk_size, **cfg.head_options},
            embodiment,
            norm_stats,
            backbone=src.backbone,
        )
        policy.openvla_source = {"config": src.openvla_source["config"]}
    elif init_dir.is_dir():
        init_files = read_policy_dir(init_dir)
        same_dims = (init_files.embodiment.action_dim, init_files.embodiment.state_dim) == (
            embodiment.action_dim,
            embodiment.state_dim,
        )
        if cfg.init_head and same_dims:
            # The whole policy continues, and so does the scale its head and state projection learned in:
            # the new data's own statistics would move every state it reads and every action it predicts
            # (measured: DAgger's roll-outs widened the states' q01-q99 range, and that alone took an MT10
            # policy from 21 to 8 of 80 held-out episodes). Other dims: `_whole_policy` says which flags.
            norm_stats = init_files.norm_stats
        preset = Preset.from_dict(init_files.preset)
        if preset.tokenizer == "llama":
            preset = preset.with_overrides(tokenizer_path=str(init_dir))
        policy = Policy.from_preset(
            preset,
            cfg.head,
            embodiment,
            norm_stats,
            chunk_size=cfg.chunk_size,
            history=cfg.history,
            keypoints=cfg.keypoints,
            **cfg.head_options,
        )
        weights = load_file(str(init_files.weights))
        parts = ("backbone.vision.", "backbone.projector.", "backbone.llm.")
        own = policy.state_dict()
        wanted = {k for k in own if k.startswith(parts)}
        # A keypoint encoder continues tensor by tensor where the directory's policy has the same shape
        # (all of it for the same --keypoints; another K changes only the last conv and the projection).
        wanted |= {
            k
            for k in own
            if k.startswith("backbone.keypoints.") and k in weights and weights[k].shape == own[k].shape
        }
        if cfg.init_head:  # the whole policy continues (DAgger): every tensor, same shapes
            wanted = _whole_policy(policy, weights, init_files)
        missing = sorted(wanted - set(weights))
        if missing:
            raise InputError(f"{init_files.weights}: backbone weights missing, e.g. {missing[:3]}")
        policy.load_state_dict({k: weights[k] for k in wanted}, strict=False)
        if say is not None and cfg.init_head:
            say(
                f"vlaforge train: initialised from {init_dir}: the whole policy (backbone and action head) "
                "and its normalisation statistics"
            )
        elif say is not None:
            say(init_line(init_dir, init_files.embodiment.action_dim, embodiment.action_dim))
    elif cfg.init is not None:
        raise InputError(f"--init {init}: no such directory (an OpenVLA or vlaforge checkpoint, or a hub id)")
    else:
        policy = Policy.from_preset(
            cfg.preset,
            cfg.head,
            embodiment,
            norm_stats,
            chunk_size=cfg.chunk_size,
            history=cfg.history,
            keypoints=cfg.keypoints,
            tokenizer_path=cfg.tokenizer_path,
            **cfg.head_options,
        )
    if cfg.quantize is not None:
        quantize_base(policy, cfg.quantize, torch.device(device))
    if cfg.lora_rank > 0:
        counts = apply_lora(policy, cfg.lora_rank, cfg.lora_alpha, dropout=0.0, strategy=cfg.freeze)
    else:
        counts = apply_freeze(policy, cfg.freeze)
    if cfg.quantize is not None:
        upcast_adapters(policy)
    counts["never_used"] = freeze_unused(policy)
    return policy, counts


def _whole_policy(policy: nn.Module, weights: dict[str, torch.Tensor], init_files: PolicyFiles) -> set[str]:
    """The names of every tensor of `policy`, checked against the weights of the policy directory
    `init_files` (`init_head`); a mismatch names the flags that rebuild the directory's policy."""
    own = policy.state_dict()
    missing = sorted(set(own) - set(weights))
    wrong = sorted(k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape))
    if missing or wrong:
        detail = f"missing {missing[:3]}" if missing else f"other shapes for {wrong[:3]}"
        config, preset = init_files.config, init_files.preset
        head = config.get("head", {}).get("kind", "?")
        flags = f"--head {head} --chunk-size {preset.get('chunk_size', '?')} --history {preset.get('history', '?')}"
        emb = init_files.embodiment
        raise InputError(
            f"--init-head: {init_files.root} does not hold this run's policy ({detail}); its policy was "
            f"built with {flags} on data of action dim {emb.action_dim} and state dim {emb.state_dim}: "
            "give the same flags, on data of those dims"
        )
    return set(own)


def init_line(init_dir: Path, init_dim: int, dim: int) -> str:
    """What a run from a vlaforge policy directory keeps: the backbone; the action head is always new (and
    so is the state projection), and the line says why (e.g. after pre-training on latent actions)."""
    if init_dim != dim:
        why = f"its action dim {init_dim} differs from this dataset's {dim}"
    else:
        why = f"same action dim {dim}, but a new dataset brings its own action statistics"
    return (
        f"vlaforge train: initialised from {init_dir}: backbone (vision, projector, LLM) weights loaded; "
        f"action head and state projection re-initialised ({why})"
    )


def _from_lerobot(cfg: TrainConfig, embodiment: Any, norm_stats: Any) -> nn.Module:
    """A LeRobot pi0 / SmolVLA checkpoint as the run's policy: the whole model continues (weights
    memory-mapped, assigned to a model built on the meta device, trained in float32) for the dataset's
    robot (cameras fill the family's image slots in order; state and actions are padded to its
    max_state_dim / max_action_dim), normalised with the dataset's statistics as LeRobot fine-tunes."""
    from vlaforge.models.formats import lerobot as lerobot_format
    from vlaforge.models.formats.base import parameters_on_meta, retie, tied_groups
    from vlaforge.models.policy import Policy

    bundle = lerobot_format.read(cfg.init, dtype=torch.float32, tokenizer=cfg.tokenizer_path)
    preset = bundle.preset
    if cfg.chunk_size and cfg.chunk_size != preset.chunk_size:
        family = dict(preset.family, config={**preset.family["config"], "chunk_size": cfg.chunk_size})
        family["config"]["n_action_steps"] = min(
            int(family["config"].get("n_action_steps", 50)), cfg.chunk_size
        )
        preset = preset.with_overrides(chunk_size=cfg.chunk_size, family=family)
    # As LeRobot fine-tunes, and as `--init` from any other checkpoint: the dataset's own statistics (the
    # checkpoint's describe the robots it was trained on).
    theirs = bundle.norm_stats
    source = bundle.extras["lerobot"]
    stats = norm_stats
    have = f"action {theirs['action'].dim}" + (
        f", state {theirs['observation.state'].dim}" if "observation.state" in theirs else ""
    )
    print(
        f"vlaforge train: {cfg.init}: normalising with the dataset's statistics (action {embodiment.action_dim}, "
        f"state {embodiment.state_dim}) in place of the checkpoint's ({have})"
    )
    if cfg.head != "chunk":
        print(
            f"vlaforge train: --head does not apply to {preset.family['type']}: its own action expert trains"
        )
    with parameters_on_meta():
        policy = Policy(preset, bundle.head, embodiment, stats, "mean_std")
    ties = tied_groups(policy)
    policy.load_state_dict(bundle.tensors(policy.state_dict(keep_vars=True)), strict=True, assign=True)
    retie(policy, ties)
    policy._keep_alive = bundle.keep_alive
    policy.lerobot_source = source
    return policy


def restore_policy(checkpoint: str | Path, device: str = "cpu") -> nn.Module:
    """The policy exactly as training holds it at a checkpoint (LoRA layers still injected).

    ``Policy.from_pretrained(checkpoint)`` gives the merged, plain policy for evaluation and serving;
    this rebuilds the training-time module (base + adapters, frozen flags) from the run's config, the
    checkpoint's embodiment and statistics, and its trained tensors.

    Args:
        checkpoint: a checkpoint directory (``RUN/last`` or ``RUN/checkpoints/step-XXXXXXX``).
        device: where to put the policy (a QLoRA base is quantised there, as in training).
    """
    checkpoint = Path(checkpoint).resolve()
    if not ckpt.is_complete(checkpoint):
        raise InputError(f"{checkpoint}: not a complete training checkpoint (no {ckpt.TRAINER_STATE})")
    state = ckpt.read_trainer_state(checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    files = read_policy_dir(checkpoint)
    ckpt.seed_everything(cfg.seed)
    policy, _ = build_policy(cfg, files.embodiment, files.norm_stats, device)
    policy.set_dataset_stats(files.dataset_stats)
    if frozen_fingerprint(policy) != state.get("frozen_fingerprint"):
        raise InputError(
            f"{checkpoint}: the rebuilt frozen weights differ from the run's (same preset and seed?)"
        )
    load_trainable(policy, checkpoint, [n for n, p in policy.named_parameters() if p.requires_grad])
    return policy.to(device)


def load_trainable(policy: nn.Module, ckpt_dir: Path, param_names: list[str]) -> None:
    """Restores the trained tensors of a checkpoint into a freshly built policy."""
    adapter = ckpt_dir / ckpt.ADAPTER_FILE
    if adapter.is_file():  # LoRA: the base is rebuilt (and fingerprint-checked), adapters + head loaded
        tensors = load_file(str(adapter))
        if sorted(tensors) != sorted(param_names):
            raise InputError(f"{adapter}: holds {len(tensors)} tensors, this run trains {len(param_names)}")
        missing, unexpected = policy.load_state_dict(tensors, strict=False)
        if unexpected:
            raise InputError(f"{adapter}: unexpected tensors {unexpected[:5]}")
        return
    weights = load_file(str(ckpt_dir / WEIGHTS_FILE))
    policy.load_state_dict(weights, strict=True)


def fingerprint(tensors: list[torch.Tensor]) -> str:
    """A cheap content hash of tensors: sha256 over their float64 sums and sums of squares."""
    if not tensors:
        return "empty"
    with torch.no_grad():
        stats = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors])
    return hashlib.sha256(stats.cpu().numpy().tobytes()).hexdigest()[:16]


def frozen_fingerprint(policy: nn.Module) -> str:
    """The fingerprint of the frozen parameters a resumed run must rebuild identically. Quantised layers'
    own tensors are left out: they are derived from the base weights by the backend of the device, so a
    QLoRA run restores on another device (bitsandbytes on CUDA, the portable kernels on the CPU)."""
    quantised = {id(p) for m in policy.modules() if is_quantized_layer(m) for p in m.parameters()}
    return fingerprint([p for p in policy.parameters() if not p.requires_grad and id(p) not in quantised])
