"""QLoRA (`train --quantize int8|int4 --lora-rank R`): LoRA adapters trained over a quantised base.

On the CPU the base is quantised with vlaforge's portable kernels (`vlaforge.models.quantize`) and LoRA wraps
those layers; the tiny preset has OpenVLA's layout (DINOv2 + SigLIP, projector, Llama decoder), so its LLM
has every projection OpenVLA's LoRA adapts.
"""

from __future__ import annotations

import json

import pytest
import torch

from vlaforge.data.dataset import open_dataset
from vlaforge.data.sampler import make_sampler
from vlaforge.errors import InputError
from vlaforge.models.policy import Policy
from vlaforge.models.quantize import Int4Linear, Int8Linear
from vlaforge.train import TrainConfig, restore_policy, train
from vlaforge.train.finetune import apply_lora, check_llm_adapted

LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANTISED = {"int8": Int8Linear, "int4": Int4Linear}


@pytest.fixture(scope="module")
def base_dir(tiny_dataset, tmp_path_factory):
    """A tiny policy saved as the base to fine-tune (its LLM's widths, 128 and 384, split into int4 groups)."""
    ds = open_dataset(tiny_dataset)
    torch.manual_seed(0)
    policy = Policy.from_preset("tiny", "tokens", ds.embodiment(), ds.norm_stats())
    return policy.save_pretrained(tmp_path_factory.mktemp("qlora") / "base")


def _cfg(ds, out, base, mode, **kw):
    return TrainConfig(
        **{
            "dataset": str(ds),
            "out": str(out),
            "init": str(base),
            "quantize": mode,
            "lora_rank": 4,
            "lora_alpha": 8,
            "head": "tokens",
            "steps": 2,
            "batch_size": 4,
            "log_every": 1,
            "device": "cpu",
            **kw,
        }
    )


def _batch(tiny_dataset, policy, batch_size=8):
    sampler = make_sampler(
        open_dataset(tiny_dataset),
        batch_size=batch_size,
        chunk_size=policy.chunk_size,
        seed=0,
        cameras=list(policy.embodiment.camera_names),
    )
    return next(sampler)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_qlora_adapts_every_llm_projection_over_a_quantised_base(mode, tiny_dataset, base_dir, tmp_path):
    run = train(_cfg(tiny_dataset, tmp_path / "run", base_dir, mode))
    policy = restore_policy(run / "last")  # the training-time module: base + adapters

    # Every attention and MLP projection of every decoder layer has an adapter over a quantised base.
    layers = policy.backbone.llm.model.layers
    for i, layer in enumerate(layers):
        for name in LLM_PROJECTIONS:
            module = layer.get_submodule(("self_attn." if name[0] in "qkvo" else "mlp.") + name)
            assert hasattr(module, "lora_A"), f"layer {i} {name} has no LoRA adapter: {type(module).__name__}"
            assert isinstance(module.get_base_layer(), QUANTISED[mode]), (i, name, module.get_base_layer())
    adapted = [n for n, m in policy.named_modules() if hasattr(m, "lora_A") and n.startswith("backbone.llm.")]
    assert len(adapted) == len(LLM_PROJECTIONS) * len(layers)

    # A training step changes adapters and the new head only; the quantised base stays as it was.
    policy.train()
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    new_modules = ("head.", "backbone.state_proj.")  # new for this robot: they train in full
    assert trainable and all("lora_" in n or n.startswith(new_modules) for n in trainable), sorted(
        n for n in trainable if "lora_" not in n
    )
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    batch = _batch(tiny_dataset, policy)
    losses = []
    for _ in range(6):
        loss, _ = policy.compute_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    after = policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= trainable, sorted(changed - trainable)[:5]
    llm_adapters = {k for k in trainable if k.startswith("backbone.llm.")}
    assert llm_adapters and llm_adapters <= changed, sorted(llm_adapters - changed)[:5]
    assert losses[-1] < losses[0], losses

    # The checkpoint's policy is plain and full precision (adapters merged into the dequantised base).
    saved = Policy.from_pretrained(run / "last")
    assert not any(isinstance(m, (Int8Linear, Int4Linear)) for m in saved.modules())
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


def test_qlora_resumes_exactly(tiny_dataset, base_dir, tmp_path):
    straight = train(_cfg(tiny_dataset, tmp_path / "straight", base_dir, "int4", steps=3))
    split = tmp_path / "split"
    train(_cfg(tiny_dataset, split, base_dir, "int4", steps=3), stop_after=1)
    train(_cfg(tiny_dataset, split, base_dir, "int4", steps=3, resume=True))
    a = restore_policy(straight / "last").state_dict()
    b = restore_policy(split / "last").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_qlora_needs_a_base_and_adapters(tiny_dataset, tmp_path):
    with pytest.raises(InputError, match="needs --init"):
        TrainConfig(dataset=str(tiny_dataset), out=str(tmp_path / "r"), quantize="int8", lora_rank=4)
    with pytest.raises(InputError, match="--lora-rank > 0"):
        TrainConfig(dataset=str(tiny_dataset), out=str(tmp_path / "r"), init="x", quantize="int4")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_qlora_on_cuda_trains_adapters_over_bitsandbytes_layers(mode, tiny_dataset, base_dir, tmp_path):
    """On CUDA the base is quantised by bitsandbytes on the GPU and peft's bitsandbytes LoRA layers wrap it."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    bnb = pytest.importorskip("bitsandbytes")
    kind = bnb.nn.Linear8bitLt if mode == "int8" else bnb.nn.Linear4bit
    run = train(_cfg(tiny_dataset, tmp_path / "run", base_dir, mode, device="cuda"))
    policy = restore_policy(run / "last", device="cuda")
    for layer in policy.backbone.llm.model.layers:
        for name in LLM_PROJECTIONS:
            module = layer.get_submodule(("self_attn." if name[0] in "qkvo" else "mlp.") + name)
            assert hasattr(module, "lora_A") and isinstance(module.get_base_layer(), kind), module
            assert module.get_base_layer().weight.device.type == "cuda"
            assert module.lora_A["default"].weight.dtype == torch.float32
    before = {k: v.clone() for k, v in policy.state_dict().items() if v.is_floating_point()}
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    batch = _batch(tiny_dataset, policy, batch_size=4)
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = policy.compute_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    after = policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable, sorted(changed - trainable)[:5]
    saved = Policy.from_pretrained(run / "last")  # merged into the dequantised base: plain layers
    assert not any(type(m).__module__.startswith("bitsandbytes") for m in saved.modules())


def test_an_llm_projection_left_without_an_adapter_is_an_error(tiny_dataset):
    ds = open_dataset(tiny_dataset)
    policy = Policy.from_preset("tiny", "tokens", ds.embodiment(), ds.norm_stats())
    apply_lora(policy, rank=4, alpha=8)
    check_llm_adapted(policy)
    attn = policy.backbone.llm.model.layers[1].self_attn
    attn.v_proj = attn.v_proj.get_base_layer()
    with pytest.raises(
        InputError, match=r"LoRA left 1 of the language model's .*layers\.1\.self_attn\.v_proj"
    ):
        check_llm_adapted(policy)
