"""Checkpoint formats: the table, crash-safe writes, stale files, and OpenVLA's per-dataset masks."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from openvla_checkpoint import make_dataset_statistics, make_openvla_checkpoint
from openvla_reference import TEST_TIMM_IDS

from vlaforge.models import openvla
from vlaforge.models.policy import Policy
from vlaforge.models.text import format_prompt

for _id, (_kind, _heads) in TEST_TIMM_IDS.items():
    openvla.register_timm_model(_id, _kind, _heads)

INSTRUCTION = "pick up the red block"
# Where each format's writer calls safetensors' save_file (patched to fail mid-way).
OPENVLA_WRITER = "vlaforge.models.formats.openvla"
VLAFORGE_WRITER = "vlaforge.models.formats.vlaforge"


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (36, 44, 3), dtype=np.uint8)


def _snapshot(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _fail_after(monkeypatch, module: str, n_ok: int) -> None:
    """safetensors' save_file in `module` succeeds `n_ok` times, then fails as a full disk does."""
    mod = importlib.import_module(module)
    real, calls = mod.save_file, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > n_ok:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "save_file", flaky)


def test_a_failed_openvla_export_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "ck"
    make_openvla_checkpoint(root, fused=False)
    policy = Policy.from_pretrained(root)
    out = tmp_path / "exported"
    policy.save_pretrained(out, format="openvla", max_shard_bytes=100_000)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    before = _snapshot(out)
    _fail_after(monkeypatch, OPENVLA_WRITER, n_ok=1)  # the writer dies after its first shard
    with pytest.raises(OSError, match="No space left"):
        policy.save_pretrained(out, format="openvla", max_shard_bytes=100_000)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "exported"]  # no staging left behind
    again = Policy.from_pretrained(out)
    img = _image(0)
    inputs = policy.processor(format_prompt(INSTRUCTION), img)
    np.testing.assert_array_equal(again.predict_action(**inputs), policy.predict_action(**inputs))


def test_saving_without_a_mixture_removes_the_old_dataset_stats(h, tmp_path):
    policy = Policy.from_preset("tiny", "chunk", h.embodiment(), h.stats())
    wide = h.stats()
    wide["action"].q99 = wide["action"].q99 * 2
    policy.set_dataset_stats({"a": h.stats(), "b": wide})
    out = policy.save_pretrained(tmp_path / "p")
    assert Policy.from_pretrained(out).unnorm_keys == ["a", "b"]
    policy.set_dataset_stats(None)
    policy.save_pretrained(out)
    assert not (out / "dataset_stats.json").exists()
    again = Policy.from_pretrained(out)
    assert again.unnorm_keys == []
    batch = h.batch(B=2)
    np.testing.assert_array_equal(again.predict_action_batch(batch), policy.predict_action_batch(batch))


def test_a_failed_save_leaves_the_previous_policy_whole(h, tmp_path, monkeypatch):
    policy = Policy.from_preset("tiny", "chunk", h.embodiment(), h.stats())
    out = policy.save_pretrained(tmp_path / "p")
    before = _snapshot(out)
    policy.training_data = {"dataset": "elsewhere"}  # a different config.json
    _fail_after(monkeypatch, VLAFORGE_WRITER, n_ok=0)
    with pytest.raises(OSError, match="No space left"):
        policy.save_pretrained(out)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_saves_into_a_fresh_empty_directory(h, tmp_path):
    """Training checkpoints save the policy into a staging directory they created (empty)."""
    staging = tmp_path / ".tmp-step"
    staging.mkdir()
    policy = Policy.from_preset("tiny", "chunk", h.embodiment(), h.stats())
    assert policy.save_pretrained(staging) == staging
    (staging / "trainer_state.json").write_text("{}")  # what the checkpoint writer adds afterwards
    assert Policy.from_pretrained(staging).chunk_size == policy.chunk_size
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-step"]


