"""Named recipes (`vlaforge train --recipe`) and the recipe's training features through the real loop:
augmentation and task balance keep resume bitwise exact, and config.json records the resolved values."""

from __future__ import annotations

import json

import pytest

from vlaforge.errors import InputError
from vlaforge.train import checkpoint as ckpt
from vlaforge.train.config import recipe_config
from vlaforge.train.loop import TrainConfig, train
from vlaforge.train.recipes import RECIPES


def _from_cli(argv: list[str]) -> TrainConfig:
    from vlaforge import cli

    seen = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(cli.CONFIG_COMMANDS, "train", (*cli.CONFIG_COMMANDS["train"][:2], seen.append))
        cli.main(["train", "--dataset", "d", "--out", "o", *argv])
    return seen[0]


def test_a_recipe_sets_the_defaults_and_given_flags_win():
    cfg = _from_cli(["--recipe", "mt50"])
    for key, value in RECIPES["mt50"].items():
        assert getattr(cfg, key) == value, key
    assert cfg.recipe == "mt50"
    # flags given keep their values, including one equal to the plain default (--head chunk)
    mine = _from_cli(["--recipe", "mt50", "--steps", "3000", "--head", "chunk", "--augment-shift", "2"])
    assert (mine.steps, mine.head, mine.augment_shift) == (3000, "chunk", 2)
    assert (mine.balance, mine.batch_size, mine.schedule) == ("tasks", 64, "cosine")
    plain = _from_cli([])
    assert (plain.head, plain.balance, plain.augment_shift, plain.recipe) == ("chunk", "frames", 0, None)
    lib = recipe_config("mt50", dataset="d", out="o", steps=5000)
    assert (lib.steps, lib.head, lib.recipe) == (5000, "flow", "mt50")


def test_unknown_recipe_and_bad_values(tmp_path):
    with pytest.raises(InputError, match="unknown recipe 'mt5'; did you mean 'mt50'"):
        TrainConfig(dataset="d", out=str(tmp_path), recipe="mt5")
    with pytest.raises(SystemExit):
        _from_cli(["--recipe", "mt5"])
    with pytest.raises(InputError, match="augment_shift=-1"):
        TrainConfig(dataset="d", out=str(tmp_path), augment_shift=-1)
    with pytest.raises(InputError, match="balance 'episodes'"):
        TrainConfig(dataset="d", out=str(tmp_path), balance="episodes")


def test_the_small_preset_is_tens_of_millions_of_parameters():
    from vlaforge.models.backbone import PrismaticBackbone
    from vlaforge.models.presets import get_preset

    preset = get_preset("small")
    n = sum(p.numel() for p in PrismaticBackbone(preset, state_dim=4).parameters())
    assert 30e6 < n < 60e6, n
    assert preset.image_size == 128 and preset.n_patches == 64
    assert RECIPES["mt50-small"]["preset"] == "small"


@pytest.mark.slow
def test_recipe_features_resume_exactly(tiny_dataset, tmp_path):
    kw = dict(dataset=str(tiny_dataset), preset="tiny", head="chunk", steps=4, batch_size=4, log_every=1,
              device="cpu", augment_shift=3, balance="tasks", save_every=2)  # fmt: skip
    straight = train(TrainConfig(out=str(tmp_path / "a"), **kw))
    run = tmp_path / "b"
    train(TrainConfig(out=str(run), **kw), stop_after=2)
    train(TrainConfig(out=str(run), resume=True, **kw))
    a = (straight / "last" / "model.safetensors").read_bytes()
    assert a == (run / "last" / "model.safetensors").read_bytes()
    plain = train(TrainConfig(out=str(tmp_path / "c"), **{**kw, "augment_shift": 0}))
    assert a != (plain / "last" / "model.safetensors").read_bytes()  # the shift reaches the model
    saved = json.loads((straight / "config.json").read_text())
    assert (saved["augment_shift"], saved["balance"]) == (3, "tasks")
    assert ckpt.find_last(run).name == "step-0000004"
