"""Which env an evaluation runs in: --env, else the checkpoint's training env, else the default; a
checkpoint trained in another registered env is refused before anything is built."""

from __future__ import annotations

import json

import pytest

from vlaforge.envs.registry import DEFAULT_ENV, get_env
from vlaforge.errors import InputError
from vlaforge.eval.run import EvalConfig, trained_env


def _checkpoint(tmp_path, env, save):
    """An untrained tiny policy whose config.json says it was trained on data collected in `env`."""
    path = save(tmp_path / f"ckpt-{env}", get_env("robosuite").embodiment(("agentview",), 32))
    config = json.loads((path / "config.json").read_text())
    config["training_data"] = {"dataset": "/d", "env": env, "episodes": []}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_the_env_comes_from_the_checkpoint_unless_given(tmp_path, tiny_policy):
    assert trained_env(str(_checkpoint(tmp_path, "robosuite", tiny_policy))) == "robosuite"
    cfg = EvalConfig(policy=str(tmp_path / "ckpt-robosuite"), out=tmp_path / "e")
    spec = get_env("robosuite")
    assert (cfg.env, cfg.tasks, cfg.max_steps) == ("robosuite", spec.default_tasks, spec.max_steps)
    assert trained_env(str(_checkpoint(tmp_path, "synthetic", tiny_policy))) is None  # not a registered env
    assert EvalConfig(policy=str(tmp_path / "ckpt-synthetic"), out=tmp_path / "e").env == DEFAULT_ENV


def test_a_checkpoint_from_another_env_is_refused_in_one_line(tmp_path, tiny_policy):
    path = _checkpoint(tmp_path, "robosuite", tiny_policy)
    with pytest.raises(InputError, match="trained in 'robosuite'.*not in 'metaworld'.*--env robosuite") as e:
        EvalConfig(policy=str(path), env="metaworld", out=tmp_path / "e")
    assert "\n" not in str(e.value)


def test_baselines_take_the_envs_defaults(tmp_path):
    default = EvalConfig(policy="random", out=tmp_path)
    spec = get_env(DEFAULT_ENV)
    assert (default.env, default.max_steps, default.baseline_image_size) == (
        DEFAULT_ENV,
        500,
        spec.image_size,
    )
    assert default.tasks == spec.default_tasks and default.baseline_cameras == list(spec.cameras)
    other = EvalConfig(policy="random", env="robosuite", out=tmp_path)
    assert (other.tasks, other.baseline_cameras, other.baseline_image_size) == ("lift", ["agentview"], 64)
    with pytest.raises(InputError, match="unknown --env 'metawrld'; did you mean 'metaworld'"):
        EvalConfig(policy="random", env="metawrld", out=tmp_path)


@pytest.mark.sim
def test_eval_info_records_the_env(tmp_path):
    pytest.importorskip("robosuite")
    from vlaforge.eval.run import evaluate

    res = evaluate(EvalConfig(policy="expert", env="robosuite", episodes=2, out=tmp_path, workers=0, videos=0,
                              baseline_image_size=32))  # fmt: skip
    proto = res.info["protocol"]
    assert (proto["env"], proto["benchmark"], res.info["tasks"]) == ("robosuite", "robosuite", ["lift"])
    assert res.overall["successes"] == 2
