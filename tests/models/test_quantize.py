"""Weight-only quantisation: rounding bounds, kernels against the dequantised reference, packing, the policy
summary's byte counts, what stays in full precision, predictions after quantising, and the errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlaforge.errors import InputError
from vlaforge.models import quantize as qz
from vlaforge.models.policy import Policy
from vlaforge.models.quantize import (
    Int4Linear,
    Int8Linear,
    pack_int4,
    quantize_int4,
    quantize_int8,
    quantize_policy,
    unpack_int4,
)


def _weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Random weights with the awkward cases: an all-zero row, a constant stretch, one large outlier."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[1] = 0.0
    w[2, :32] = 0.3
    w[3, 5] = 4.0
    return w


def _policy(embodiment, norm_stats) -> Policy:
    return Policy.from_preset("tiny", "tokens", embodiment, norm_stats)


def _backbone_linears(policy: Policy) -> dict[str, nn.Module]:
    return {f"backbone.{n}": m for n, m in policy.backbone.named_modules() if isinstance(m, nn.Linear)}


# ------------------------------------------------------------------------------------------ rounding bounds
def test_int8_codes_are_within_half_a_scale_of_the_weights():
    w = _weight(37, 200)
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (37,) and s.dtype == w.dtype
    assert int(q.abs().max()) <= 127
    err = (w - q.float() * s[:, None]).abs()
    assert (err <= s[:, None] / 2 * (1 + 1e-6)).all()
    # every row's largest weight lands on +-127; the all-zero row gets codes 0 and stays exact
    assert (q.abs().amax(1)[torch.arange(37) != 1] == 127).all()
    assert (q[1] == 0).all() and err[1].max() == 0


def test_int4_codes_are_within_half_a_scale_of_the_weights_per_group():
    w = _weight(19, 256)
    g, G = 32, 8
    packed, s, z = quantize_int4(w, g)
    assert packed.shape == (19, 128) and packed.dtype == torch.uint8
    assert s.shape == z.shape == (19, G)
    codes = unpack_int4(packed).view(19, G, g).float()
    groups = w.view(19, G, g)
    err = (groups - (codes * s[..., None] + z[..., None])).abs()
    assert (err <= s[..., None] / 2 * (1 + 1e-5) + 1e-7).all()
    # each group's minimum is code 0 and its maximum code 15; constant groups (all codes 0) are exact
    assert (codes.amin(-1) == 0).all()
    varying = groups.amax(-1) > groups.amin(-1)
    assert (codes.amax(-1)[varying] == 15).all() and not varying[1].any() and not varying[2, 0]
    assert err[1].max() == 0 and err[2, 0].max() == 0


def test_quantising_in_row_blocks_gives_the_same_codes(monkeypatch):
    w = _weight(50, 128)
    whole8, whole4 = quantize_int8(w), quantize_int4(w, 32)
    monkeypatch.setattr(qz, "_CHUNK_ELEMENTS", 3 * 128)  # blocks of 3 rows, the last one shorter
    for a, b in zip(quantize_int8(w) + quantize_int4(w, 32), whole8 + whole4):
        assert torch.equal(a, b)


def test_int4_packing_round_trip_is_exact():
    codes = torch.randint(0, 16, (5, 7, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    packed = pack_int4(codes)
    assert packed.shape == (5, 7, 32)
    assert torch.equal(unpack_int4(packed), codes)
    assert torch.equal(packed[..., 0] & 0x0F, codes[..., 0]) and torch.equal(
        packed[..., 0] >> 4, codes[..., 1]
    )


# ------------------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantised_layer_equals_linear_with_its_dequantised_weight(kind):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    layer = Int8Linear.from_linear(linear) if kind == "int8" else Int4Linear.from_linear(linear, 32)
    x = torch.randn(3, 5, 96)  # (B, T, in)
    w = layer.dequantize()
    assert w.shape == (40, 96) and torch.equal(layer.weight, w)
    torch.testing.assert_close(layer(x), F.linear(x, w, linear.bias), atol=1e-5, rtol=0)
    assert layer.bias is linear.bias
    # the weight is close to the original: within half a quantisation step everywhere
    step = layer.scales.max().item()
    assert (w - linear.weight).abs().max() <= step / 2 + 1e-6
    assert not [n for n, _ in layer.named_parameters() if n != "bias"]  # quantised weights are buffers
    keys = set(layer.state_dict())
    assert keys == ({"qweight", "scales", "bias"} | ({"zeros"} if kind == "int4" else set()))
    assert f"{kind} " in repr(layer)


def test_int8_layer_in_bfloat16_and_float16_follows_the_dequantised_weight():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32).to(torch.bfloat16)
    layer = Int8Linear.from_linear(linear)
    assert layer.scales.dtype == torch.bfloat16
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    ref = F.linear(x.float(), layer.dequantize(torch.float32), linear.bias.float())
    torch.testing.assert_close(layer(x).float(), ref, atol=3e-2, rtol=2e-2)
    half = Int8Linear.from_linear(nn.Linear(64, 32).half())
    y = half(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


def test_int4_layer_refuses_a_group_size_that_does_not_divide_its_inputs():
    with pytest.raises(InputError, match="multiple of group_size 32"):
        Int4Linear(48, 8, group_size=32)


# ------------------------------------------------------------------------------------------ the policy
def test_int8_policy_summary_counts_bytes_and_keeps_lm_head(embodiment, norm_stats):
    policy = _policy(embodiment, norm_stats)
    before = {n: m.weight.detach().clone() for n, m in _backbone_linears(policy).items()}
    lm_head = policy.backbone.llm.get_output_embeddings()
    head_params = {n: p.detach().clone() for n, p in policy.head.named_parameters()}

    s = quantize_policy(policy, "int8")

    assert s["mode"] == "int8" and s["backend"] == "torch"
    assert (
        s["skipped"] == ["backbone.llm.lm_head"]
        and "output layer" in s["skip_reasons"]["backbone.llm.lm_head"]
    )
    layers = {f"backbone.{n}": m for n, m in policy.backbone.named_modules() if isinstance(m, Int8Linear)}
    assert set(layers) == set(before) - {"backbone.llm.lm_head"} and s["layers"] == len(layers)
    # the definition, from the shapes: fp32 weights 4 N K bytes; int8 codes N K bytes + fp32 scales 4 N
    assert s["weight_bytes_before"] == sum(4 * m.out_features * m.in_features for m in layers.values())
    assert s["weight_bytes_after"] == sum(m.out_features * (m.in_features + 4) for m in layers.values())
    assert 0.25 < s["weight_bytes_after"] / s["weight_bytes_before"] < 0.27
    # lm_head: the same module, the same values, still trainable like before; the head is untouched
    assert policy.backbone.llm.get_output_embeddings() is lm_head and type(lm_head) is nn.Linear
    assert torch.equal(lm_head.weight, before["backbone.llm.lm_head"])
    assert all(torch.equal(p, head_params[n]) for n, p in policy.head.named_parameters())
    # quantised weights are buffers with readable state-dict keys; no parameter named *.weight is left there
    sd = policy.state_dict()
    assert sd["backbone.llm.model.layers.0.mlp.down_proj.qweight"].dtype == torch.int8
    assert sd["backbone.projector.fc1.scales"].shape == (policy.backbone.projector.fc1.out_features,)
    assert not [n for n in layers if f"{n}.weight" in dict(policy.named_parameters())]
    assert policy.quantization is s


def test_int4_policy_skips_layers_the_group_size_does_not_divide(embodiment, norm_stats):
    policy = _policy(embodiment, norm_stats)
    s = quantize_policy(policy, "int4", group_size=32)
    layers = [m for m in policy.backbone.modules() if isinstance(m, Int4Linear)]
    # the state projection has 6 inputs: it stays in full precision, with the reason
    assert s["skipped"] == ["backbone.llm.lm_head", "backbone.state_proj"]
    assert "not a multiple of group_size 32" in s["skip_reasons"]["backbone.state_proj"]
    assert type(policy.backbone.state_proj) is nn.Linear
    # packed codes N K / 2 bytes + fp32 scales and zeros, 4 bytes each per group of 32
    expect = sum(
        m.out_features * m.in_features // 2 + 2 * 4 * m.out_features * m.in_features // 32 for m in layers
    )
    assert s["weight_bytes_after"] == expect and s["layers"] == len(layers)
    assert 0.125 < s["weight_bytes_after"] / s["weight_bytes_before"] < 0.19

    # with the default group of 128, the tiny vision towers (64 wide) stay in full precision
    wide = quantize_policy(_policy(embodiment, norm_stats), "int4")
    assert "backbone.vision.featurizer.encoder.layer.0.attention.q_proj" in wide["skipped"]
    assert wide["layers"] < s["layers"]


def test_parts_limit_quantisation_to_the_named_submodules(embodiment, norm_stats):
    policy = _policy(embodiment, norm_stats)
    s = quantize_policy(policy, "int8", parts=("llm",), device="cpu")
    assert s["layers"] > 0 and isinstance(policy.backbone.llm.model.layers[0].mlp.up_proj, Int8Linear)
    assert type(policy.backbone.state_proj) is nn.Linear  # new for a fine-tune: it trains in full precision
    assert not any(qz.is_quantized_layer(m) for m in policy.backbone.vision.modules())
    w = policy.backbone.llm.model.layers[0].mlp.up_proj
    torch.testing.assert_close(qz.dequantize_layer(w), w.dequantize())


def test_linear_layers_inside_multihead_attention_stay_in_full_precision():
    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.MultiheadAttention(32, 4, batch_first=True)  # as SigLIP's pooling head
            self.proj = nn.Linear(32, 32)

        def forward(self, x):
            return self.proj(self.pool(x, x, x)[0])

    policy = nn.Module()
    policy.backbone = Backbone()
    x = torch.randn(2, 5, 32)
    ref = policy.backbone(x)
    s = quantize_policy(policy, "int8")
    assert s["skipped"] == ["backbone.pool.out_proj"] and s["layers"] == 1
    assert (
        isinstance(policy.backbone.proj, Int8Linear) and type(policy.backbone.pool.out_proj) is not Int8Linear
    )
    torch.testing.assert_close(policy.backbone(x), ref, atol=0.05, rtol=0.05)


def test_lora_adapters_stay_in_full_precision_over_a_quantised_base(embodiment, norm_stats, h):
    from vlaforge.train.finetune import apply_lora

    policy = _policy(embodiment, norm_stats)
    apply_lora(policy, rank=4, alpha=8)
    s = quantize_policy(policy, "int8")
    q_proj = policy.backbone.llm.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, Int8Linear) and type(q_proj.lora_A["default"]) is nn.Linear
    assert "backbone.llm.model.layers.0.self_attn.q_proj.lora_A.default" in s["skipped"]
    assert all(p.requires_grad for n, p in policy.named_parameters() if "lora_" in n)
    assert policy.predict_action_batch(h.batch(B=2)).shape == (2, 1, 4)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_policy_predicts_close_to_full_precision(mode, embodiment, norm_stats, h):
    full = _policy(embodiment, norm_stats)
    quant = copy.deepcopy(full)
    quantize_policy(quant, mode, group_size=32)
    batch = h.batch(B=3)
    actions = quant.predict_action_batch(batch)
    assert actions.shape == (3, 1, 4) and actions.dtype.name == "float32"
    assert (abs(actions) <= 1.0).all()

    # the head's logits at the first decoded position, against the full-precision policy's: values, not ids
    ctx = full._context(batch["images"], batch["state"], batch["instruction"])
    _, ref = full.head.decode(full.backbone, ctx)
    _, got = quant.head.decode(quant.backbone, ctx)
    diff = (got[:, 0] - ref[:, 0]).abs().max() / ref[:, 0].abs().max()
    assert diff < (0.05 if mode == "int8" else 0.4), f"{mode}: first-position logits differ by {diff:.3f}"


def test_from_pretrained_quantises_at_load(embodiment, norm_stats, h, tmp_path):
    full = _policy(embodiment, norm_stats)
    full.save_pretrained(tmp_path / "p")
    loaded = Policy.from_pretrained(tmp_path / "p", quantize="int8")
    assert loaded.quantization["mode"] == "int8" and loaded.quantization["layers"] > 0
    assert isinstance(loaded.backbone.llm.model.layers[0].mlp.up_proj, Int8Linear)
    assert loaded.predict_action_batch(h.batch(B=2)).shape == (2, 1, 4)


# ------------------------------------------------------------------------------------------ errors
def test_errors_name_what_was_wrong(embodiment, norm_stats):
    policy = _policy(embodiment, norm_stats)
    with pytest.raises(InputError, match=r"unknown quantisation mode 'fp8'.*\['int8', 'int4'\]"):
        quantize_policy(policy, "fp8")
    with pytest.raises(InputError, match="unknown quantisation backend"):
        quantize_policy(policy, "int8", backend="gguf")
    with pytest.raises(InputError, match="even integer"):
        quantize_policy(policy, "int4", group_size=33)
    with pytest.raises(InputError, match=r"backend='torch'"):
        quantize_policy(policy, "int8", backend="bitsandbytes")  # the weights are on the CPU
    with pytest.raises(InputError, match="needs a policy with a .backbone"):
        quantize_policy(nn.Linear(4, 4), "int8")
    quantize_policy(policy, "int8")
    with pytest.raises(InputError, match="already quantised.*full-precision policy again"):
        quantize_policy(policy, "int4")


def test_auto_on_cuda_without_bitsandbytes_says_what_to_install(monkeypatch):
    monkeypatch.setattr(
        qz, "_import_bnb", lambda: (None, "ModuleNotFoundError: No module named 'bitsandbytes'")
    )
    with pytest.raises(InputError, match="pip install bitsandbytes"):
        qz._pick_backend("auto", torch.device("cuda"))
    assert qz._pick_backend("auto", torch.device("cpu"))[0] == "torch"
    assert qz._pick_backend("torch", torch.device("cuda"))[0] == "torch"


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_bitsandbytes_layers_follow_the_full_precision_layer(mode):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    linear = nn.Linear(256, 128).to("cuda", torch.bfloat16)
    x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    ref = linear(x).float()
    layer = qz._bnb_layer(bnb, linear, mode)
    assert not layer.weight.requires_grad
    err = (layer(x).float() - ref).abs().max() / ref.abs().max()
    assert err < (0.05 if mode == "int8" else 0.25)


# ------------------------------------------------------------------------------------------ QLoRA
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_qlora_on_an_openvla_base_adapts_its_quantised_llm(mode, tmp_path):
    """`train --init OPENVLA --quantize MODE --lora-rank R` on the CPU: the portable kernels quantise the
    base and LoRA wraps them, so every projection of the LLM trains through its adapter."""
    from openvla_checkpoint import make_openvla_checkpoint
    from openvla_reference import TEST_TIMM_IDS

    from vlaforge.data.synth import SynthConfig, write_synthetic
    from vlaforge.models import openvla
    from vlaforge.train import TrainConfig, restore_policy, train

    for timm_id, (kind, heads) in TEST_TIMM_IDS.items():
        openvla.register_timm_model(timm_id, kind, heads)
    base = tmp_path / "base"
    make_openvla_checkpoint(base, fused=True, llm={"hidden": 128, "intermediate": 256})
    data = write_synthetic(
        SynthConfig(out=str(tmp_path / "d"), episodes=2, length=12, image_size=32, tasks=1)
    )
    cfg = TrainConfig(
        dataset=str(data),
        out=str(tmp_path / "run"),
        init=str(base),
        quantize=mode,
        lora_rank=4,
        head="tokens",
        steps=2,
        batch_size=2,
        device="cpu",
    )
    run = train(cfg)
    policy = restore_policy(run / "last")
    kind = Int8Linear if mode == "int8" else Int4Linear
    for layer in policy.backbone.llm.model.layers:
        for module in (*layer.self_attn.children(), *layer.mlp.children()):
            if hasattr(module, "in_features") or hasattr(module, "lora_A"):
                assert isinstance(module.get_base_layer(), kind), module
    tuned = Policy.from_pretrained(run / "last")  # merged into full precision: no quantised layer, no peft
    assert not any(isinstance(m, (Int8Linear, Int4Linear)) for m in tuned.modules())
