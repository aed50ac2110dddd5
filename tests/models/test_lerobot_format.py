"""LeRobot's pi0 / SmolVLA checkpoint layout: written as LeRobot writes it, loaded as a vlaforge `Policy`
whose predictions are the family model's own `sample_actions` (computed here from the files, beside the
policy), saved back bit-identically, and refused with clear errors when something does not fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vlaforge.errors import InputError
from vlaforge.models.family import FAMILIES, HFTokenizer, family_classes, family_config
from vlaforge.models.formats import detect_format
from vlaforge.models.formats.base import tied_groups
from vlaforge.models.lerobot_tiny import write_tiny
from vlaforge.models.policy import Policy

FAMILY_TYPES = ["pi0", "smolvla"]
PRE, POST = "policy_preprocessor", "policy_postprocessor"


@pytest.fixture(scope="module", params=[*FAMILY_TYPES, "pi0-adarms"])
def checkpoint(request, tmp_path_factory) -> Path:
    """A tiny random checkpoint of each family in LeRobot's layout (with a tokenizer.json), and pi0 with
    pi0.5's adaptive-RMSNorm time conditioning."""
    family, _, variant = request.param.partition("-")
    overrides = {"adarms_time": True} if variant else None
    return write_tiny(tmp_path_factory.mktemp(request.param) / "ckpt", family, seed=3, overrides=overrides)


def _json(path: Path):
    return json.loads(path.read_text())


