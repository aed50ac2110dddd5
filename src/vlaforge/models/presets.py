"""Named model presets: one table of dataclass configs (gpt-fast's `transformer_configs` habit).

- `tiny`: a few million parameters that train in minutes on a 2-core CPU. Fused tiny DINOv2-with-registers
  + tiny SigLIP at 64 px with 16 px patches (16 patches per camera), a three-layer fused projector, a
  small Llama and the self-contained byte tokenizer (vocab 3 + 256 bytes + 256 action bins = 515).
- `small`: ~40 M parameters for one GPU (the `mt50-small` recipe). DINOv2-with-registers + SigLIP, each
  384 wide and 6 deep, at 128 px with 16 px patches (64 patches per camera), and a 6-layer Llama 512
  wide, with the byte tokenizer.
- `openvla-7b`: OpenVLA's real dimensions (Kim et al., 2024, "OpenVLA: An Open-Source
  Vision-Language-Action Model"): DINOv2 ViT-L/14 with 4 registers + SigLIP So400m/14 at 224 px
  (256 patches, 1024 + 1152 = 2176 channels), projector 2176 -> 8704 -> 4096 -> 4096, Llama-2 7B with
  its embedding padded to 32064 rows, 256 action bins on the last ids of the 32000-token Llama vocab.
- `openvla-7b-siglip`: the SigLIP-only variant behind the paper's fine-tuning table (projector
  1152 -> 4096 -> 4096).

Everything is plain data so a checkpoint's `config.json` can rebuild the exact model; `get_preset` gives a
"did you mean" on a typo.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from vlaforge.errors import InputError, did_you_mean

VISION_KINDS = ("dinov2_reg", "dinov2", "siglip")
TOKENIZER_KINDS = ("byte", "llama", "hf")
PROMPT_FORMATS = ("openvla", "instruction")
IMAGE_RESIZES = ("bilinear", "bicubic-pil")
RESIZE_STRATEGIES = ("resize-naive", "letterbox", "resize-crop")


@dataclass(frozen=True)
class ViTSpec:
    """One vision transformer tower.

    Attributes:
        kind: "dinov2_reg" (DINOv2 with register tokens), "dinov2" or "siglip".
        hidden_size: channel width d of the tower (its feature dim).
        num_layers: transformer blocks; features are read from the output of block num_layers - 2.
        num_heads: attention heads.
        intermediate_size: MLP width.
        patch_size: square patch side in pixels.
        num_register_tokens: DINOv2 register tokens (4 in OpenVLA's ViT-L/14-reg4); 0 otherwise.
        use_head: SigLIP's attention-pool head. Its features are never used, but OpenVLA's timm model
            carries it, so the 7B preset keeps it for parameter parity.
        timm_id: the timm model this tower's weights come from, when they do (OpenVLA's checkpoints name
            their towers so); written back by the OpenVLA export.
    """

    kind: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    patch_size: int
    num_register_tokens: int = 0
    use_head: bool = False
    timm_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in VISION_KINDS:
            raise InputError(f"unknown vision tower kind {self.kind!r}; choose one of {VISION_KINDS}")
        if self.num_layers < 2:
            raise InputError(f"a {self.kind} tower needs >= 2 layers (features come from the second-to-last)")
        if self.hidden_size % self.num_heads:
            raise InputError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.kind != "siglip" and self.intermediate_size % self.hidden_size:
            raise InputError(
                f"DINOv2 needs intermediate_size ({self.intermediate_size}) to be a multiple of hidden_size "
                f"({self.hidden_size}): transformers' config takes an integer mlp_ratio"
            )


@dataclass(frozen=True)
class LLMSpec:
    """The causal language model (a `transformers` Llama config by default).

    Attributes:
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: the usual Llama sizes.
        vocab_size: rows of the embedding matrix (OpenVLA pads Llama-2's 32000 to 32064).
        max_position_embeddings: RoPE context length.
        rms_norm_eps: RMSNorm epsilon (1e-5 for Llama-2 7B, 1e-6 here for tiny models).
        rope_theta: RoPE base.
        model_type: any `transformers` causal-LM model type; "llama" by default.
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    num_kv_heads: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    model_type: str = "llama"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise InputError(
                f"LLM hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}"
            )


@dataclass(frozen=True)
class Preset:
    """A full model configuration.

    Attributes:
        name: the preset's name.
        vision: the towers, fused by channel concatenation in this order (OpenVLA: DINOv2 then SigLIP).
        image_size: square input side; camera images are resized to it inside the model.
        llm: the language model.
        tokenizer: "byte" (self-contained, saved in config.json) or "llama" (local `tokenizer.json`).
        tokenizer_path: directory holding the Llama tokenizer files (only for tokenizer="llama").
        prompt: "openvla" (`In: What action should the robot take to {instruction}?\nOut:`, the format
            OpenVLA was trained with) or "instruction" (the lower-cased instruction alone). The tiny
            preset's byte-level LM pays one position per byte, and the template's 47 fixed bytes carry
            no information: dropping them shortens its sequence by about 40% and its training step
            accordingly.
        action_vocab_size: the vocab whose last `n_bins` ids are action tokens (32000 for OpenVLA).
        n_bins: action bins per dim (256).
        use_state: add one projected proprioceptive-state token after the patches.
        chunk_size: action chunk H of the chunk head; the token head defaults to 1.
        lr: the learning rate the training loop uses when none is given.
        image_resize: how camera images reach `image_size` inside the model: "bilinear" (on torch, on the
            policy's device, antialiased when shrinking; vlaforge's default) or "bicubic-pil" (Pillow's
            bicubic on the host, what OpenVLA's image processor does, so imported checkpoints see the
            pixels they were trained on).
        family: a pretrained VLA family that replaces the Prismatic backbone and head
            (`vlaforge.models.family`): `{"type": "pi0" | "smolvla", "config": LeRobot's config.json}`. Its
            `vision` is empty and `llm` None (the family's config holds its sizes); `tokenizer` is "hf", a
            `tokenizer.json` read with the `tokenizers` library from `tokenizer_path`.
        vlm: a transformers image-text model as the backbone (`vlaforge.models.hf_vlm`): `{"config": its
            config.json, "num_layers": first N LLM layers, "visual_tokens": per image, "freeze_vision":
            bool, "weights": a local directory}`; `vision` is then empty and `llm` describes its LLM.
        history: T, observations the policy reads per prediction (the current one and the T - 1 before it):
            every camera's T frames become T x n_patches tokens (oldest first) and the T states one state
            token; 1 (OpenVLA) reads the current observation only.
        resize_strategy: OpenVLA's `image_resize_strategy` (with "bicubic-pil"): "resize-naive" (stretch
            to a square), "letterbox" (pad to a square with the mean colour first) or "resize-crop"
            (shorter side to `image_size`, then a centre crop).
        keypoints: K > 0 adds one token per camera image after its patches: K spatial soft-argmax
            keypoints of a small conv net at the image's resolution (`vlaforge.models.keypoints`), a
            position-aware read-out of the image (where a one-pixel goal marker is, say); 0 (OpenVLA) adds none.
    """

    name: str
    vision: tuple[ViTSpec, ...]
    image_size: int
    llm: LLMSpec | None
    tokenizer: str = "byte"
    tokenizer_path: str | None = None
    prompt: str = "openvla"
    action_vocab_size: int = 515
    n_bins: int = 256
    use_state: bool = True
    chunk_size: int = 8
    lr: float = 3e-4
    image_resize: str = "bilinear"
    resize_strategy: str = "resize-naive"
    history: int = 1
    family: dict[str, Any] | None = None
    vlm: dict[str, Any] | None = None
    keypoints: int = 0

    def __post_init__(self) -> None:
        if self.history < 1:
            raise InputError(f"history must be >= 1 (observations per prediction); got {self.history}")
        if self.keypoints < 0:
            raise InputError(f"keypoints must be >= 0 (0: no keypoint token); got {self.keypoints}")
        if self.keypoints and (self.family is not None or self.vlm is not None):
            raise InputError(
                f"preset {self.name!r}: keypoint tokens are a Prismatic backbone's; a pretrained family or "
                "transformers VLM backbone reads its images its own way (leave keypoints at 0)"
            )
        if self.family is not None:
            if not isinstance(self.family, dict) or not isinstance(self.family.get("config"), dict):
                raise InputError(f"preset {self.name!r}: family must be {{'type': ..., 'config': {{...}}}}")
            if self.history != 1 or self.tokenizer != "hf":
                raise InputError(
                    f"preset {self.name!r}: a {self.family.get('type')} family reads one observation with its "
                    "own tokenizer (history 1, tokenizer 'hf')"
                )
            return
        if self.vlm is not None and not isinstance(
            self.vlm.get("config") if isinstance(self.vlm, dict) else None, dict
        ):
            raise InputError(
                f"preset {self.name!r}: vlm must be {{'config': a transformers config.json, ...}}"
            )
        if self.image_resize not in IMAGE_RESIZES:
            raise InputError(f"unknown image_resize {self.image_resize!r}; choose one of {IMAGE_RESIZES}")
        if self.resize_strategy not in RESIZE_STRATEGIES:
            raise InputError(
                f"unknown resize_strategy {self.resize_strategy!r}; choose one of {RESIZE_STRATEGIES}"
            )
        if self.image_resize == "bilinear" and self.resize_strategy != "resize-naive":
            raise InputError(
                f"resize_strategy {self.resize_strategy!r} needs image_resize='bicubic-pil' (OpenVLA's processor)"
            )
        if not self.vision and self.vlm is None:
            raise InputError(f"preset {self.name!r} has no vision tower")
        if self.tokenizer not in TOKENIZER_KINDS:
            raise InputError(f"unknown tokenizer {self.tokenizer!r}; choose one of {TOKENIZER_KINDS}")
        if self.prompt not in PROMPT_FORMATS:
            raise InputError(f"unknown prompt format {self.prompt!r}; choose one of {PROMPT_FORMATS}")
        for spec in self.vision:
            if self.image_size % spec.patch_size:
                raise InputError(
                    f"image_size {self.image_size} is not a multiple of the {spec.kind} patch size {spec.patch_size}"
                )
        if self.vision and len({self.image_size // s.patch_size for s in self.vision}) != 1:
            raise InputError("fused vision towers must produce the same number of patches")
        if self.action_vocab_size > self.llm.vocab_size:
            raise InputError(
                f"action_vocab_size {self.action_vocab_size} exceeds the LLM vocab {self.llm.vocab_size}"
            )
        if self.chunk_size < 1:
            raise InputError(f"chunk_size must be >= 1, got {self.chunk_size}")

    @property
    def n_patches(self) -> int:
        """Patches per camera image."""
        return (self.image_size // self.vision[0].patch_size) ** 2

    @property
    def vision_dim(self) -> int:
        """Channel width of the fused features."""
        return sum(s.hidden_size for s in self.vision)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preset:
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown preset keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        d["vision"] = tuple(ViTSpec(**v) for v in d["vision"])
        d["llm"] = LLMSpec(**d["llm"]) if d.get("llm") is not None else None
        return cls(**d)

    def with_overrides(self, **overrides: Any) -> Preset:
        """A copy with top-level fields replaced; an unknown name is a clear error."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise InputError(
                f"unknown preset override(s) {sorted(unknown)} for {self.name!r}; known: {sorted(known)}"
            )
        return replace(self, **overrides)


_DINO_L14 = ViTSpec(
    "dinov2_reg",
    1024,
    24,
    16,
    4096,
    14,
    num_register_tokens=4,
    timm_id="vit_large_patch14_reg4_dinov2.lvd142m",
)
_SIGLIP_SO400M = ViTSpec(
    "siglip", 1152, 27, 16, 4304, 14, use_head=True, timm_id="vit_so400m_patch14_siglip_224"
)
_LLAMA2_7B = LLMSpec(4096, 32, 32, 11008, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="tiny",
            vision=(
                ViTSpec("dinov2_reg", 64, 3, 4, 128, 16, num_register_tokens=4),
                ViTSpec("siglip", 64, 3, 4, 128, 16),
            ),
            image_size=64,
            llm=LLMSpec(128, 2, 4, 384, vocab_size=515, max_position_embeddings=512, rms_norm_eps=1e-6),
            tokenizer="byte",
            prompt="instruction",
            action_vocab_size=515,
            use_state=True,
            chunk_size=8,
            lr=1e-3,
        ),
        Preset(
            name="small",
            vision=(
                ViTSpec("dinov2_reg", 384, 6, 6, 1536, 16, num_register_tokens=4),
                ViTSpec("siglip", 384, 6, 6, 1536, 16),
            ),
            image_size=128,
            llm=LLMSpec(512, 6, 8, 1536, vocab_size=515, max_position_embeddings=1024, rms_norm_eps=1e-6),
            tokenizer="byte",
            prompt="instruction",
            action_vocab_size=515,
            use_state=True,
            chunk_size=8,
            lr=3e-4,
        ),
        Preset(
            name="openvla-7b",
            vision=(_DINO_L14, _SIGLIP_SO400M),
            image_size=224,
            llm=_LLAMA2_7B,
            tokenizer="llama",
            action_vocab_size=32000,
            use_state=False,
            chunk_size=8,
            lr=2e-5,
        ),
        Preset(
            name="openvla-7b-siglip",
            vision=(_SIGLIP_SO400M,),
            image_size=224,
            llm=_LLAMA2_7B,
            tokenizer="llama",
            action_vocab_size=32000,
            use_state=False,
            chunk_size=8,
            lr=2e-5,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """Returns the preset called `name`; a typo gets a "did you mean".

    Raises:
        KeyError: no preset of that name.
    """
    if name in PRESETS:
        return PRESETS[name]
    raise InputError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)} (known: {sorted(PRESETS)})")
