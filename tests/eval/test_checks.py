"""Checkpoints that do not fit Meta-World are refused before any rollout, with the mismatch named."""

import dataclasses
import json

import pytest

from vlaforge.envs.metaworld import embodiment
from vlaforge.errors import InputError
from vlaforge.eval.run import EvalConfig, evaluate


def _refused(tmp_path, emb, match, save):
    ckpt = save(tmp_path / "ckpt", emb)
    out = tmp_path / "eval"
    cfg = EvalConfig(policy=str(ckpt), tasks="reach-v3", episodes=1, out=out, workers=0, max_steps=5)
    with pytest.raises(ValueError, match=match) as e:
        evaluate(cfg)
    assert str(ckpt) in str(e.value)  # the message names the checkpoint
    assert not (out / "eval_info.json").exists() and not (out / "videos").exists()
    return str(e.value)


def test_other_action_space_is_refused(tmp_path, tiny_policy):
    seven_dof = dataclasses.replace(
        embodiment(("corner2",), 32),
        action_dim=7,
        action_names=[f"j{i}" for i in range(6)] + ["gripper"],
        normalize_mask=[True] * 6 + [False],
        action_low=[-1.0] * 7,
        action_high=[1.0] * 7,
    )
    _refused(tmp_path, seven_dof, r"action_dim 7 != 4", tiny_policy)


def test_other_state_is_refused(tmp_path, tiny_policy):
    emb = dataclasses.replace(embodiment(("corner2",), 32), state_dim=8, state_names=[])
    _refused(tmp_path, emb, r"state_dim 8 != 4", tiny_policy)


def test_unknown_camera_is_refused(tmp_path, tiny_policy):
    msg = _refused(tmp_path, embodiment(("wrist_cam",), 32), r"wrist_cam", tiny_policy)
    assert "corner2" in msg  # lists the cameras Meta-World has


def test_missing_policy_dir(tmp_path):
    with pytest.raises(
        InputError, match="neither a checkpoint directory, a baseline .*nor a served policy ws:"
    ):
        EvalConfig(policy=str(tmp_path / "nope"), out=tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"missing \[.config.json."):
        evaluate(EvalConfig(policy=str(tmp_path / "empty"), tasks="reach-v3", episodes=1, out=tmp_path / "o"))


def test_bad_config_values(tmp_path):
    with pytest.raises(ValueError, match="instructions"):
        EvalConfig(policy="expert", instructions="test", out=tmp_path)
    with pytest.raises(ValueError, match="episodes"):
        EvalConfig(policy="expert", episodes=0, out=tmp_path)
    with pytest.raises(InputError, match="video_crf must be in 0..51"):
        EvalConfig(policy="expert", video_crf=52, out=tmp_path)
    with pytest.raises(ValueError, match="did you mean"):
        evaluate(EvalConfig(policy="expert", tasks="reach-v4", out=tmp_path))


def test_fitting_checkpoint_runs_with_its_own_cameras_and_size(tmp_path, tiny_policy):
    ckpt = tiny_policy(tmp_path / "ckpt", embodiment(("corner3",), 40))
    res = evaluate(
        EvalConfig(policy=str(ckpt), tasks="reach-v3", episodes=1, out=tmp_path / "e", workers=0, max_steps=6)
    )
    proto = res.info["protocol"]
    assert proto["cameras"] == ["corner3"] and proto["image_size"] == 40
    assert proto["execute_steps"] >= 1
    ep = res.info["episodes"][0]
    assert ep["steps"] == 6 and ep["success"] is False


def test_execute_steps_longer_than_the_chunk_is_refused(tmp_path, tiny_policy):
    ckpt = tiny_policy(tmp_path / "ckpt", embodiment(("corner2",), 32))
    chunk = json.loads((ckpt / "config.json").read_text())["chunk_size"]
    cfg = EvalConfig(
        policy=str(ckpt), tasks="reach-v3", episodes=1, out=tmp_path / "e", execute_steps=chunk + 1
    )
    with pytest.raises(ValueError, match=f"exceeds the chunk of {chunk}"):
        evaluate(cfg)
