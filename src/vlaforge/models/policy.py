"""`Policy`: the one model class for training, evaluation and serving.

Policy = embodiment + norm stats + Prismatic backbone + action head. OpenVLA keeps separate training and
Hugging Face classes with a converter between them, its users' most common trap; here the class that trains
is the class that serves. It is saved and loaded through the checkpoint formats of
`vlaforge.models.formats` (vlaforge's own directory, OpenVLA's layout). Actions are normalised inside the
policy (q99 by default, as OpenVLA), so callers speak robot units both ways; predictions are clipped to the
embodiment's limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlaforge.actions import BinTokenizer, Normalizer
from vlaforge.errors import InputError
from vlaforge.models.backbone import PrismaticBackbone
from vlaforge.models.formats import Bundle, detect_format, get_format, write_bundle
from vlaforge.models.formats.base import as_dtype, parameters_on_meta, retie, tied_groups
from vlaforge.models.formats.vlaforge import policy_config
from vlaforge.models.heads import Context, HeadDims, check_bins_fit
from vlaforge.models.presets import Preset, get_preset
from vlaforge.models.processor import Processor
from vlaforge.models.registry import build_head, fit_preset, get_head_spec
from vlaforge.models.text import build_text_tokenizer, reserved_ids
from vlaforge.policy_files import validate_dataset_stats
from vlaforge.types import Embodiment, NormStats, Observation

POLICY_OPTIONS = ("norm_mode",)


def _as_tensor(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)


class Policy(nn.Module):
    """A VLA policy. Build with `from_preset` or `from_pretrained`.

    Attributes:
        config: JSON-able description that rebuilds the model (preset, head, embodiment, tokenizer).
        embodiment: the robot this policy drives.
        norm_stats: the statistics actions (and state) are normalised with.
        backbone: `PrismaticBackbone` with `.vision`, `.projector`, `.llm` (names freezing strategies use).
        head: the `ActionHead`.
    """

    def __init__(
        self,
        preset: Preset,
        head_config: Mapping[str, Any],
        embodiment: Embodiment,
        norm_stats: NormStats,
        norm_mode: str = "q99",
        backbone: PrismaticBackbone | None = None,
    ):
        super().__init__()
        norm_stats.validate(embodiment)
        self.embodiment, self.norm_stats, self.preset = embodiment, norm_stats, preset
        if preset.family is not None:
            self._init_family(preset, embodiment, backbone)
        else:
            self._init_prismatic(preset, head_config, embodiment, backbone)
        self.norm_mode = norm_mode
        mask = self._action_mask()
        self.action_norm = Normalizer(norm_stats["action"], mode=norm_mode, mask=mask)
        self.uses_state = bool(preset.use_state and embodiment.state_dim)
        self.state_norm = (
            Normalizer(norm_stats["observation.state"], mode=norm_mode) if self.uses_state else None
        )
        self._low = np.asarray(embodiment.action_low, dtype=np.float32)
        self._high = np.asarray(embodiment.action_high, dtype=np.float32)
        self._prompt_cache: dict[str, list[int]] = {}
        # Trained on a mixture: each dataset's own statistics, by key (`set_dataset_stats`).
        self.dataset_stats: dict[str, NormStats] = {}
        self._dataset_norms: dict[str, tuple[Normalizer, Normalizer | None]] = {}
        # Where the weights were trained (dataset path, and per episode its task and seed for simulation
        # datasets); saved in config.json so evaluation can refuse scenes seen in training.
        self.training_data: dict[str, Any] | None = None
        # An imported OpenVLA checkpoint's config.json and dataset_statistics.json, written back by
        # `save_pretrained(format="openvla")` (`vlaforge.models.openvla`).
        self.openvla_source: dict[str, Any] | None = None
        # An imported LeRobot checkpoint's processor files and statistics tensors, written back as they
        # were by `save_pretrained(format="lerobot")` while they still describe the policy.
        self.lerobot_source: dict[str, Any] | None = None

    def _init_prismatic(
        self,
        preset: Preset,
        head_config: Mapping[str, Any],
        embodiment: Embodiment,
        backbone: PrismaticBackbone | None,
    ) -> None:
        """The Prismatic backbone (vision towers, projector, LLM) and the registered head."""
        self.text = build_text_tokenizer(
            preset.tokenizer, preset.llm.vocab_size, preset.tokenizer_path, preset.prompt
        )
        self.bins = BinTokenizer(preset.action_vocab_size, preset.n_bins)
        check_bins_fit(self.bins, preset.llm.vocab_size)
        if backbone is None and preset.vlm is not None:
            from vlaforge.models.hf_vlm import HFVLMBackbone

            backbone = HFVLMBackbone(preset, embodiment.state_dim, self.text.bos_id, self.text.pad_id)
        elif backbone is None:
            backbone = PrismaticBackbone(preset, embodiment.state_dim, self.text.bos_id, self.text.pad_id)
        elif backbone.state_dim and backbone.state_dim != embodiment.state_dim:
            raise InputError(
                f"the given backbone projects a state of dim {backbone.state_dim}; the embodiment has {embodiment.state_dim}"
            )
        self.backbone = backbone
        head_config = dict(head_config)
        spec = get_head_spec(head_config.pop("kind"))
        dims = HeadDims(
            action_dim=embodiment.action_dim,
            chunk_size=int(head_config.pop("chunk_size")),
            hidden_size=preset.llm.hidden_size,
            bins=self.bins,
            eos_id=self.text.eos_id,
            llm=preset.llm,
            reserved_ids=reserved_ids(preset.tokenizer),
        )
        # A saved head config also holds derived values (action_dim, bins, ...): only options are passed.
        options = {o.name: head_config[o.name] for o in spec.options if o.name in head_config}
        self.head = build_head(spec.name, dims, options)

    def _init_family(self, preset: Preset, embodiment: Embodiment, backbone: Any) -> None:
        """A pretrained family (pi0, SmolVLA; `vlaforge.models.family`) in the backbone and head roles."""
        from vlaforge.models.family import FamilyBackbone, FamilyHead, HFTokenizer, get_family

        kind, config = preset.family["type"], preset.family["config"]
        self.text = HFTokenizer(preset.tokenizer_path, get_family(kind).tokenizer_hint)
        self.bins = None
        self.backbone = backbone if backbone is not None else FamilyBackbone(kind, config)
        self.head = FamilyHead(kind, config, embodiment.action_dim, self.text)

    def _action_mask(self) -> np.ndarray:
        """The action dims normalisation applies to: the embodiment's mask, or every dim for a family
        (LeRobot's MEAN_STD has no mask, so an exported policy normalises as LeRobot will)."""
        if self.family is not None:
            return np.ones(self.embodiment.action_dim, dtype=bool)
        return np.asarray(self.embodiment.normalize_mask, dtype=bool)

    @property
    def family(self) -> str | None:
        """The pretrained family this policy is ("pi0", "smolvla"), None for a Prismatic model."""
        return None if self.preset.family is None else str(self.preset.family["type"])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(
        cls, preset: str | Preset, head: str, embodiment: Embodiment, norm_stats: NormStats, **overrides: Any
    ) -> Policy:
        """A freshly initialised policy.

        Args:
            preset: a preset name ("tiny", "openvla-7b", "openvla-7b-siglip") or a `Preset`.
            head: a registered head (`vlaforge.models.registry.HEADS`: "tokens", "chunk", ...).
            embodiment: the robot.
            norm_stats: statistics with "action" (and "observation.state" when the robot has a state).
            **overrides: preset fields (chunk_size, use_state, tokenizer, tokenizer_path, llm, ...), the
                head's options (e.g. bidirectional) or norm_mode. None values mean "keep the default". The
                chunk size defaults to the head's registered default (tokens: 1, as OpenVLA), else the
                preset's.
        """
        p = get_preset(preset) if isinstance(preset, str) else preset
        spec = get_head_spec(head)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        head_opts = {o.name: overrides.pop(o.name) for o in spec.options if o.name in overrides}
        norm_mode = overrides.pop("norm_mode", "q99")
        if spec.default_chunk is not None and "chunk_size" not in overrides:
            overrides["chunk_size"] = spec.default_chunk
        p = p.with_overrides(**overrides)
        p = fit_preset(head, p, head_opts)
        return cls(
            p, {"kind": head, "chunk_size": p.chunk_size, **head_opts}, embodiment, norm_stats, norm_mode
        )

    @property
    def config(self) -> dict[str, Any]:
        """config.json of the vlaforge format (`vlaforge.models.formats.vlaforge.policy_config`)."""
        return policy_config(self.to_bundle(with_state=False))

    def unused_parameter_names(self) -> list[str]:
        """Names of the parameters whose outputs never reach this policy's loss or predictions: the
        vision towers' unused tail (`VisionFeaturizer.unused_parameters`), for heads that do not decode
        tokens the LLM's output layer, and what of the head only RL trains (`untrained_parameters`, which
        predictions do read). Training keeps them frozen, so every trainable parameter gets a
        gradient at every step (and DDP needs no `find_unused_parameters`). LoRA adapters injected inside
        these modules are included."""
        if self.family is not None:
            modules = self.head.unused_backbone_modules(self.backbone)
            unused_ids = {id(p) for m in modules for p in m.parameters()}
            within = {id(sub) for m in modules for sub in m.modules()}
            # A tied output layer (PaliGemma's lm_head is its token embedding) is still read as embeddings.
            read = {
                id(p)
                for m in self.modules(remove_duplicate=False)
                if id(m) not in within
                for p in m.parameters(recurse=False)
            }
            unused_ids -= read
            return [n for n, p in self.named_parameters() if id(p) in unused_ids]
        vision_unused = getattr(self.backbone, "unused_vision_parameters", None)  # a transformers VLM's
        unused = list(vision_unused() if vision_unused else self.backbone.vision.unused_parameters())
        if not self.head.uses_lm_head:
            used = {id(p) for p in self.backbone.llm.get_input_embeddings().parameters()}  # tied: still read
            unused += [p for p in self.backbone.llm.get_output_embeddings().parameters() if id(p) not in used]
        for module in self.head.unused_backbone_modules(self.backbone):
            unused += list(module.parameters())
        unused += self.head.untrained_parameters()
        unused_ids = {id(p) for p in unused}  # module.parameters() recurses, so adapters are included
        return [n for n, p in self.named_parameters() if id(p) in unused_ids]

    @property
    def execute_steps(self) -> int:
        """The head's natural open-loop length (token head 1 by default, chunk head H)."""
        return self.head.execute_steps

    @property
    def chunk_size(self) -> int:
        return self.head.chunk_size

    @property
    def history(self) -> int:
        """T, the observations each prediction reads (the current one and the T - 1 before it)."""
        return self.preset.history

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ per-dataset statistics
    def set_dataset_stats(self, stats: Mapping[str, NormStats] | None) -> None:
        """Per training dataset of a mixture, its own statistics: training normalises every sample with
        its dataset's (the batch's "dataset" keys), and inference un-normalises with the `unnorm_key`
        asked for, as OpenVLA's `dataset_statistics.json`. None or {} keeps the one set of `norm_stats`.

        Each dataset's actions are (un-)normalised with its own action mask when its statistics carry one
        (OpenVLA applies each `unnorm_key`'s mask), else with the embodiment's `normalize_mask`."""
        self.dataset_stats, self._dataset_norms = {}, {}
        default = self._action_mask()
        for key, ns in (stats or {}).items():
            validate_dataset_stats(ns, self.embodiment, where=f"statistics of dataset {key!r}")
            own = ns["action"].mask
            mask = default if own is None or self.family is not None else own
            state = Normalizer(ns["observation.state"], mode=self.norm_mode) if self.uses_state else None
            self.dataset_stats[key] = ns
            self._dataset_norms[key] = (Normalizer(ns["action"], mode=self.norm_mode, mask=mask), state)

    @property
    def unnorm_keys(self) -> list[str]:
        """The datasets whose statistics this policy holds (empty: one set, `norm_stats`)."""
        return list(self.dataset_stats)

    def _norms_for(self, key: str | None) -> tuple[Normalizer, Normalizer | None]:
        """(action, state) normalisers for `unnorm_key` `key` (None: the policy's only set)."""
        if not self._dataset_norms:
            if key is not None:
                raise InputError(
                    f"unnorm_key {key!r}: this policy was trained on one dataset and has one set of statistics; "
                    "pass no unnorm_key"
                )
            return self.action_norm, self.state_norm
        if key is None:
            if len(self._dataset_norms) == 1:
                return next(iter(self._dataset_norms.values()))
            raise InputError(
                f"this policy was trained on {len(self._dataset_norms)} datasets; pass unnorm_key, one of "
                f"{self.unnorm_keys}"
            )
        if key not in self._dataset_norms:
            raise InputError(f"unnorm_key {key!r} is not one of this policy's datasets {self.unnorm_keys}")
        return self._dataset_norms[key]

    def _per_key(self, keys: list[str | None], x: np.ndarray, which: int, fn: str) -> np.ndarray:
        """Applies normaliser `which` (0 action, 1 state) method `fn` to each sample with its key's stats."""
        out = np.empty(x.shape, dtype=np.float32)
        for key in dict.fromkeys(keys):
            sel = np.asarray([k == key for k in keys])
            out[sel] = getattr(self._norms_for(key)[which], fn)(x[sel])
        return out

    # ------------------------------------------------------------------ inputs
    def _prompts(self, instructions: list[str]) -> list[list[int]]:
        out = []
        for text in instructions:
            ids = self._prompt_cache.get(text)
            if ids is None:
                ids = self.text.encode_prompt(text)
                if len(self._prompt_cache) < 10_000:
                    self._prompt_cache[text] = ids
            out.append(ids)
        return out

    def _context(
        self, images: Mapping[str, Any], state: Any, instructions: Any, keys: list[str | None] | None = None
    ) -> Context:
        device = self.device
        missing = [c for c in self.embodiment.camera_names if c not in images]
        if missing:
            raise InputError(
                f"observation lacks camera(s) {missing}; this policy reads {self.embodiment.camera_names} "
                f"and got {sorted(images)}"
            )
        imgs = [_as_tensor(images[c], device) for c in self.embodiment.camera_names]
        B, T = imgs[0].shape[0], self.history
        want = f"({B}, H, W, 3)" if T == 1 else f"({B}, {T}, H, W, 3) (history {T}, oldest first)"
        for c, img in zip(self.embodiment.camera_names, imgs):
            ok_shape = img.ndim == 4 if T == 1 else (img.ndim == 5 and img.shape[1] == T)
            if img.dtype != torch.uint8 or not ok_shape or img.shape[-1] != 3 or img.shape[0] != B:
                raise InputError(f"camera {c!r}: expected uint8 {want}, got {img.dtype} {tuple(img.shape)}")
        if isinstance(instructions, str):
            instructions = [instructions] * B
        instructions = list(instructions)
        if len(instructions) != B:
            raise InputError(f"{len(instructions)} instructions for a batch of {B} images")
        state_t = None
        if self.uses_state:
            S = self.embodiment.state_dim
            if state is None:
                raise InputError(f"this policy needs a state of dim {S}; the observation has none")
            st = state.detach().cpu().numpy() if isinstance(state, torch.Tensor) else np.asarray(state)
            expect = (B, S) if T == 1 else (B, T, S)
            if st.shape != expect:
                raise InputError(
                    f"state has shape {st.shape}; this policy expects {expect} (state_dim {S}, history {T})"
                )
            norm = self._per_key(keys or [None] * B, st, 1, "normalize")  # (B, S) or (B, T, S)
            state_t = _as_tensor(norm.reshape(B, -1), device)  # the T states of a sample, oldest first
        return Context(images=imgs, state=state_t, prompt_ids=self._prompts(instructions))

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and metrics on a training batch (README "Training batch"; actions in robot units).

        Returns:
            (scalar loss tensor, {metric: detached scalar tensor on the policy's device}); metrics: `loss`,
            `l1` for every head, `token_acc` for tokens. Nothing is read back to the host here.
        """
        keys = self._batch_keys(batch)
        ctx = self._context(batch["images"], batch.get("state"), batch["instruction"], keys)
        actions = batch["actions"]
        a = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        B, H = ctx.batch_size, self.head.chunk_size
        D = self.embodiment.action_dim
        if a.ndim != 3 or a.shape[0] != B or a.shape[1] < H or a.shape[2] != D:
            raise InputError(
                f"actions have shape {a.shape}; this policy needs ({B}, >= {H}, {D}) (chunk_size {H})"
            )
        a = a[:, :H]
        if not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0].tolist()
            raise InputError(f"the batch has non-finite actions (first at [sample, step, dim] = {bad})")
        pad = batch.get("action_pad")
        pad = (
            torch.zeros(B, H, dtype=torch.bool)
            if pad is None
            else _as_tensor(pad, torch.device("cpu"))[:, :H]
        )
        target = _as_tensor(self._per_key(keys, a, 0, "normalize"), self.device)
        loss, metrics = self.head.loss(self.backbone, ctx, target, pad.to(self.device, torch.bool))
        return loss, {"loss": loss.detach(), **metrics}

    def _batch_keys(self, batch: Mapping[str, Any]) -> list[str | None]:
        """The batch's per-sample dataset keys (a mixture's); [None] * B for a single dataset."""
        B = len(batch["instruction"]) if not isinstance(batch["instruction"], str) else 1
        keys = batch.get("dataset")
        if keys is None or not self._dataset_norms:
            return [None] * B
        if isinstance(keys, str):
            keys = [keys] * B
        if len(keys) != B:
            raise InputError(f"the batch has {len(keys)} dataset keys for {B} samples")
        return list(keys)

    # ------------------------------------------------------------------ inference
    def predict_action_batch(
        self,
        batch: Mapping[str, Any],
        *,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
        unnorm_key: str | None = None,
    ) -> np.ndarray:
        """Batched observations -> action chunks (B, H, D) float32 in robot units, clipped to the limits.

        Args:
            batch: `{"images": {camera: uint8 (B, h, w, 3)}, "state": (B, S), "instruction": [B strings]}`.
            generator: random stream of a stochastic head (reproducible samples); ignored by the others.
            num_steps: steps of an iterative head (flow / diffusion; None: its default); ignored by the others.
            unnorm_key: the training dataset whose statistics un-normalise the actions (a policy trained on a
                mixture: required when it holds several, see `unnorm_keys`).
        """

        def context() -> Context:
            instr = batch.get("instruction", "")
            n = len(next(iter(batch["images"].values()))) if batch.get("images") else 1
            return self._context(batch["images"], batch.get("state"), instr, [unnorm_key] * n)

        return self._predict(context, unnorm_key, generator, num_steps)

    def _predict(
        self, context: Any, unnorm_key: str | None, generator: Any, num_steps: int | None
    ) -> np.ndarray:
        """(B, H, D) float32 actions in robot units: the head on the context `context()` builds (in inference
        mode), un-normalised with `unnorm_key`'s statistics and clipped to the limits."""
        action_norm, _ = self._norms_for(unnorm_key)  # a bad key fails before any compute
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                norm = self.head.predict(self.backbone, context(), generator=generator, num_steps=num_steps)
                norm = norm.float().cpu().numpy()  # (B, H, D)
        finally:
            self.train(was_training)
        return np.clip(action_norm.unnormalize(norm), self._low, self._high).astype(np.float32)

    def predict_action(
        self,
        obs: Observation | Mapping[str, Any] | None = None,
        *,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
        unnorm_key: str | None = None,
        input_ids: Any = None,
        attention_mask: Any = None,
        pixel_values: Any = None,
        do_sample: bool = False,
    ) -> np.ndarray:
        """One observation -> action chunk (H, D) float32 in robot units.

        Two forms:

        - `predict_action({"images": {camera: uint8 (h, w, 3)}, "state": (S,), "instruction": str})`;
          for a one-camera policy `"images"` may be the image itself.
        - OpenVLA's: `predict_action(**policy.processor(prompt, image), unnorm_key=...)`, i.e. `input_ids`
          (B, T) starting with BOS (left-padded with `attention_mask` in a batch) and `pixel_values`
          (B, 3 * n_towers, S, S). As in OpenVLA, token 29871 is appended to a Llama prompt that does not
          end with it, and the result is (D,) for one prompt of a one-step head ((B, D) for a batch; a
          chunk head keeps its H axis). Unlike OpenVLA, batches are allowed and give the same actions as
          one by one.

        Args:
            obs: the observation (first form).
            generator, num_steps, unnorm_key: as in `predict_action_batch`.
            input_ids, attention_mask, pixel_values: the processor's output (second form).
            do_sample: accepted for OpenVLA scripts; only greedy decoding (False) exists.
        """
        if do_sample:
            raise InputError(
                "do_sample=True: vlaforge's token head decodes greedily, as OpenVLA's predict_action"
            )
        if input_ids is not None or pixel_values is not None:
            if obs is not None or input_ids is None or pixel_values is None:
                raise InputError(
                    "the OpenVLA form takes input_ids and pixel_values (the processor's output), and no obs"
                )
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
            return self._predict_openvla_form(inputs, generator, num_steps, unnorm_key)
        if obs is None:
            raise InputError(
                "predict_action needs an observation, or input_ids and pixel_values from policy.processor"
            )
        if isinstance(obs, Mapping) and "images" in obs and not isinstance(obs["images"], Mapping):
            if len(self.embodiment.camera_names) != 1:
                raise InputError(
                    f"'images' is one image but this policy reads {self.embodiment.camera_names}: pass a dict"
                )
            obs = {**obs, "images": {self.embodiment.camera_names[0]: np.asarray(obs["images"])}}
        obs = Observation.from_dict(obs)
        for name, img in obs.images.items():
            if img.ndim != (3 if self.history == 1 else 4):
                want = (
                    "one (H, W, 3) image" if self.history == 1 else f"({self.history}, H, W, 3), oldest first"
                )
                raise InputError(f"image {name!r} has shape {img.shape}; predict_action takes {want}")
        state = None  # its shape is checked in _context
        if obs.state is not None:
            state = obs.state.reshape(1, -1) if self.history == 1 else obs.state[None]
        batch = {"images": {k: v[None] for k, v in obs.images.items()}, "state": state}
        batch["instruction"] = [str(obs.instruction)]
        return self.predict_action_batch(
            batch, generator=generator, num_steps=num_steps, unnorm_key=unnorm_key
        )[0]

    def _openvla_context(self, inputs: Mapping[str, Any]) -> Context:
        """The head's context for OpenVLA's inputs (`input_ids`, `attention_mask`, `pixel_values`): pads and
        the leading BOS dropped (the backbone inserts BOS before the patches), 29871 appended to Llama
        prompts that lack it."""
        from vlaforge.models.text import append_empty_token

        if self.uses_state:
            raise InputError(
                "this policy reads a state, which OpenVLA's input_ids form cannot carry; pass an observation"
            )
        if len(self.embodiment.camera_names) != 1:
            raise InputError(
                f"this policy reads {len(self.embodiment.camera_names)} cameras; the OpenVLA form carries one image"
            )
        ids = torch.as_tensor(inputs["input_ids"]).long().cpu()
        ids = ids[None] if ids.ndim == 1 else ids
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).cpu()
        if mask.shape != ids.shape:
            raise InputError(
                f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}"
            )
        pixels = torch.as_tensor(inputs["pixel_values"])
        pixels = pixels[None] if pixels.ndim == 3 else pixels
        if pixels.shape[0] != ids.shape[0]:
            raise InputError(
                f"{pixels.shape[0]} images (pixel_values) for {ids.shape[0]} prompts (input_ids)"
            )
        prompts = []
        for row, keep in zip(ids.tolist(), mask.bool().tolist()):
            p = [t for t, k in zip(row, keep) if k]
            if p and p[0] == self.text.bos_id:
                p = p[1:]
            if self.text.kind == "llama":
                p = append_empty_token(p)
            prompts.append(p)
        return Context(images=[pixels.to(self.device)], state=None, prompt_ids=prompts)

    def _predict_openvla_form(self, inputs, generator, num_steps, unnorm_key) -> np.ndarray:
        actions = self._predict(lambda: self._openvla_context(inputs), unnorm_key, generator, num_steps)
        if actions.shape[1] == 1:
            actions = actions[:, 0]
        return actions[0] if actions.shape[0] == 1 else actions

    @property
    def processor(self) -> Any:
        """OpenVLA's processor contract: `inputs = policy.processor(prompt, image)`, then
        `policy.predict_action(**inputs, unnorm_key=...)` (`vlaforge.models.processor.Processor`)."""
        return Processor(self)

    # ------------------------------------------------------------------ persistence
    def to_bundle(self, with_state: bool = True) -> Bundle:
        """The policy as a format-neutral `Bundle` (its tensors by reference, not copied; none with
        `with_state=False`, for its description alone)."""
        return Bundle(
            preset=self.preset,
            head=self.head.config(),
            embodiment=self.embodiment,
            norm_stats=self.norm_stats,
            state=self.state_dict(keep_vars=True) if with_state else {},  # tied tensors: one object
            dataset_stats=dict(self.dataset_stats),
            norm_mode=self.norm_mode,
            training_data=self.training_data,
            text=self.text.to_dict(),
            tokenizer_dir=self.text.path if self.text.kind in ("llama", "hf") else None,
            extras={
                k: v for k, v in (("openvla", self.openvla_source), ("lerobot", self.lerobot_source)) if v
            },
        )

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
    ) -> Policy:
        """The policy a format read (`vlaforge.models.formats`), its weights loaded and checked.

        `dtype` is the one the bundle was read with: a model built on the meta device takes the loaded
        tensors as they are (already cast); one built normally copies them into its float32 parameters,
        so it is cast afterwards, buffers included."""
        with parameters_on_meta() if bundle.build_on_meta else nullcontext():
            policy = cls(bundle.preset, bundle.head, bundle.embodiment, bundle.norm_stats, bundle.norm_mode)
        policy.training_data = bundle.training_data
        policy.set_dataset_stats(bundle.dataset_stats)
        policy.openvla_source = bundle.extras.get("openvla")
        policy.lerobot_source = bundle.extras.get("lerobot")
        state = bundle.tensors(policy.state_dict(keep_vars=True))
        ties = tied_groups(policy)
        policy.load_state_dict(state, strict=True, assign=bundle.build_on_meta)
        retie(policy, ties)
        del state
        if bundle.keep_alive is not None:
            policy._keep_alive = bundle.keep_alive  # the memory maps behind its tensors
        if dtype is not None and not bundle.build_on_meta:
            policy = policy.to(as_dtype(dtype))
        return policy.to(device)

    def save_pretrained(self, directory: str | Path, format: str = "vlaforge", **options: Any) -> Path:
        """Writes the policy; the directory is replaced whole and atomically (staged, then swapped in).

        Args:
            directory: a new path, an empty directory or an earlier checkpoint (a symlink is followed).
            format: a row of `vlaforge.models.formats.FORMATS`: "vlaforge" (config.json, model.safetensors,
                norm_stats.json, and tokenizer.json for Llama) or "openvla" (OpenVLA's Hugging Face layout,
                readable by OpenVLA's own code; options `max_shard_bytes` and `unnorm_key`).
        """
        return write_bundle(self.to_bundle(), directory, format, **options)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        quantize: str | None = None,
        format: str | None = None,
        tokenizer: str | Path | None = None,
    ) -> Policy:
        """Loads a policy in any format of `vlaforge.models.formats.FORMATS`: a directory written by
        `save_pretrained`, or an OpenVLA checkpoint (config.json with `model_type: "openvla"`, or a hub id
        such as `openvla/openvla-7b`). Safetensors + JSON only: no pickle, no remote code.

        Args:
            directory: the policy directory, OpenVLA directory or hub id.
            device: where the weights go.
            dtype: the weights' dtype (None: as stored).
            quantize: "int8" or "int4" weight-only quantisation of the backbone's Linear layers
                (`vlaforge.models.quantize`: bitsandbytes on CUDA, portable kernels elsewhere); None keeps
                full precision.
            format: read as this format (None: the one that recognises `directory`).
            tokenizer: a directory with the tokenizer.json of a LeRobot pi0 / SmolVLA checkpoint, which
                carries none (None: the checkpoint directory's own tokenizer.json).

        Raises:
            InputError: a missing directory or file, stats that do not fit the embodiment, or weights that
                do not fit the config (the message names the key and both shapes).
        """
        fmt = get_format(format) if format is not None else detect_format(directory)
        options = {"tokenizer": tokenizer} if tokenizer is not None else {}
        if options and fmt.name != "lerobot":
            raise InputError(
                f"tokenizer= applies to LeRobot checkpoints; {directory} is in format {fmt.name!r}"
            )
        policy = cls.from_bundle(fmt.read(directory, dtype=dtype, **options), device, dtype)
        if quantize is not None:
            from vlaforge.models.quantize import quantize_policy

            quantize_policy(policy, quantize)
        return policy
