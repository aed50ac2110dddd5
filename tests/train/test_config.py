"""TrainConfig validation and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest

from vlaforge.train.loop import TrainConfig, lr_at


def test_constant_schedule_with_warmup():
    lrs = [lr_at(s, 1e-3, "constant", 4, 100) for s in range(6)]
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_cosine_schedule_decays_to_zero():
    assert lr_at(0, 1.0, "cosine", 0, 10) == pytest.approx(1.0)
    assert lr_at(5, 1.0, "cosine", 0, 10) == pytest.approx(0.5)
    assert lr_at(10, 1.0, "cosine", 0, 10) == pytest.approx(0.0, abs=1e-12)
    lrs = [lr_at(s, 1.0, "cosine", 2, 12) for s in range(12)]
    assert lrs[:2] == pytest.approx([0.5, 1.0]) and all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert lrs[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"head": "difusion"}, "head"),
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
        ({"schedule": "linear"}, "schedule"),
        ({"warmup_steps": 10, "steps": 10}, "warmup_steps"),
        ({"freeze": "frozen"}, "freeze"),
        ({"device": "tpu"}, "device"),
        ({"save_every": 0}, "save_every"),
    ],
)
def test_bad_config_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(dataset="d", out="o", **kw)


def test_config_round_trips_through_a_dict():
    cfg = TrainConfig(dataset="d", out="o", lr=1e-4, lora_rank=8)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
