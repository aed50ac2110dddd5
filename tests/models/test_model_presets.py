"""Presets: the table, the "did you mean", and the OpenVLA 7B shapes and parameter counts on the meta device."""

from __future__ import annotations

import pytest
import torch

from vlaforge.errors import InputError
from vlaforge.models.policy import Policy
from vlaforge.models.presets import PRESETS, get_preset


def _m(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def test_get_preset_did_you_mean():
    assert get_preset("tiny").name == "tiny"
    with pytest.raises(InputError, match="did you mean 'openvla-7b'"):
        get_preset("openvla-7")


def test_unknown_override_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset override"):
        get_preset("tiny").with_overrides(chunk_sise=4)


def test_preset_round_trips_through_dict():
    for p in PRESETS.values():
        assert type(p).from_dict(p.to_dict()) == p


def _meta_policy(h, name: str) -> Policy:
    emb = h.embodiment(state_dim=0)
    with torch.device("meta"):
        return Policy.from_preset(name, "tokens", emb, h.stats(state_dim=0), tokenizer="byte")


def test_openvla_7b_shapes_and_counts(h):
    p = _meta_policy(h, "openvla-7b")
    bb = p.backbone
    assert bb.vision.feature_dim == 2176 and bb.vision.n_patches == 256
    assert tuple(bb.projector.fc1.weight.shape) == (8704, 2176)
    assert tuple(bb.projector.fc2.weight.shape) == (4096, 8704)
    assert tuple(bb.projector.fc3.weight.shape) == (4096, 4096)
    assert tuple(bb.llm.get_input_embeddings().weight.shape) == (32064, 4096)
    assert tuple(bb.llm.get_output_embeddings().weight.shape) == (32064, 4096)
    assert p.bins.first_id == 31744 and p.bins.last_id == 31999
    # DESIGN: 7,541.2 M = DINOv2 303.2 + SigLIP 427.7 + projector 71.4 + Llama-2 6,738.9.
    # transformers' DINOv2 differs from timm's by 2,048 parameters: a mask token (1024) and a position
    # embedding row for the class token (1024); both are below the 0.1 M rounding. SigLIP's attention-pool
    # head (unused by the features) is kept, as timm's model has it: 427.7 M either way.
    assert round(_m(bb.vision.featurizer), 1) == 303.2
    assert round(_m(bb.vision.fused_featurizer), 1) == 427.7
    assert round(_m(bb.projector), 1) == 71.4
    assert round(_m(bb.llm), 1) == 6738.9
    assert round(_m(p), 1) == 7541.2
    assert _m(p.head) == 0  # the token head reuses the LM head


def test_openvla_7b_siglip_counts(h):
    p = _meta_policy(h, "openvla-7b-siglip")
    bb = p.backbone
    assert bb.vision.feature_dim == 1152 and bb.vision.fused_featurizer is None
    assert tuple(bb.projector.fc1.weight.shape) == (4096, 1152) and not hasattr(bb.projector, "fc3")
    assert round(_m(bb.projector), 1) == 21.5
    assert round(_m(p), 1) == 7188.1
    # Fine-tuning table of the paper: frozen vision trains LLM + projector.
    assert round(_m(bb.llm) + _m(bb.projector), 1) == 6760.4


def test_llama_preset_without_tokenizer_says_what_to_do(h):
    with torch.device("meta"), pytest.raises(ValueError, match="tokenizer_path"):
        Policy.from_preset("openvla-7b", "tokens", h.embodiment(state_dim=0), h.stats(state_dim=0))


def test_tiny_is_small(embodiment, norm_stats):
    p = Policy.from_preset("tiny", "chunk", embodiment, norm_stats)
    assert 0.5 < _m(p) < 5
    assert p.backbone.vision.n_patches == 16 and p.backbone.vision.feature_dim == 128
