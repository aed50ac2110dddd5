"""`vlaforge train --init` from a LeRobot pi0 / SmolVLA checkpoint: the whole family model continues on a
vlaforge dataset, freezing names the family's parts, and the run exports back to LeRobot's layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlaforge.cli import main
from vlaforge.models.lerobot_tiny import tiny_embodiment, tiny_policy, write_tokenizer
from vlaforge.models.policy import Policy


@pytest.fixture(scope="module", params=["pi0", "smolvla", "pi0-adarms"])
def base(request, tmp_path_factory):
    """A tiny random checkpoint for a 6-dim robot (the dataset's is 4-dim: its statistics must win); pi0
    also with pi0.5's adaptive-RMSNorm time conditioning."""
    family, _, variant = request.param.partition("-")
    root = tmp_path_factory.mktemp(request.param)
    write_tokenizer(root / "tok")
    emb = tiny_embodiment(action_dim=6, state_dim=6, cameras=("front", "wrist"))
    overrides = {"adarms_time": True} if variant else None
    policy = tiny_policy(family, root / "tok", seed=1, embodiment=emb, overrides=overrides)
    return policy.save_pretrained(root / "ckpt", format="lerobot")


def _dataset_stats(ds):
    from vlaforge.data.dataset import open_dataset

    return open_dataset(str(ds)).norm_stats()


def test_finetune_two_steps_export_and_reload(base, tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--dataset", str(tiny_dataset), "--init", str(base), "--out", str(run), "--steps", "2",
          "--batch-size", "2", "--freeze", "frozen-vision", "--log-every", "1"])  # fmt: skip
    said = capsys.readouterr().out
    assert "normalising with the dataset's statistics (action 4, state 4)" in said
    kind = json.loads((base / "config.json").read_text())["type"]
    assert f"{kind} model" in said
    before = {k[len("model.") :]: v for k, v in load_file(str(base / "model.safetensors")).items()}
    trained = Policy.from_pretrained(run / "last")
    after = {k[len("backbone.model.") :]: v for k, v in trained.state_dict().items()}
    vision = {n for n, _ in trained.backbone.vision.named_parameters()}
    prefix = next(k for k in after if any(k.endswith(v) for v in vision))
    prefix = prefix[: len(prefix) - len(next(v for v in vision if prefix.endswith(v)))]
    for name in vision:  # frozen-vision: the tower did not move
        assert torch.equal(after[prefix + name], before[prefix + name]), name
    moved = [k for k in after if k in before and not torch.equal(after[k], before[k])]
    assert any("expert" in k for k in moved) and any("action_out_proj" in k for k in moved)

    out = tmp_path / "exported"
    main(["export", str(run / "last"), "--format", "lerobot", "--out", str(out)])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["type"] == kind and cfg["output_features"]["action"]["shape"] == [4]
    assert list(cfg["input_features"]) == ["observation.state", "observation.images.corner2"]
    stats = load_file(str(out / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
    want = _dataset_stats(tiny_dataset)
    np.testing.assert_allclose(stats["action.mean"].numpy(), want["action"].mean, rtol=1e-6)
    np.testing.assert_allclose(
        stats["observation.state.std"].numpy(), want["observation.state"].std, rtol=1e-6
    )
    reloaded = Policy.from_pretrained(out)
    rng = np.random.default_rng(0)
    obs = {
        "images": {"corner2": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)},
        "state": rng.standard_normal(4).astype(np.float32),
        "instruction": "reach the goal",
    }
    a = trained.predict_action(obs, generator=torch.Generator().manual_seed(1), num_steps=2)
    b = reloaded.predict_action(obs, generator=torch.Generator().manual_seed(1), num_steps=2)
    np.testing.assert_array_equal(a, b)
    assert trained.embodiment.to_dict() == reloaded.embodiment.to_dict()  # limits and names via vlaforge.json


def test_frozen_vlm_and_lora_train_what_they_name(base, tiny_dataset, tmp_path, capsys):
    from vlaforge.data.dataset import open_dataset
    from vlaforge.train.build import build_policy
    from vlaforge.train.config import TrainConfig

    ds = open_dataset(str(tiny_dataset))
    cfg = TrainConfig(dataset=str(tiny_dataset), out=str(tmp_path / "r"), init=str(base), freeze="frozen-vlm")
    policy, counts = build_policy(cfg, ds.embodiment(), ds.norm_stats())
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    expert = {f"backbone.model.{n}" for n, _ in policy.backbone.model.named_parameters()}
    vlm = {
        id(p)
        for m in (policy.backbone.vision, policy.backbone.projector, policy.backbone.llm)
        for p in m.parameters()
    }
    assert trainable and not any(id(p) in vlm for n, p in policy.named_parameters() if n in trainable)
    assert trainable <= expert and counts["backbone_trainable"] == 0
    cfg = TrainConfig(dataset=str(tiny_dataset), out=str(tmp_path / "l"), init=str(base), lora_rank=2)
    policy, counts = build_policy(cfg, ds.embodiment(), ds.norm_stats())
    llm = {n for n, p in policy.named_parameters() if p.requires_grad and "lora_" in n}
    assert llm and counts["backbone_trainable"] == sum(
        p.numel() for n, p in policy.named_parameters() if n in llm
    )
    assert cfg.schedule == "cosine"  # LeRobot fine-tunes pi0 / SmolVLA with warm-up and cosine decay


def test_a_lora_run_from_a_lerobot_checkpoint_resumes_exactly(base, tiny_dataset, tmp_path):
    from vlaforge.train.loop import TrainConfig, train

    def cfg(out, **kw):
        return TrainConfig(dataset=str(tiny_dataset), out=str(out), init=str(base), steps=3, batch_size=2,
                           log_every=1, device="cpu", lora_rank=2, **kw)  # fmt: skip

    straight = train(cfg(tmp_path / "straight"))
    split = tmp_path / "split"
    train(cfg(split), stop_after=1)
    train(cfg(split, resume=True))
    a, b = (
        load_file(str(straight / "last" / "model.safetensors")),
        load_file(str(split / "last" / "model.safetensors")),
    )
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(str(base / "model.safetensors"))
    assert any(not torch.equal(a["backbone." + k], first[k]) for k in first)  # it trained