def test_loads_in_another_dtype(h, tmp_path):
    policy = Policy.from_preset("tiny", "chunk", h.embodiment(), h.stats())
    out = policy.save_pretrained(tmp_path / "p")
    half = Policy.from_pretrained(out, dtype="bfloat16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    for (name, a), b in zip(policy.state_dict().items(), half.state_dict().values()):
        assert torch.equal(a.to(b.dtype), b), name


def _two_mask_stats() -> dict:
    stats = make_dataset_statistics(["bridge_orig", "other_robot", "no_mask"])
    stats["bridge_orig"]["action"]["mask"] = [True] * 6 + [False]  # gripper passes through
    stats["other_robot"]["action"]["mask"] = [False] + [True] * 6  # its own mask
    del stats["no_mask"]["action"]["mask"]  # absent: every dim un-normalised (OpenVLA's default)
    return stats


def test_openvla_datasets_with_different_masks_unnormalise_with_their_own(tmp_path):
    root = tmp_path / "ck"
    ref = make_openvla_checkpoint(root, fused=False, datasets=_two_mask_stats())
    policy = Policy.from_pretrained(root)
    for seed, key in [(1, "bridge_orig"), (2, "other_robot"), (3, "no_mask")]:
        img = _image(seed)
        inputs = policy.processor(format_prompt(INSTRUCTION), img)
        ids = ref.predict_ids(ref.pixel_values(img), inputs["input_ids"], key)
        stats = ref.dataset_statistics[key]["action"]
        mask = np.asarray(stats.get("mask", [True] * 7), dtype=bool)
        bins = np.linspace(-1, 1, 256)
        centres = (bins[:-1] + bins[1:]) / 2
        norm = centres[np.clip(32000 - np.asarray(ids) - 1, 0, 254)]
        q01, q99 = np.asarray(stats["q01"]), np.asarray(stats["q99"])
        want = np.where(mask, 0.5 * (norm + 1) * (q99 - q01) + q01, norm)
        got = policy.predict_action(**inputs, unnorm_key=key)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-6)
    # The per-key masks survive a round trip through both formats.
    for fmt in ("vlaforge", "openvla"):
        again = Policy.from_pretrained(policy.save_pretrained(tmp_path / fmt, format=fmt))
        img = _image(4)
        inputs = policy.processor(format_prompt(INSTRUCTION), img)
        for key in ("bridge_orig", "other_robot", "no_mask"):
            np.testing.assert_array_equal(
                again.predict_action(**inputs, unnorm_key=key),
                policy.predict_action(**inputs, unnorm_key=key),
            )


def test_the_table_dispatches_and_refuses_what_it_cannot_replace(h, tmp_path):
    from vlaforge.errors import InputError
    from vlaforge.models.formats import FORMATS, detect_format, get_format

    assert list(FORMATS) == ["vlaforge", "lerobot", "openvla"]
    policy = Policy.from_preset("tiny", "chunk", h.embodiment(), h.stats())
    out = policy.save_pretrained(tmp_path / "p")
    assert detect_format(out).name == "vlaforge"
    with pytest.raises(InputError, match="did you mean 'openvla'"):
        get_format("openvl")
    with pytest.raises(InputError, match="do not apply to format 'vlaforge'"):
        policy.save_pretrained(tmp_path / "q", max_shard_bytes=1)
    with pytest.raises(InputError, match="cannot be written as an OpenVLA checkpoint"):
        policy.save_pretrained(tmp_path / "q", format="openvla")
    with pytest.raises(InputError, match="only pi0 / SmolVLA policies can be written in LeRobot's layout"):
        policy.save_pretrained(tmp_path / "q", format="lerobot")
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="no checkpoint; a save replaces its directory whole"):
        policy.save_pretrained(home)
    assert (home / "notes.txt").read_text() == "mine"
    link = tmp_path / "last"
    link.symlink_to(out)
    assert policy.save_pretrained(link) == out  # a symlink (RUN/last) is followed, not replaced
    assert link.is_symlink() and Policy.from_pretrained(link).chunk_size == policy.chunk_size
