"""`DemoConfig` builds the stages' own configs (collection, training, evaluation) from its few fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vlaforge.demo import LOG_EVERY, DemoConfig
from vlaforge.envs.collect import CollectConfig
from vlaforge.errors import InputError
from vlaforge.eval.run import EvalConfig
from vlaforge.train.loop import TrainConfig


def _cfg(tmp_path: Path) -> DemoConfig:
    return DemoConfig(
        tasks="reach-v3,drawer-close-v3", episodes=3, steps=40, eval_episodes=2, out=str(tmp_path / "demo"),
        device="cpu", workers=1, image_size=48, cameras="corner3", batch_size=8, chunk_size=4, lr=3e-4,
        save_every=10, max_steps=77, videos=1, seed=4, eval_seed=44,
    )  # fmt: skip


def test_every_field_is_documented():
    doc = DemoConfig.__doc__.split("Attributes:")[1]
    missing = [f.name for f in dataclasses.fields(DemoConfig) if f"    {f.name}: " not in doc]
    assert missing == []


def test_collect_config(tmp_path):
    cfg = _cfg(tmp_path)
    c = cfg.collect_config()
    assert isinstance(c, CollectConfig)
    assert (c.tasks, c.episodes, c.out, c.image_size, c.cameras, c.workers, c.seed, c.overwrite) == (
        "reach-v3,drawer-close-v3",
        3,
        tmp_path / "demo" / "data",
        48,
        "corner3",
        1,
        4,
        True,
    )
    assert c.max_steps == CollectConfig(out="x").max_steps  # what the demo does not set keeps the default


def test_train_config(tmp_path):
    cfg = _cfg(tmp_path)
    t = cfg.train_config()
    assert isinstance(t, TrainConfig)
    assert t.dataset == str(tmp_path / "demo" / "data") and t.out == str(tmp_path / "demo" / "run")
    set_by_demo = {
        "preset": "tiny", "head": "chunk", "steps": 40, "batch_size": 8, "lr": 3e-4, "schedule": "cosine",
        "warmup_steps": 2, "chunk_size": 4, "save_every": 10, "seed": 4, "device": "cpu", "resume": False,
        "log_every": LOG_EVERY,
    }  # fmt: skip
    assert {k: getattr(t, k) for k in set_by_demo} == set_by_demo
    defaults = TrainConfig(dataset="d", out="o")
    for name in ("grad_accum", "clip_grad", "lora_rank", "lora_alpha", "freeze", "num_workers"):
        assert getattr(t, name) == getattr(defaults, name), name
    assert cfg.train_config(resume=True).resume is True


def test_eval_config(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.policy_dir.mkdir(parents=True)  # EvalConfig checks that the checkpoint directory exists
    e = cfg.eval_config(cfg.policy_dir, tmp_path / "ev")
    assert isinstance(e, EvalConfig)
    assert e.policy == str(tmp_path / "demo" / "run" / "last") and e.out == tmp_path / "ev"
    assert (e.tasks, e.episodes, e.workers, e.max_steps, e.videos, e.seed, e.device) == (
        "reach-v3,drawer-close-v3",
        2,
        1,
        77,
        1,
        44,
        "cpu",
    )
    assert e.allow_training_seeds is False  # the demo never evaluates on its training scenes
    r = cfg.eval_config("random", tmp_path / "r")
    assert r.baseline_cameras == ["corner3"] and r.baseline_image_size == 48


def test_bad_demo_settings(tmp_path):
    with pytest.raises(InputError, match="eval_seed must differ from seed"):
        DemoConfig(seed=3, eval_seed=3)
    with pytest.raises(InputError, match="steps must be >= 1"):
        DemoConfig(steps=0)
    with pytest.raises(InputError, match="batch_size"):
        dataclasses.replace(_cfg(tmp_path), batch_size=0)
