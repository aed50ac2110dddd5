"""Reference points for a success rate: the env's scripted expert (the ceiling) and uniform random
actions (the floor), evaluated with exactly the protocol and the report a trained policy gets.

Every controller that `vlaforge eval` rolls out speaks one small interface (`Controller`): `reset(seed)`
at the start of an episode, then `act(obs, env) -> (H, D)` chunks in robot units, of which the rollout
executes `execute_steps` open loop before asking again. A trained `Policy` is wrapped by
`PolicyController`; the two baselines are closed loop (one step per call).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import numpy as np

from vlaforge.errors import InputError
from vlaforge.types import Embodiment, Observation

BASELINES = ("expert", "random")

# The random baseline's actions come from their own stream of the episode seed: `default_rng(seed)` is
# what an env's `reset(seed)` draws the scene from, so drawing the actions from it too would tie the
# first actions to the object positions. numpy seeds a generator from a sequence of integers through
# `SeedSequence`, whose outputs for [seed, k] and [seed] are independent (numpy "Parallel random number
# generation": https://numpy.org/doc/stable/reference/random/parallel.html). The id spells "ACTS".
RANDOM_ACTION_STREAM = 0x41435453
# A stochastic policy head (flow matching, diffusion) draws its noise from a generator seeded by the episode
# seed and this id ("NOIS"), so an episode's actions do not depend on which worker ran it or on what else
# was in its batch (`noise_generator`).
POLICY_NOISE_STREAM = 0x4E4F4953


def noise_generator(seed: int) -> Any:
    """The torch generator a policy's noise is drawn from in the episode starting from `seed`."""
    import torch

    return torch.Generator().manual_seed((int(seed) << 32) ^ POLICY_NOISE_STREAM)


class Controller(Protocol):
    """What a rollout drives: anything that turns an observation into a chunk of actions."""

    embodiment: Embodiment
    execute_steps: int
    needs_images: bool  # False: the env may skip rendering when no video is recorded

    def reset(self, seed: int) -> None: ...

    def act(self, obs: Observation, env: Any) -> np.ndarray: ...


class ExpertController:
    """The env's scripted expert for the current task (`env.expert_action()`), one step at a time."""

    execute_steps = 1
    needs_images = False  # the expert reads the simulator state

    def __init__(self, embodiment: Embodiment):
        self.embodiment = embodiment

    def reset(self, seed: int) -> None:
        pass

    def act(self, obs: Observation, env: Any) -> np.ndarray:
        return np.asarray(env.expert_action(), dtype=np.float32)[None]  # (1, D)


class RandomController:
    """Actions drawn uniformly within the embodiment's limits, seeded per episode.

    Episode `seed` draws from `np.random.default_rng([seed, RANDOM_ACTION_STREAM])`: reproducible from
    the episode seed, and a stream separate from the one the env's reset draws the scene from.
    """

    execute_steps = 1
    needs_images = False

    def __init__(self, embodiment: Embodiment):
        self.embodiment = embodiment
        self._low = np.asarray(embodiment.action_low, dtype=np.float32)
        self._high = np.asarray(embodiment.action_high, dtype=np.float32)
        self._rng = np.random.default_rng([0, RANDOM_ACTION_STREAM])

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng([int(seed), RANDOM_ACTION_STREAM])

    def act(self, obs: Observation, env: Any) -> np.ndarray:
        a = self._rng.uniform(self._low, self._high).astype(np.float32)
        return a[None]  # (1, D)


class PolicyController:
    """A trained `Policy`: predicts an (H, D) chunk from the observation; the env is not consulted.

    A policy that reads a history of T observations gets them from a buffer the rollout fills at every
    step (`observe`); at an episode's start the first observation is repeated T times, as the training
    sampler pads. A local policy's noise (stochastic heads) comes from the episode's `noise_generator`."""

    needs_images = True

    def __init__(self, policy: Any, execute_steps: int | None = None, unnorm_key: str | None = None):
        self.policy = policy
        self.unnorm_key = unnorm_key  # a mixture's checkpoint: whose statistics un-normalise
        self.embodiment = policy.embodiment
        h = int(execute_steps or policy.execute_steps)
        if h < 1:
            raise InputError(f"execute_steps must be >= 1; got {h}")
        self.execute_steps = h
        self.history = int(getattr(policy, "history", 1))
        self._buffer: deque[Observation] = deque(maxlen=self.history)
        self.local = hasattr(policy, "predict_action_batch")  # a served policy draws its own noise
        self.generator: Any = None

    def reset(self, seed: int) -> None:
        self._buffer.clear()
        self.generator = noise_generator(seed) if self.local else None

    def observe(self, obs: Observation) -> None:
        """Records one step's observation (history policies; the rollout calls it after every step)."""
        for _ in range(self.history if not self._buffer else 1):
            self._buffer.append(obs)

    def act(self, obs: Observation, env: Any) -> np.ndarray:
        kwargs: dict[str, Any] = {"generator": self.generator} if self.local else {}
        if self.unnorm_key is not None:
            kwargs["unnorm_key"] = self.unnorm_key
        if self.history == 1:
            return np.asarray(self.policy.predict_action(obs, **kwargs), dtype=np.float32)
        if not self._buffer:
            self.observe(obs)
        frames = list(self._buffer)  # T observations, oldest first
        stacked = {
            "images": {c: np.stack([f.images[c] for f in frames]) for c in obs.images},
            "state": None if obs.state is None else np.stack([f.state for f in frames]),
            "instruction": obs.instruction,
        }
        return np.asarray(self.policy.predict_action(stacked, **kwargs), dtype=np.float32)


def make_baseline(name: str, embodiment: Embodiment) -> Controller:
    """Builds the `expert` or `random` baseline for an embodiment."""
    if name == "expert":
        return ExpertController(embodiment)
    if name == "random":
        return RandomController(embodiment)
    raise InputError(f"unknown baseline {name!r}; choose one of {list(BASELINES)} or give a checkpoint dir")
