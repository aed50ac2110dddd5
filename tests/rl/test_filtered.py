"""`--algo filtered`: the targets a successful episode gives, the success buffer, and the update's direction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge.envs.registry import get_env
from vlaforge.errors import InputError
from vlaforge.models.policy import Policy
from vlaforge.rl.config import RLConfig
from vlaforge.rl.filtered import SuccessBuffer, episode_targets, filtered_update
from vlaforge.rl.loop import RLRun
from vlaforge.rl.rollout import Batch, Decision

from .conftest import make_stats


def _decision(slot, executed, first, image_value=0, success=False):
    """A decision whose executed actions are rows [first, first + 1, ...] in every dimension."""
    rows = np.arange(first, first + executed, dtype=np.float32)[:, None].repeat(4, 1)
    return Decision(
        slot=slot, images={"corner2": np.full((64, 64, 3), image_value, np.uint8)}, state=np.zeros(4, np.float32),
        instruction=f"task {slot}", record=torch.zeros(8, 4), executed=executed, reward=float(success),
        done=success, success=success, actions=rows,
    )  # fmt: skip


def _episode(slot, sizes, success):
    out, first = [], 0
    # As rollouts give them: each decision's frame a view into its step group's stacked frames.
    group = np.stack([np.full((64, 64, 3), 10 * slot + k, np.uint8) for k in range(len(sizes))])
    for k, n in enumerate(sizes):
        out.append(
            _decision(slot, n, first, image_value=10 * slot + k, success=success and k == len(sizes) - 1)
        )
        out[-1].images["corner2"] = group[k]
        first += n
    return out


def test_targets_are_the_actions_the_episode_executed_from_each_decision():
    # Three decisions executing 3, 3 and 2 of a 4-step chunk: the episode sent actions 0..7.
    actions, pad = episode_targets(_episode(0, [3, 3, 2], True), chunk_size=4)
    assert actions[:, :, 0].tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 7, 7]]
    assert pad.tolist() == [[False] * 4, [False] * 4, [False, False, True, True]]
    assert np.array_equal(actions[..., 0], actions[..., 3])


def test_the_buffer_keeps_successful_episodes_only_drops_the_oldest_and_round_trips():
    decisions = _episode(0, [3, 3, 2], True) + _episode(1, [4, 4], False) + _episode(2, [4, 1], True)
    episodes = [{"slot": s, "success": s != 1} for s in range(3)]
    batch = Batch(decisions=decisions, episodes=episodes, env_steps=21, frames_rendered=0, seconds=0.0)
    buf = SuccessBuffer(capacity=4)
    assert buf.add_batch(batch, chunk_size=4) == 5
    # Five decisions of the two successes; the capacity keeps the last four: episode 0's 2nd and 3rd, episode 2.
    assert len(buf) == 4 and buf.episodes == 2
    assert [img[0, 0, 0] for img in buf.images["corner2"]] == [1, 2, 20, 21]
    assert all(img.base is None for img in buf.images["corner2"])  # copies, not views of whole step groups
    assert buf.instruction == ["task 0", "task 0", "task 2", "task 2"]
    b = buf.batch([3, 0])
    assert b["actions"][:, :, 1].tolist() == [[4, 4, 4, 4], [3, 4, 5, 6]]
    assert b["action_pad"].tolist() == [[False, True, True, True], [False] * 4]
    tensors, meta = buf.state()
    again = SuccessBuffer(capacity=4)
    again.restore(tensors, meta)
    b2 = again.batch([3, 0])
    assert again.episodes == 2 and again.instruction == buf.instruction
    for k in ("actions", "action_pad", "instruction", "state"):
        assert np.array_equal(np.asarray(b[k]), np.asarray(b2[k])), k
    assert np.array_equal(b["images"]["corner2"], b2["images"]["corner2"])
    with pytest.raises(InputError, match="--buffer-size"):
        SuccessBuffer(capacity=5).restore(tensors, meta)


def test_the_update_pulls_the_policy_to_what_its_successes_did():
    """A chunk-head policy that asks for ~0 learns the constant action of a successful episode: its
    prediction on that episode's frame moves most of the way there (and not at all without a success)."""
    emb = get_env("metaworld").embodiment(("corner2",), 64)
    torch.manual_seed(0)
    policy = Policy.from_preset("tiny", "chunk", emb, make_stats(emb.action_dim, emb.state_dim))
    target = np.array([0.5, -0.3, 0.2, 0.4], np.float32)  # robot units, inside the stats' [-0.9, 0.9]
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    decisions = [
        Decision(
            slot=0, images={"corner2": frame}, state=np.zeros(4, np.float32), instruction="close the drawer",
            record=torch.zeros(8, 4), executed=8, reward=float(k == 2), done=k == 2, success=k == 2,
            actions=np.tile(target, (8, 1)),
        )
        for k in range(3)
    ]  # fmt: skip

    def predict():
        obs = {"images": {"corner2": frame[None]}, "state": np.zeros((1, 4), np.float32)}
        return policy.predict_action_batch({**obs, "instruction": ["close the drawer"]})[0]

    cfg = RLConfig(init="x", algo="filtered", lr=1e-3, epochs=8, minibatch=3, device="cpu")
    run = RLRun(cfg, policy, "cpu")
    before = np.abs(predict() - target).mean()
    failed = Batch(decisions, [{"slot": 0, "success": False}], 24, 0, 0.0)
    assert filtered_update(run, failed)["gradient_steps"] == 0
    assert np.abs(predict() - target).mean() == before
    succeeded = Batch(decisions, [{"slot": 0, "success": True}], 24, 0, 0.0)
    for _ in range(10):
        stats = filtered_update(run, succeeded)
    assert stats["gradient_steps"] == 8 and stats["buffer_size"] == 30
    after = np.abs(predict() - target).mean()
    assert before > 0.2 and after < 0.25 * before, (before, after)


def test_filtered_config_checks():
    with pytest.raises(InputError, match="latent freezes"):
        RLConfig(init="x", algo="filtered", flow_rl="latent")
    with pytest.raises(InputError, match="drop --reward dense"):
        RLConfig(init="x", algo="filtered", reward="dense")
    with pytest.raises(InputError, match="ppo, grpo, sac or filtered"):
        RLConfig(init="x", algo="reinforce")