def test_the_files_are_lerobots(checkpoint):
    cfg = _json(checkpoint / "config.json")
    assert cfg["type"] in FAMILIES and detect_format(checkpoint).name == "lerobot"
    # vlaforge's pi0.5 time-conditioning key is written only when on (LeRobot's own configs lack it)
    assert cfg.get("adarms_time", False) is ("adarms" in checkpoint.parent.name)
    assert cfg["input_features"] == {
        "observation.state": {"type": "STATE", "shape": [4]},
        "observation.images.image": {"type": "VISUAL", "shape": [3, 64, 64]},
    }
    assert cfg["output_features"] == {"action": {"type": "ACTION", "shape": [4]}}
    assert cfg["normalization_mapping"] == {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
    pre, post = _json(checkpoint / f"{PRE}.json"), _json(checkpoint / f"{POST}.json")
    # The steps of LeRobot 0.4's make_pi0_pre_post_processors / make_smolvla_pre_post_processors.
    assert [s["registry_name"] for s in pre["steps"]] == [
        "rename_observations_processor",
        "to_batch_processor",
        f"{cfg['type']}_new_line_processor",
        "tokenizer_processor",
        "device_processor",
        "normalizer_processor",
    ]
    assert [s["registry_name"] for s in post["steps"]] == ["unnormalizer_processor", "device_processor"]
    assert pre["name"] == PRE and post["name"] == POST
    norm, unnorm = pre["steps"][5], post["steps"][0]
    assert norm["state_file"] == "policy_preprocessor_step_5_normalizer_processor.safetensors"
    assert unnorm["state_file"] == "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
    assert norm["config"]["features"] == {**cfg["input_features"], **cfg["output_features"]}
    assert unnorm["config"]["features"] == cfg["output_features"]
    assert norm["config"]["norm_map"] == cfg["normalization_mapping"] and norm["config"]["eps"] == 1e-8
    tok = pre["steps"][3]["config"]
    assert tok["padding_side"] == "right" and tok["tokenizer_name"] == FAMILIES[cfg["type"]].tokenizer_hint
    stats = load_file(str(checkpoint / norm["state_file"]))
    assert {"action.mean", "action.std", "observation.state.mean", "observation.state.std"} <= set(stats)
    assert all(t.dtype == torch.float32 for t in stats.values())
    # model.safetensors: the family model's state dict under LeRobot's `model.` prefix.
    _, model_cls = family_classes(cfg["type"])
    expected = {"model." + k for k in model_cls(family_config(cfg["type"], cfg)).state_dict()}
    assert set(load_file(str(checkpoint / "model.safetensors"))) <= expected


def _reference(checkpoint: Path, obs: dict, noise: torch.Tensor, num_steps: int) -> np.ndarray:
    """The family model's own `sample_actions` on inputs built here from the files: weights from
    model.safetensors (LeRobot's keys minus `model.`), statistics from the unnormalizer's safetensors,
    images resized with padding to the family's resolution in [-1, 1], the prompt tokenized with a newline."""
    import torch.nn.functional as F

    cfg = _json(checkpoint / "config.json")
    kind = cfg["type"]
    _, model_cls = family_classes(kind)
    model = model_cls(family_config(kind, cfg))
    weights = {k[len("model.") :]: v for k, v in load_file(str(checkpoint / "model.safetensors")).items()}
    model.load_state_dict(weights, strict=False)  # tied tensors are stored once
    model.eval()
    stats = load_file(str(checkpoint / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
    res = cfg["image_resolution" if kind == "pi0" else "resize_imgs_with_padding"]
    img = torch.from_numpy(obs["images"]["image"]).permute(2, 0, 1)[None].float() / 255.0
    img = F.interpolate(img, size=tuple(res), mode="bilinear", align_corners=False)  # square: no padding
    tok = HFTokenizer(checkpoint)
    ids = tok.tok.encode(obs["instruction"] + "\n").ids[: cfg["tokenizer_max_length"]]
    L = len(ids) if kind == "smolvla" else cfg["tokenizer_max_length"]
    tokens = torch.full((1, L), tok.pad_id)
    tokens[0, : len(ids)] = torch.tensor(ids)
    mask = torch.arange(L)[None] < len(ids)
    s = torch.from_numpy(obs["state"])
    state = torch.zeros(1, cfg["max_state_dim"])
    state[0, :4] = (s - stats["observation.state.mean"]) / (stats["observation.state.std"] + 1e-8)
    with torch.no_grad():
        out = model.sample_actions(
            [img * 2 - 1],
            [torch.ones(1, dtype=torch.bool)],
            tokens,
            mask,
            state,
            noise=noise,
            num_steps=num_steps,
        )
    return (out[0, :, :4] * stats["action.std"] + stats["action.mean"]).numpy()


def test_predictions_are_the_family_models_sample_actions(checkpoint):
    policy = Policy.from_pretrained(checkpoint)
    assert policy.family == _json(checkpoint / "config.json")["type"] and policy.norm_mode == "mean_std"
    rng = np.random.default_rng(0)
    obs = {
        "images": {"image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)},
        "state": rng.standard_normal(4).astype(np.float32),
        "instruction": "pick up the cube",
    }
    H, A = policy.chunk_size, policy.head.max_action_dim
    got = policy.predict_action(obs, generator=torch.Generator().manual_seed(7), num_steps=3)
    noise = torch.randn(1, H, A, generator=torch.Generator().manual_seed(7))
    want = _reference(checkpoint, obs, noise, num_steps=3)
    assert got.shape == (H, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    other = policy.predict_action(obs, generator=torch.Generator().manual_seed(8), num_steps=3)
    assert not np.allclose(other, got)  # the noise matters: the comparison above can fail
    # Batched evaluation gives each sample its own generator: each gets what it would get alone.
    batch = {
        "images": {"image": np.stack([obs["images"]["image"]] * 2)},
        "state": np.stack([obs["state"]] * 2),
        "instruction": [obs["instruction"]] * 2,
    }
    gens = [torch.Generator().manual_seed(8), torch.Generator().manual_seed(7)]
    both = policy.predict_action_batch(batch, generator=gens, num_steps=3)
    np.testing.assert_allclose(both[0], other, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both[1], got, rtol=1e-5, atol=1e-5)


def _same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name.endswith(".safetensors"):
            ta, tb = load_file(str(a / name)), load_file(str(b / name))
            assert sorted(ta) == sorted(tb), name
            for k in ta:
                assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), (name, k)
        elif name.endswith(".json"):
            assert _json(a / name) == _json(b / name), name
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_load_save_load_is_bit_identical(checkpoint, tmp_path):
    first = Policy.from_pretrained(checkpoint)
    out = first.save_pretrained(tmp_path / "again", format="lerobot")
    _same_files(checkpoint, out)
    again = Policy.from_pretrained(out).save_pretrained(tmp_path / "twice", format="lerobot")
    _same_files(out, again)
    # Through vlaforge's own format (what training checkpoints are) and back, the LeRobot files are
    # rebuilt from the policy alone: the same tensors and JSON.
    mid = first.save_pretrained(tmp_path / "vlaforge")
    _same_files(checkpoint, Policy.from_pretrained(mid).save_pretrained(tmp_path / "back", format="lerobot"))


def test_a_lerobot_checkpoint_is_loaded_on_the_meta_device_and_mapped(checkpoint):
    policy = Policy.from_pretrained(checkpoint)
    weights = load_file(str(checkpoint / "model.safetensors"))
    state = policy.state_dict()
    for k, t in weights.items():
        assert torch.equal(state["backbone." + k], t)
    assert policy._keep_alive.path == checkpoint / "model.safetensors"  # tensors share the file's pages
    cfg = _json(checkpoint / "config.json")
    _, model_cls = family_classes(cfg["type"])
    fresh = tied_groups(model_cls(family_config(cfg["type"], cfg)))
    assert tied_groups(policy.backbone.model) == fresh  # tied embeddings are one parameter again


def test_a_config_of_an_unknown_type_is_refused(checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    cfg = _json(bad / "config.json")
    cfg["type"] = "smolvl"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="unknown model family 'smolvl'; did you mean 'smolvla'"):
        Policy.from_pretrained(bad, format="lerobot")


def test_a_missing_statistics_file_is_refused(checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    (bad / "policy_preprocessor_step_5_normalizer_processor.safetensors").unlink()
    with pytest.raises(
        InputError, match="policy_preprocessor_step_5_normalizer_processor.safetensors: missing"
    ):
        Policy.from_pretrained(bad)


def test_weights_that_do_not_fit_name_the_key_and_shapes(checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    weights = load_file(str(bad / "model.safetensors"))
    key = "model.action_in_proj.weight"
    shape = tuple(weights[key].shape)
    weights[key] = torch.zeros(shape[0] + 1, shape[1])
    save_file(weights, str(bad / "model.safetensors"))
    want = rf"tensor '{key}' has shape \({shape[0] + 1}, {shape[1]}\).*expects \({shape[0]}, {shape[1]}\)"
    with pytest.raises(InputError, match=want):
        Policy.from_pretrained(bad)


def test_a_checkpoint_without_a_tokenizer_says_where_to_get_one(checkpoint, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(checkpoint, bare)
    (bare / "tokenizer.json").unlink()
    hint = FAMILIES[_json(bare / "config.json")["type"]].tokenizer_hint
    with pytest.raises(InputError, match=f"do not carry their tokenizer.*{hint}"):
        Policy.from_pretrained(bare)
    policy = Policy.from_pretrained(bare, tokenizer=checkpoint)  # a tokenizer directory given apart
    assert policy.text.path == str(checkpoint)


def test_hub_ids_of_the_families_go_to_the_lerobot_format(monkeypatch):
    import huggingface_hub

    assert detect_format("lerobot/smolvla_base").name == "lerobot"
    assert detect_format("lerobot/pi0").name == "lerobot"
    assert detect_format("openvla/openvla-7b").name == "openvla"
    asked = {}

    def offline(repo, allow_patterns):
        asked.update(repo=repo, allow=allow_patterns)
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(InputError, match="huggingface-cli download lerobot/smolvla_base --local-dir DIR"):
        Policy.from_pretrained("lerobot/smolvla_base")
    assert asked == {"repo": "lerobot/smolvla_base", "allow": ["*.json", "*.safetensors"]}  # no code
