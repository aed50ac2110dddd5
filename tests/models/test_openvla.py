"""OpenVLA checkpoints in and out, checked against an independent reimplementation of OpenVLA's math.

`openvla_checkpoint.py` writes small checkpoints in OpenVLA's Hugging Face layout (timm key names, fused
qkv, `scale_factor`, registers, sharded safetensors + index) and `openvla_reference.py` computes logits and
actions from the published definitions (timm ViT, Prismatic projector, Llama-2, OpenVLA's action decoding), sharing no
code with vlaforge. Every value here is compared with it at fp32.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from openvla_checkpoint import make_openvla_checkpoint
from openvla_reference import TEST_TIMM_IDS, decode_action_ids
from safetensors import safe_open

from vlaforge.errors import InputError
from vlaforge.models import openvla
from vlaforge.models.policy import Policy
from vlaforge.models.text import LLAMA_EMPTY_TOKEN, format_prompt
from vlaforge.models.vision import resize_pil

for _id, (_kind, _heads) in TEST_TIMM_IDS.items():
    openvla.register_timm_model(_id, _kind, _heads)

INSTRUCTION = "pick up the red block"


@pytest.fixture(scope="module", params=["fused", "siglip"])
def checkpoint(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"openvla_{request.param}")
    ref = make_openvla_checkpoint(
        root, fused=request.param == "fused", datasets=("bridge_orig", "fractal20220817_data")
    )
    return root, ref


@pytest.fixture(scope="module")
def policy(checkpoint):
    return Policy.from_pretrained(checkpoint[0])


def _image(seed: int, h: int = 40, w: int = 52) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _shard_tensors(root) -> dict[str, torch.Tensor]:
    index = json.loads((root / openvla.INDEX_FILE).read_text())["weight_map"]
    out = {}
    for name in sorted(set(index.values())):
        with safe_open(str(root / name), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    return out


def test_logits_match_the_reference(checkpoint, policy):
    root, ref = checkpoint
    img = _image(0)
    inputs = policy.processor(format_prompt(INSTRUCTION), img)
    pv = ref.pixel_values(img)
    assert torch.equal(inputs["pixel_values"], pv)  # bicubic resize and per-tower normalisation, bit for bit
    ids = inputs["input_ids"]
    assert ids[0].tolist() == ref.prompt_ids(INSTRUCTION)
    bb = policy.backbone
    with torch.no_grad():
        seq = bb.assemble([pv], None, [ids[0, 1:].tolist()])
        hidden, _ = bb.run(seq)
        logits = bb.lm_head(hidden).float()
    want = ref.logits(pv, ids)
    assert logits.shape == want.shape
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)


def test_predict_action_matches_openvla_in_both_forms(checkpoint, policy):
    root, ref = checkpoint
    for seed, key in [(1, "bridge_orig"), (2, "fractal20220817_data")]:
        img = _image(seed)
        inputs = policy.processor(format_prompt(INSTRUCTION), img)
        want = ref.predict_action(ref.pixel_values(img), inputs["input_ids"], key)
        got = policy.predict_action(**inputs, unnorm_key=key)
        assert got.shape == (7,)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-6)
        obs = policy.predict_action({"images": img, "instruction": INSTRUCTION}, unnorm_key=key)
        np.testing.assert_allclose(obs[0], want, atol=1e-5, rtol=1e-6)
        # The ids themselves, through the token head, equal OpenVLA's greedy ids.
        ids = policy.head.decode_ids(policy.backbone, policy._openvla_context(inputs))
        assert ids[0].tolist() == ref.predict_ids(ref.pixel_values(img), inputs["input_ids"], key)


def test_ids_outside_the_action_range_decode_as_openvla(checkpoint, policy):
    _, ref = checkpoint
    ids = torch.tensor([[5, 31743, 31744, 31871, 31999, 32000, 32063]])  # text ids, edges, padding rows
    norm = policy.head.ids_to_actions(ids).numpy()[:, 0]  # (1, D)
    got = policy._norms_for("bridge_orig")[0].unnormalize(norm)[0]
    want = decode_action_ids(ids[0].tolist(), ref.dataset_statistics["bridge_orig"]["action"])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_token_29871_is_appended_once(policy):
    img = _image(3)
    inputs = policy.processor(format_prompt(INSTRUCTION), img)
    with_token = dict(inputs)
    with_token["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([[LLAMA_EMPTY_TOKEN]])], 1)
    with_token["attention_mask"] = torch.ones_like(with_token["input_ids"])
    ctx_a, ctx_b = policy._openvla_context(inputs), policy._openvla_context(with_token)
    assert ctx_a.prompt_ids == ctx_b.prompt_ids
    assert ctx_a.prompt_ids[0][-1] == LLAMA_EMPTY_TOKEN and ctx_a.prompt_ids[0][-2] != LLAMA_EMPTY_TOKEN


def test_batched_equals_one_by_one(policy):
    prompts = [format_prompt(INSTRUCTION), format_prompt("pick up the block")]
    images = [_image(4), _image(5, 64, 48)]
    batch = policy.predict_action(**policy.processor(prompts, images), unnorm_key="bridge_orig")
    assert batch.shape == (2, 7)
    for b in range(2):
        one = policy.predict_action(**policy.processor(prompts[b], images[b]), unnorm_key="bridge_orig")
        np.testing.assert_allclose(batch[b], one, atol=1e-5)


def test_unnorm_key_errors(policy):
    inputs = policy.processor(format_prompt(INSTRUCTION), _image(6))
    with pytest.raises(InputError, match="pass unnorm_key, one of .*bridge_orig.*fractal20220817_data"):
        policy.predict_action(**inputs)
    with pytest.raises(InputError, match="'bridg' is not one of .*bridge_orig"):
        policy.predict_action(**inputs, unnorm_key="bridg")


def test_round_trip_is_bit_identical(checkpoint, policy, tmp_path):
    root, ref = checkpoint
    (root / "modeling_prismatic.py").write_text("# OpenVLA's modeling code, as a hub download holds it\n")
    out = policy.save_pretrained(tmp_path / "back", format="openvla", max_shard_bytes=200_000)
    assert (out / "modeling_prismatic.py").read_text() == (root / "modeling_prismatic.py").read_text()
    assert not (out / "processing_prismatic.py").exists()
    original, written = _shard_tensors(root), _shard_tensors(out)
    assert set(written) == set(original)
    for k in original:
        assert written[k].dtype == original[k].dtype and torch.equal(written[k], original[k]), k
    assert len(set(json.loads((out / openvla.INDEX_FILE).read_text())["weight_map"].values())) > 1
    assert json.loads((out / "dataset_statistics.json").read_text()) == ref.dataset_statistics
    cfg_in, cfg_out = (
        json.loads((root / "config.json").read_text()),
        json.loads((out / "config.json").read_text()),
    )
    for key in (
        "timm_model_ids",
        "image_sizes",
        "use_fused_vision_backbone",
        "pad_to_multiple_of",
        "n_action_bins",
    ):
        assert cfg_out[key] == cfg_in[key]
    again = Policy.from_pretrained(out)
    a, b = policy.state_dict(), again.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loads_in_bfloat16_without_meta_tensors(checkpoint):
    root, _ = checkpoint
    p = Policy.from_pretrained(root, dtype="bfloat16")
    assert {t.dtype for t in p.parameters()} == {torch.bfloat16}
    assert not any(t.is_meta for t in list(p.parameters()) + list(p.buffers()))
    act = p.predict_action({"images": _image(7), "instruction": INSTRUCTION}, unnorm_key="bridge_orig")
    assert act.shape == (1, 7) and np.isfinite(act).all()


def test_missing_shard_and_wrong_tensors_are_named(checkpoint, tmp_path):
    root, _ = checkpoint
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    shard = sorted(bad.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(InputError, match=f"shard.*{shard.name}.*missing"):
        Policy.from_pretrained(bad)

    extra = tmp_path / "extra"
    shutil.copytree(root, extra)
    tensors = _shard_tensors(extra)
    tensors["vision_backbone.featurizer.blocks.99.norm1.weight"] = torch.zeros(1)
    del tensors["projector.fc2.bias"]
    for f in extra.glob("model-*.safetensors"):
        f.unlink()
    from safetensors.torch import save_file

    save_file(tensors, str(extra / "model.safetensors"))
    (extra / openvla.INDEX_FILE).unlink()
    with pytest.raises(
        InputError,
        match=r"1 missing \['projector.fc2.bias'\].*1 unexpected \['vision_backbone.featurizer.blocks.99",
    ):
        Policy.from_pretrained(extra)


def test_unknown_tower_and_missing_stats_are_clear(tmp_path):
    root = tmp_path / "ck"
    make_openvla_checkpoint(root, fused=False)
    cfg = json.loads((root / "config.json").read_text())
    cfg["timm_model_ids"] = ["vit_mystery_patch14"]
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="vit_mystery_patch14.*register_timm_model"):
        Policy.from_pretrained(root)
    root2 = tmp_path / "ck2"
    make_openvla_checkpoint(root2, fused=False)
    (root2 / "dataset_statistics.json").unlink()
    cfg = json.loads((root2 / "config.json").read_text())
    cfg.pop("norm_stats")
    (root2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="no dataset_statistics.json"):
        Policy.from_pretrained(root2)


def test_7b_preset_from_the_cli_asks_for_its_tokenizer(tmp_path):
    from vlaforge.data.synth import SynthConfig, write_synthetic
    from vlaforge.train.loop import TrainConfig, train

    data = write_synthetic(SynthConfig(out=str(tmp_path / "d"), episodes=1, length=8, image_size=32, tasks=1))
    cfg = TrainConfig(
        dataset=str(data), out=str(tmp_path / "run"), preset="openvla-7b", head="tokens", steps=1
    )
    with pytest.raises(InputError, match="--tokenizer-path DIR"):
        train(cfg)  # refused before any 7B tensor is allocated


def test_offline_hub_id_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="huggingface-cli download"):
        Policy.from_pretrained("nobody-here/no-such-openvla")


def test_resize_strategies_follow_the_processor():
    img = _image(8, 30, 50)
    # letterbox: pad the short side by floor(diff / 2) each side with the mean colour, then as resize-crop
    out = resize_pil(img, 28, "letterbox", (127, 127, 127))
    assert out.shape == (28, 28, 3)
    assert (out[0] == 127).all() and (out[-1] == 127).all()  # the padded rows stay the fill colour
    crop = resize_pil(img, 28, "resize-crop")
    from PIL import Image

    scaled = np.asarray(Image.fromarray(img).resize((46, 28), Image.BICUBIC))  # int(28 * 50 / 30) = 46
    np.testing.assert_array_equal(crop, scaled[:, 9:37])


def test_fine_tune_then_give_back(tmp_path):
    """`train --init` an OpenVLA checkpoint on a 4-D robot with LoRA, export it in OpenVLA's layout, and
    check the written checkpoint with the reference implementation: the new dataset's statistics are its
    unnorm key and OpenVLA's math on the written tensors gives the policy's actions."""
    from dataclasses import replace

    from vlaforge.data.synth import SynthConfig, write_synthetic
    from vlaforge.train.loop import TrainConfig, train

    root = tmp_path / "base"
    ref = make_openvla_checkpoint(root, fused=True)
    data = write_synthetic(
        SynthConfig(out=str(tmp_path / "my_robot"), episodes=2, length=12, image_size=32, tasks=1)
    )
    cfg = TrainConfig(
        dataset=str(data),
        out=str(tmp_path / "run"),
        init=str(root),
        head="tokens",
        steps=2,
        batch_size=2,
        lora_rank=4,
        log_every=1,
        device="cpu",
    )
    run = train(cfg)
    tuned = Policy.from_pretrained(run / "last")
    assert tuned.embodiment.action_dim == 4 and tuned.preset.image_resize == "bicubic-pil"
    out = tuned.save_pretrained(tmp_path / "back", format="openvla")
    stats = json.loads((out / "dataset_statistics.json").read_text())
    assert list(stats) == ["my_robot"] and len(stats["my_robot"]["action"]["q01"]) == 4
    assert json.loads((out / "config.json").read_text())["norm_stats"] == stats

    written = replace(
        ref, state={k: v.float() for k, v in _shard_tensors(out).items()}, dataset_statistics=stats
    )
    moved = [k for k in ref.state if not torch.equal(ref.state[k], written.state[k])]
    assert any(k.startswith("language_model.") for k in moved)  # LoRA merged into the written weights
    img = _image(9)
    back = Policy.from_pretrained(out)
    inputs = back.processor(format_prompt(INSTRUCTION), img)
    got = back.predict_action(**inputs, unnorm_key="my_robot")
    want = written.predict_action(written.pixel_values(img), inputs["input_ids"], "my_robot")
    assert got.shape == (4,)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(
        tuned.predict_action({"images": img, "instruction": INSTRUCTION})[0], got, atol=1e-5
    )


def test_served_over_openvla_http(checkpoint, policy):
    """`vlaforge serve --policy OPENVLA_DIR` answers OpenVLA's POST /act as its deploy script does."""
    import urllib.request

    import json_numpy

    from vlaforge.serve.server import ServeConfig, ServerThread, load_served_policy

    root, _ = checkpoint
    cfg = ServeConfig(policy=str(root), port=0, resize_images=True, max_wait_ms=1)
    served, info = load_served_policy(cfg)
    assert info["checkpoint"] == root.name
    img = _image(10)
    body = json_numpy.dumps({"image": img, "instruction": INSTRUCTION, "unnorm_key": "fractal20220817_data"})
    with ServerThread(served, cfg, info) as srv:
        req = urllib.request.Request(
            srv.http + "/act", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            action = json_numpy.loads(r.read().decode())
    want = policy.predict_action(
        {"images": img, "instruction": INSTRUCTION}, unnorm_key="fractal20220817_data"
    )[0]
    np.testing.assert_allclose(action, want, atol=1e-6)


def test_int8_at_load_stays_close_to_full_precision(checkpoint, policy):
    root, _ = checkpoint
    q = Policy.from_pretrained(root, quantize="int8")
    assert q.quantization["mode"] == "int8" and q.quantization["layers"] > 0
    for seed in (11, 12):
        inputs = policy.processor(format_prompt(INSTRUCTION), _image(seed))
        full = policy.head.decode(policy.backbone, policy._openvla_context(inputs))[1]
        quant = q.head.decode(q.backbone, q._openvla_context(inputs))[1]
        # per-channel int8 weights move the first action token's logits by a small fraction of their spread
        assert (full[:, 0] - quant[:, 0]).abs().max() < 0.05 * full[:, 0].std()
