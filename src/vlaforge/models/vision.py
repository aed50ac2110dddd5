"""Vision featurizers for the Prismatic backbone (Karamcheti et al., 2024, "Prismatic VLMs"; OpenVLA).

Towers are `transformers` models built from configs (nothing is downloaded): `Dinov2WithRegistersModel`
(Darcet et al., 2024, "Vision Transformers Need Registers"), `Dinov2Model` and `SiglipVisionModel`
(Zhai et al., 2023). Choices that match OpenVLA's timm featurizers:

- Features are the raw output of block `num_layers - 2` (0-based), the second-to-last block, with no final
  norm, and patch tokens only: DINOv2's class and register tokens are dropped (SigLIP has none).
- Fused towers are concatenated along channels: (B, n_patches, d_dino + d_siglip).
- Exact GELU (not the tanh approximation transformers' SigLIP config defaults to) and LayerNorm eps 1e-6.
- Pixels: uint8 (B, h, w, 3) -> [0, 1] -> resized on torch (bilinear, antialiased when shrinking) ->
  normalised per tower: ImageNet mean/std for DINOv2, mean 0.5 / std 0.5 for SigLIP. Imported OpenVLA
  checkpoints resize as OpenVLA's image processor does instead (`resize_pil`: Pillow bicubic on the
  uint8 image, after its letterbox or crop strategy), so they see the pixels they were trained on.

The fast path runs the embeddings and the first `num_layers - 1` blocks only; `reference_features`
runs the full model with `output_hidden_states=True` and the tests check both agree.

Known difference from timm (matters only when importing OpenVLA weights): transformers' DINOv2 adds
position embeddings to the class token too and keeps a (unused) mask token.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from vlaforge.errors import InputError
from vlaforge.models.presets import ViTSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def resize_pil(
    image: np.ndarray, size: int, strategy: str = "resize-naive", fill: tuple[int, ...] = (127, 127, 127)
) -> np.ndarray:
    """One uint8 (h, w, 3) image -> (size, size, 3) as OpenVLA's processor prepares it (torchvision's
    functional resize on a PIL image is Pillow's antialiased bicubic).

    Args:
        strategy: "resize-naive" stretches to the square; "resize-crop" scales the shorter side to
            `size` (the longer to int(size * long / short)) then crops the centre (offsets rounded as
            torchvision's `center_crop`); "letterbox" first pads both sides of the shorter dimension by
            floor(half the difference) with the colour `fill`, then resizes and crops as "resize-crop".
    """
    img = Image.fromarray(np.ascontiguousarray(image))
    w, h = img.size
    if strategy == "letterbox":
        # torchvision pads int((side - w) / 2) on both sides, so an odd difference leaves it one short of a
        # square; the resize-crop below (OpenVLA keeps the int size for letterbox) absorbs that.
        side = max(w, h)
        pad_w, pad_h = (side - w) // 2, (side - h) // 2
        padded = Image.new("RGB", (w + 2 * pad_w, h + 2 * pad_h), tuple(fill))
        padded.paste(img, (pad_w, pad_h))
        img, (w, h) = padded, padded.size
    if strategy in ("letterbox", "resize-crop"):
        short, long = min(w, h), max(w, h)
        new_long = int(size * long / short)
        nw, nh = (size, new_long) if w <= h else (new_long, size)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BICUBIC)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        return np.asarray(img.crop((left, top, left + size, top + size)))
    if (w, h) != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img)


def build_tower(spec: ViTSpec, image_size: int) -> nn.Module:
    """A `transformers` vision model for one tower spec (random init, no download)."""
    common = dict(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        image_size=image_size,
        patch_size=spec.patch_size,
        num_channels=3,
        hidden_act="gelu",  # exact GELU, as timm's ViTs
        layer_norm_eps=1e-6,
    )
    if spec.kind == "siglip":
        cfg = SiglipVisionConfig(
            intermediate_size=spec.intermediate_size, vision_use_head=spec.use_head, **common
        )
        return SiglipVisionModel(cfg)
    mlp_ratio = spec.intermediate_size // spec.hidden_size  # transformers' DINOv2 takes an int ratio
    if spec.kind == "dinov2_reg":
        cfg = Dinov2WithRegistersConfig(
            mlp_ratio=mlp_ratio, num_register_tokens=spec.num_register_tokens, **common
        )
        return Dinov2WithRegistersModel(cfg)
    cfg = Dinov2Config(mlp_ratio=mlp_ratio, **common)
    return Dinov2Model(cfg)


def _n_prefix(spec: ViTSpec) -> int:
    """Tokens before the patches: class + registers for DINOv2, none for SigLIP."""
    return 0 if spec.kind == "siglip" else 1 + spec.num_register_tokens


class VisionFeaturizer(nn.Module):
    """One or two towers whose second-to-last-block patch features are concatenated along channels.

    Submodule names follow OpenVLA's `vision_backbone`: `featurizer` (the first tower) and
    `fused_featurizer` (the second, when fused).

    Args:
        specs: one or two tower specs.
        image_size: the square side every image is resized to.
        resize: "bilinear" (torch, on the device) or "bicubic-pil" (OpenVLA's processor, `resize_pil`).
        resize_strategy: with "bicubic-pil", OpenVLA's image_resize_strategy.
    """

    def __init__(
        self,
        specs: tuple[ViTSpec, ...],
        image_size: int,
        resize: str = "bilinear",
        resize_strategy: str = "resize-naive",
    ):
        super().__init__()
        if len(specs) not in (1, 2):
            raise InputError(f"the featurizer takes one or two towers, got {len(specs)}")
        self.specs = tuple(specs)
        self.image_size = image_size
        self.resize, self.resize_strategy = resize, resize_strategy
        self.featurizer = build_tower(specs[0], image_size)
        self.fused_featurizer = build_tower(specs[1], image_size) if len(specs) == 2 else None
        means, stds = [], []
        for spec in specs:
            siglip = spec.kind == "siglip"
            means.append(SIGLIP_MEAN if siglip else IMAGENET_MEAN)
            stds.append(SIGLIP_STD if siglip else IMAGENET_STD)
        # OpenVLA letterboxes with the last tower's mean colour, as 0..255 integers.
        self.letterbox_fill = tuple(int(m * 255) for m in means[-1])
        # (n_towers, 3, 1, 1) float32, deliberately not buffers: `.to(bfloat16)` must not round them.
        self.pixel_mean = torch.tensor(means, dtype=torch.float32).view(len(specs), 3, 1, 1)
        self.pixel_std = torch.tensor(stds, dtype=torch.float32).view(len(specs), 3, 1, 1)

    @property
    def towers(self) -> list[nn.Module]:
        return [self.featurizer] + ([self.fused_featurizer] if self.fused_featurizer is not None else [])

    @property
    def feature_dim(self) -> int:
        return sum(s.hidden_size for s in self.specs)

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.specs[0].patch_size) ** 2

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, h, w, 3) -> float pixels (B, 3 * n_towers, S, S), each tower's 3 channels normalised.

        With two towers this is OpenVLA's 6-channel input (DINO-normalised then SigLIP-normalised).
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise InputError(f"images must be uint8 (B, H, W, 3); got {images.dtype} {tuple(images.shape)}")
        size = self.image_size
        if self.resize == "bicubic-pil" and images.shape[1:3] != (size, size):
            arr = images.cpu().numpy()
            arr = np.stack([resize_pil(a, size, self.resize_strategy, self.letterbox_fill) for a in arr])
            images = torch.from_numpy(arr).to(images.device)
        # float32 whatever the model's dtype (OpenVLA's processor too); the backbone casts afterwards.
        x = images.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, h, w)
        if x.shape[-2:] != (size, size):
            shrink = x.shape[-2] > size or x.shape[-1] > size
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        x = x.unsqueeze(1)  # (B, 1, 3, S, S)
        x = (x - self.pixel_mean.to(x.device)) / self.pixel_std.to(x.device)  # (B, n_towers, 3, S, S)
        return x.flatten(1, 2)

    def _tower_features(self, i: int, pixels: torch.Tensor) -> torch.Tensor:
        """Fast path: embeddings + blocks 0..L-2, patch tokens only. (B, n_patches, d_i)."""
        spec, tower = self.specs[i], self.towers[i]
        if spec.kind == "siglip":
            vm = getattr(tower, "vision_model", tower)  # transformers 5 flattened SiglipVisionModel
            x = vm.embeddings(pixels)
            blocks = vm.encoder.layers
        else:
            x = tower.embeddings(pixels)
            blocks = tower.encoder.layer
        for block in blocks[: len(blocks) - 1]:
            x = block(x, None)
        return x[:, _n_prefix(spec) :]

    def unused_parameters(self) -> list[nn.Parameter]:
        """Parameters whose outputs never reach the features: each tower's last block (features come from
        the one before), its final norm, SigLIP's attention-pool head and DINOv2's mask token (used only for
        masked-image pre-training). Kept for checkpoint parity with OpenVLA, never trained."""
        out: list[nn.Parameter] = []
        for spec, tower in zip(self.specs, self.towers):
            if spec.kind == "siglip":
                vm = getattr(tower, "vision_model", tower)
                modules = [vm.encoder.layers[-1], vm.post_layernorm, getattr(vm, "head", None)]
            else:
                modules = [tower.encoder.layer[-1], tower.layernorm]
                out.append(tower.embeddings.mask_token)
            out += [p for m in modules if m is not None for p in m.parameters()]
        return out

    def reference_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Slow reference: full forward with `output_hidden_states`; hidden_states[-2] is block L-2's output."""
        feats = []
        for i, (spec, tower) in enumerate(zip(self.specs, self.towers)):
            out = tower(pixel_values=pixels[:, 3 * i : 3 * i + 3], output_hidden_states=True)
            feats.append(out.hidden_states[-2][:, _n_prefix(spec) :])
        return torch.cat(feats, dim=-1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels (B, 3 * n_towers, S, S) -> fused patch features (B, n_patches, d_vision)."""
        feats = [self._tower_features(i, pixels[:, 3 * i : 3 * i + 3]) for i in range(len(self.specs))]
        return torch.cat(feats, dim=-1)


class Projector(nn.Module):
    """Prismatic's MLP projector from vision features to LLM embeddings (OpenVLA's module names).

    Fused (two towers): fc1 d_vis -> 4 d_vis, GELU, fc2 -> d_llm, GELU, fc3 d_llm -> d_llm.
    Single tower ("gelu-mlp"): fc1 d_vis -> d_llm, GELU, fc2 d_llm -> d_llm.
    """

    def __init__(self, vision_dim: int, llm_dim: int, fused: bool):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()
        self.act_fn2 = nn.GELU() if fused else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act_fn1(self.fc1(x)))
        if self.fused:
            x = self.fc3(self.act_fn2(x))
        return x
