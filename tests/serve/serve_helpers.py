"""Helpers of the serving tests: tiny policies, observations, and real servers on loopback ports.

Servers run in the test process (`ServerThread`: a real asyncio server on a real socket, in its own thread),
so a test can compare what comes over the wire with `predict_action` on the very same model, bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from vlaforge.models.policy import Policy
from vlaforge.serve.server import ServeConfig, ServerThread
from vlaforge.types import Embodiment, FeatureStats, NormStats

INSTRUCTIONS = ["open the drawer", "press the red button twice", "close the window"]


def make_embodiment(cameras=("corner2",), state_dim: int = 6, action_dim: int = 4) -> Embodiment:
    return Embodiment(
        action_dim=action_dim,
        action_names=[f"a{i}" for i in range(action_dim)],
        normalize_mask=[True] * (action_dim - 1) + [False],
        action_low=[-1.0] * action_dim,
        action_high=[1.0] * action_dim,
        control_hz=20.0,
        camera_names=list(cameras),
        image_size=64,
        state_dim=state_dim,
    )


def make_stats(action_dim: int = 4, state_dim: int = 6) -> NormStats:
    def fs(d, mask=None):
        return FeatureStats(
            min=-np.ones(d), max=np.ones(d), mean=np.zeros(d), std=np.full(d, 0.5),
            q01=np.full(d, -0.8), q99=np.full(d, 0.8), mask=mask,
        )  # fmt: skip

    feats = {"action": fs(action_dim, [True] * (action_dim - 1) + [False])}
    if state_dim:
        feats["observation.state"] = fs(state_dim)
    return NormStats(feats)


def make_policy(head: str = "chunk", cameras=("corner2",), state_dim: int = 6, action_dim: int = 4) -> Policy:
    torch.manual_seed(0)
    emb = make_embodiment(cameras, state_dim, action_dim)
    return Policy.from_preset("tiny", head, emb, make_stats(action_dim, state_dim))


def observation(seed: int, cameras=("corner2",), state_dim: int = 6, size: int = 64) -> dict:
    """Our observation format: {"images": {camera: uint8 (H, W, 3)}, "state": (S,), "instruction": str}."""
    rng = np.random.default_rng(seed)
    obs = {
        "images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in cameras},
        "instruction": INSTRUCTIONS[seed % len(INSTRUCTIONS)],
    }
    if state_dim:
        obs["state"] = rng.standard_normal(state_dim).astype(np.float32)
    return obs


def openpi_observation(obs: dict) -> dict:
    """The same observation under the keys of openpi's LIBERO example client."""
    (image,) = obs["images"].values()
    out = {"observation/image": image, "prompt": obs["instruction"]}
    if "state" in obs:
        out["observation/state"] = obs["state"]
    return out


def start_server(policy, **options) -> ServerThread:
    """A started server of `policy` on a free loopback port (stop it with `.stop()`)."""
    return ServerThread(policy, ServeConfig(policy="tiny", port=options.pop("port", 0), **options)).start()


class SlowPolicy:
    """`policy` taking `delay_s` more per forward pass (a large model on a slow machine), to serve."""

    def __init__(self, policy, delay_s: float):
        self.inner, self.delay_s = policy, delay_s
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict_action_batch(self, batch, **options):
        import time

        self.calls += 1
        time.sleep(self.delay_s)
        return self.inner.predict_action_batch(batch, **options)
