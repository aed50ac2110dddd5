"""Pretrained VLA families (pi0, SmolVLA) inside vlaforge's one `Policy`.

A family model (`vlaforge.models.pi0.Pi0Model`, `vlaforge.models.smolvla.SmolVLAModel`) is a whole VLA:
vision tower, language model and flow-matching action expert, with LeRobot's model-level interface
(`forward(images, img_masks, lang_tokens, lang_masks, state, actions, noise, time)` -> per-element loss,
`sample_actions(...)` -> (B, H, max_action_dim)). Here it plays the two roles `Policy` gives a Prismatic
model: `FamilyBackbone` holds the weights (and names the parts freezing strategies act on: `vision`,
`projector`, `llm`, `expert`) and `FamilyHead` turns vlaforge's `Context` (uint8 images per camera,
normalised state, prompt ids) into the family's inputs. A preset with `family` set selects them
(`Policy.__init__`); `vlaforge.models.formats.lerobot` reads and writes LeRobot's checkpoint layout.

What the adapter does, as LeRobot's `PI0Policy` / `SmolVLAPolicy` and their processors do (0.4):
- images: [0, 1], resized with padding to the family's resolution (`_resize_with_pad`), then [-1, 1]; the
  embodiment's cameras fill the family's image slots in order, each with a True mask;
- the instruction ends with a newline and is tokenized (`tokenizer.json`, the `tokenizers` library), right
  padded: to `tokenizer_max_length` (pi0), to the longest prompt of the batch (SmolVLA's default);
- state and actions (normalised MEAN_STD by `Policy`) are zero-padded to `max_state_dim` /
  `max_action_dim`; predictions and the loss keep the embodiment's first D dims.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlaforge.errors import InputError
from vlaforge.lerobot_files import FAMILIES, FamilyRow, get_family, preset_dict

TOKENIZER_FILE = "tokenizer.json"


# Parts of a family model by parameter name, LeRobot's layouts (pi0: `paligemma_with_expert.paligemma...`,
# `.gemma_expert`; SmolVLA: `vlm_with_expert.vlm...`, `.lm_expert`). The rest (state / action / time
# projections) is the action expert's own input and output layers.
VISION_NAMES = ("vision_tower", "vision_model")
PROJECTOR_NAMES = ("multi_modal_projector", "connector")
VLM_NAMES = ("paligemma", "vlm")
EXPERT_NAMES = ("gemma_expert", "lm_expert")


def family_classes(name: str) -> tuple[Any, Any]:
    """(config class, model class) of family `name`."""
    row = get_family(name)
    module = importlib.import_module(row.module)
    return getattr(module, row.config_class), getattr(module, row.model_class)


def family_config(name: str, lerobot_config: dict[str, Any]) -> Any:
    """The family's config object from LeRobot's config.json dict."""
    cfg_cls, _ = family_classes(name)
    return cfg_cls.from_lerobot(dict(lerobot_config))


# ----------------------------------------------------------------------------------------- tokenizer


class HFTokenizer:
    """A `tokenizer.json` read with the `tokenizers` library (special tokens as its post-processor adds
    them, as Hugging Face's fast tokenizers do). LeRobot checkpoints name a hub tokenizer but carry none.

    Args:
        path: a directory holding tokenizer.json (or the file itself).
        hint: the hub tokenizer the family uses, named in the error when the file is missing.
    """

    kind = "hf"

    def __init__(self, path: str | Path | None, hint: str = ""):
        from tokenizers import Tokenizer

        file = None if path is None else (Path(path) if Path(path).is_file() else Path(path) / TOKENIZER_FILE)
        if file is None or not file.is_file():
            where = f"{file}: no such file" if file is not None else "no tokenizer was given"
            raise InputError(
                f"{where}. LeRobot checkpoints do not carry their tokenizer: put its {TOKENIZER_FILE} "
                f"({hint or 'the hub tokenizer the checkpoint names'}) in the checkpoint directory, or pass "
                "its directory (`--tokenizer-path DIR`, `Policy.from_pretrained(..., tokenizer=DIR)`)"
            )
        self.path = str(file.parent)
        self.file = file
        self.tok = Tokenizer.from_file(str(file))
        pad = self.tok.padding["pad_id"] if self.tok.padding else None
        for name in ("<pad>", "[PAD]", "<|endoftext|>"):
            if pad is None:
                pad = self.tok.token_to_id(name)
        self.pad_id = int(pad or 0)
        self.bos_id = self.tok.token_to_id("<bos>") or 0
        self.eos_id = self.tok.token_to_id("<eos>") or 0

    def encode_prompt(self, instruction: str) -> list[int]:
        """The task ending in a newline (LeRobot's `*_new_line_processor`), with the tokenizer's special
        tokens."""
        text = instruction if instruction.endswith("\n") else instruction + "\n"
        return list(self.tok.encode(text).ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}


# ----------------------------------------------------------------------------------------- the model


def _find(model: nn.Module, names: tuple[str, ...], within: str | None = None) -> nn.Module | None:
    """The first (outermost) submodule whose own name is one of `names` (inside a module named `within`)."""
    for full, m in model.named_modules():
        parts = full.split(".")
        if parts[-1] in names and (within is None or within in parts):
            return m
    return None


class FamilyBackbone(nn.Module):
    """The family model (`self.model`, state-dict keys LeRobot's minus the leading `model.`) and the
    parts freezing and LoRA act on. `vision`, `projector`, `llm`, `expert` are properties, not registered
    twice, so the state dict has each tensor once."""

    def __init__(self, family: str, lerobot_config: dict[str, Any]):
        super().__init__()
        self.family = get_family(family)
        self.lerobot_config = dict(lerobot_config)
        _, model_cls = family_classes(family)
        self.model = model_cls(family_config(family, lerobot_config))
        self.state_dim = 0  # the family pads any state to max_state_dim itself

    def _part(self, names: tuple[str, ...], what: str, within: str | None = None) -> nn.Module:
        m = _find(self.model, names, within)
        if m is None:
            raise InputError(f"the {self.family.type} model has no {what} ({' / '.join(names)})")
        return m

    @property
    def vision(self) -> nn.Module:
        """The vision tower (SigLIP)."""
        return self._part(VISION_NAMES, "vision tower")

    @property
    def projector(self) -> nn.Module:
        """Vision features -> language model width (PaliGemma's projector, SmolVLM's connector)."""
        return self._part(PROJECTOR_NAMES, "projector")

    @property
    def llm(self) -> nn.Module:
        """The language model of the VLM (its vision tower and projector excluded)."""
        vlm = self._part(VLM_NAMES, "VLM")
        for name in ("language_model", "text_model"):
            m = _find(vlm, (name,))
            if m is not None:
                return m
        raise InputError(f"the {self.family.type} VLM has no language_model / text_model")

    @property
    def expert(self) -> nn.Module:
        """The action expert's transformer."""
        return self._part(EXPERT_NAMES, "action expert")

    # Policy.unused_parameter_names asks the vision tower for its unused tail; a family uses all of it.
    def unused_modules(self) -> list[nn.Module]:
        """Modules whose outputs never reach the loss: the VLM's and the expert's token output layers."""
        return [m for n, m in self.model.named_modules() if n.split(".")[-1] == "lm_head"]


def _resize_with_pad(img: torch.Tensor, height: int, width: int, family: str) -> torch.Tensor:
    """(B, 3, h, w) in [0, 1] -> (B, 3, height, width), scaled to fit with the aspect kept (bilinear, no
    antialiasing) and padded, exactly as LeRobot 0.4 feeds each family:

    - pi0 (`resize_with_pad_torch`, openpi's): only when the size differs; centred, the odd pixel at the
      bottom / right; padded with -1 although the image is still in [0, 1] at that point, so the padding
      reaches the model as -3 after the [-1, 1] mapping (LeRobot's behaviour, kept for parity);
    - SmolVLA (`resize_with_pad`): always; padded with 0 on the left and top.
    """
    h, w = img.shape[-2:]
    if family == "pi0" and (h, w) == (height, width):
        return img
    ratio = max(w / width, h / height)
    nh, nw = int(h / ratio), int(w / ratio)
    img = F.interpolate(img, size=(nh, nw), mode="bilinear", align_corners=False)
    if family != "pi0":
        return F.pad(img, (max(0, width - nw), 0, max(0, height - nh), 0), value=0.0)
    img = img.clamp(-1.0, 1.0)
    top, left = (height - nh) // 2, (width - nw) // 2
    return F.pad(img, (left, width - nw - left, top, height - nh - top), value=-1.0)


class FamilyHead(nn.Module):
    """vlaforge's head interface over a family model (no parameters of its own).

    Args:
        family: LeRobot's `type`.
        lerobot_config: LeRobot's config.json dict (chunk size, padding dims, resolution, steps).
        action_dim: the embodiment's D (<= max_action_dim).
        text: the family's tokenizer (`HFTokenizer`).
    """

    uses_lm_head = False

    def __init__(self, family: str, lerobot_config: dict[str, Any], action_dim: int, text: HFTokenizer):
        super().__init__()
        row = get_family(family)
        cfg = lerobot_config
        self.kind = row.type
        self.family = row
        self.action_dim = action_dim
        self.chunk_size = int(cfg.get("chunk_size", 50))
        self.n_action_steps = int(cfg.get("n_action_steps", self.chunk_size))
        self.max_action_dim = int(cfg.get("max_action_dim", 32))
        self.max_state_dim = int(cfg.get("max_state_dim", 32))
        self.max_length = int(cfg.get("tokenizer_max_length", 48))
        self.num_steps = int(cfg.get(row.steps_key, 10))
        res = cfg.get(row.resolution_key) or (224, 224)
        # pi0's image_resolution is (height, width); SmolVLA's resize_imgs_with_padding is (width, height).
        self.resolution = (int(res[0]), int(res[1])) if row.type == "pi0" else (int(res[1]), int(res[0]))
        self.pad_to_longest = row.pad_to_longest and cfg.get("pad_language_to", "longest") == "longest"
        self.text = text
        if action_dim > self.max_action_dim:
            raise InputError(
                f"the robot has {action_dim} action dims; the {row.type} model takes at most "
                f"max_action_dim {self.max_action_dim}"
            )

    @property
    def execute_steps(self) -> int:
        return self.n_action_steps

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "chunk_size": self.chunk_size, "action_dim": self.action_dim}

    def unused_backbone_modules(self, backbone: Any) -> list[nn.Module]:
        return backbone.unused_modules()

    # ------------------------------------------------------------------ inputs
    def images(self, ctx: Any, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One float (B, 3, S, S) image in [-1, 1] per camera, and its all-True mask."""
        out, masks = [], []
        H, W = self.resolution
        for img in ctx.images:  # uint8 (B, h, w, 3)
            x = img.to(device).permute(0, 3, 1, 2).float() / 255.0
            x = _resize_with_pad(x, H, W, self.kind)
            out.append(x * 2.0 - 1.0)
            masks.append(torch.ones(x.shape[0], dtype=torch.bool, device=device))
        return out, masks

    def tokens(self, ctx: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ids right-padded (B, L) and their mask."""
        ids = [p[: self.max_length] for p in ctx.prompt_ids]
        L = max(len(p) for p in ids) if self.pad_to_longest else self.max_length
        tokens = torch.full((len(ids), L), self.text.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), L), dtype=torch.bool)
        for i, p in enumerate(ids):
            tokens[i, : len(p)] = torch.tensor(p, dtype=torch.long)
            mask[i, : len(p)] = True
        return tokens.to(device), mask.to(device)

    def state(self, ctx: Any, batch: int, device: torch.device) -> torch.Tensor:
        """The normalised state zero-padded to max_state_dim (zeros for a robot without one)."""
        st = torch.zeros(batch, self.max_state_dim, device=device)
        if ctx.state is not None:
            S = ctx.state.shape[-1]
            if self.max_state_dim < S:
                raise InputError(f"state dim {S} exceeds the model's max_state_dim {self.max_state_dim}")
            st[:, :S] = ctx.state.to(device).float()
        return st

    @staticmethod
    def _precision(backbone: FamilyBackbone) -> Any:
        """Autocast to the weights' dtype when they are not float32 (a bfloat16 checkpoint, as LeRobot
        publishes pi0), so float32 inputs meet low-precision weights; nothing for float32 weights."""
        p = next(backbone.parameters())
        if p.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=p.device.type, dtype=p.dtype)

    def inputs(self, backbone: FamilyBackbone, ctx: Any) -> tuple:
        device = next(backbone.parameters()).device
        images, masks = self.images(ctx, device)
        tokens, tmask = self.tokens(ctx, device)
        return images, masks, tokens, tmask, self.state(ctx, ctx.batch_size, device)

    # ------------------------------------------------------------------ loss / predict
    def loss(
        self, backbone: FamilyBackbone, ctx: Any, actions: torch.Tensor, pad: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The family's flow-matching loss on the robot's D dims, over the steps that are not padding."""
        images, masks, tokens, tmask, state = self.inputs(backbone, ctx)
        B, H, D = actions.shape
        padded = torch.zeros(B, H, self.max_action_dim, device=actions.device, dtype=actions.dtype)
        padded[..., :D] = actions
        with self._precision(backbone):
            per = backbone.model(images, masks, tokens, tmask, state, padded)  # (B, H, max_action_dim)
        per = per[..., :D].float()
        keep = (~pad).float()[..., None]  # (B, H, 1)
        loss = (per * keep).sum() / (keep.sum() * D).clamp_min(1.0)
        return loss, {}

    def predict(
        self,
        backbone: FamilyBackbone,
        ctx: Any,
        *,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Normalised actions (B, H, D): the family's Euler integration from noise drawn with `generator`
        (`vlaforge.models.heads.standard_normal`)."""
        images, masks, tokens, tmask, state = self.inputs(backbone, ctx)
        from vlaforge.models.heads import standard_normal

        # One generator, one per sample (batched evaluation: each episode its own stream) or None (torch's).
        noise = standard_normal(
            (ctx.batch_size, self.chunk_size, self.max_action_dim), state.device, generator
        )
        with self._precision(backbone):
            out = backbone.model.sample_actions(
                images, masks, tokens, tmask, state, noise=noise, num_steps=num_steps or self.num_steps
            )
        return out[..., : self.action_dim].float()


def family_preset(family: str, lerobot_config: dict[str, Any], tokenizer_path: str | None) -> Any:
    """The `Preset` of a family model: its sizes stay in `family["config"]` (LeRobot's config.json)."""
    from vlaforge.models.presets import Preset

    return Preset.from_dict(preset_dict({**lerobot_config, "type": get_family(family).type}, tokenizer_path))


__all__ = [
    "FAMILIES",
    "FamilyBackbone",
    "FamilyHead",
    "FamilyRow",
    "HFTokenizer",
    "family_classes",
    "family_config",
    "family_preset",
    "get_family",
]
