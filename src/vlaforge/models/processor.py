"""OpenVLA's image processor and its processor contract, for any vlaforge policy.

`preprocessor_config` writes OpenVLA's `preprocessor_config.json` for a preset, `check_preprocessor` refuses
one whose normalisation vlaforge cannot reproduce, and `Processor` turns (prompt, image) into OpenVLA's
`input_ids`, `attention_mask` and `pixel_values` (see DESIGN.md, "OpenVLA's image processor").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlaforge.errors import InputError
from vlaforge.models.presets import Preset

PREPROCESSOR_FILE = "preprocessor_config.json"


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


__all__ = ["PREPROCESSOR_FILE", "Processor", "check_preprocessor", "preprocessor_config"]
