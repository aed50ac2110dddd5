"""A policy reading the last T observations: every frame is read like another camera, the T states are one
token, shapes are checked, and evaluation's buffer feeds it what the sampler trains it on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge.errors import InputError
from vlaforge.eval.baselines import PolicyController
from vlaforge.models.policy import Policy
from vlaforge.types import Observation

T = 2


def history_batch(h, B=3, seed=0):
    batch = h.batch(B=B, H=8, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    batch["images"] = {
        c: torch.randint(0, 256, (B, T, 48, 48, 3), generator=g, dtype=torch.uint8) for c in batch["images"]
    }
    batch["state"] = torch.randn(B, T, batch["state"].shape[-1], generator=g)
    return batch


@pytest.fixture
def policy(h):
    return Policy.from_preset("tiny", "chunk", h.embodiment(), h.stats(), history=T)


def test_frames_are_read_like_cameras_and_the_older_one_matters(policy, h):
    batch = history_batch(h)
    imgs = batch["images"]["corner2"]
    bb = policy.backbone
    with torch.no_grad():
        torch.testing.assert_close(
            bb.embed_images([imgs]), bb.embed_images([imgs[:, 0], imgs[:, 1]]), rtol=0, atol=0
        )
    assert bb.state_proj.in_features == T * policy.embodiment.state_dim
    loss, _ = policy.compute_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and bb.state_proj.weight.grad.abs().sum() > 0
    a = policy.predict_action_batch(batch)
    older = dict(batch, images={"corner2": imgs.clone()})
    older["images"]["corner2"][:, 0] = 255 - older["images"]["corner2"][:, 0]
    assert np.abs(policy.predict_action_batch(older) - a).max() > 1e-4


def test_shapes_are_checked_and_saved(policy, h, tmp_path):
    batch = history_batch(h, B=1)
    obs = {
        "images": {"corner2": batch["images"]["corner2"][0].numpy()},
        "state": batch["state"][0].numpy(),
        "instruction": "open the drawer",
    }
    np.testing.assert_allclose(policy.predict_action(obs), policy.predict_action_batch(batch)[0], atol=1e-6)
    with pytest.raises(InputError, match=r"\(2, H, W, 3\), oldest first"):
        policy.predict_action({**obs, "images": {"corner2": obs["images"]["corner2"][0]}})
    with pytest.raises(InputError, match=r"expects \(1, 2, 6\)"):
        policy.predict_action({**obs, "state": obs["state"][0]})
    again = Policy.from_pretrained(policy.save_pretrained(tmp_path / "p"))
    assert again.history == T
    np.testing.assert_array_equal(again.predict_action(obs), policy.predict_action(obs))


def test_the_evaluation_buffer_pads_with_the_first_observation(policy, h):
    rng = np.random.default_rng(0)

    def ob():
        return Observation(
            images={"corner2": rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)},
            state=rng.normal(size=6).astype(np.float32),
            instruction="open the drawer",
        )

    ctl = PolicyController(policy)
    ctl.reset(0)
    o1, o2, o3 = ob(), ob(), ob()

    def direct(frames):
        stacked = {
            "images": {"corner2": np.stack([f.images["corner2"] for f in frames])},
            "state": np.stack([f.state for f in frames]),
            "instruction": "open the drawer",
        }
        return policy.predict_action(stacked)

    ctl.observe(o1)
    np.testing.assert_array_equal(ctl.act(o1, None), direct([o1, o1]))  # padded at the episode's start
    ctl.observe(o2)
    ctl.observe(o3)
    np.testing.assert_array_equal(ctl.act(o3, None), direct([o2, o3]))  # the last T, oldest first


def test_the_server_refuses_a_history_policy_clearly(policy):
    from vlaforge.serve.server import PolicyServer, ServeConfig

    with pytest.raises(InputError, match="last 2 observations"):
        PolicyServer(policy, ServeConfig(policy="p", port=0))
