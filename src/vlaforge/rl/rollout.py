"""Rollouts for RL: a batch of episodes in in-process envs, one batched forward pass per step group.

Episode j of an iteration runs in slot j. Slots in a group (`group_size` consecutive slots) start from the
same scene, drawn from the training seed range (`training_scenes`). At every step group the slots whose
chunk is used up re-plan together: their observations are stacked into one batch, the actor samples one
chunk each, and each env executes the first `execute_steps` rows of its chunk (physics only inside the chunk;
the cameras render only after the last row, where the next plan reads them). The reward is the simulator's
success flag: 1 on the decision where it first turns true, and the episode ends there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vlaforge.envs.base import EnvSpec, episode_seed


@dataclass
class Decision:
    """One re-plan of one episode: what was seen, what was sampled, what happened."""

    slot: int
    images: dict[str, np.ndarray]
    state: np.ndarray | None
    instruction: str
    record: torch.Tensor  # the sampled chunk (H, D) or the flow chain (N + 1, H, D)
    executed: int  # rows of the chunk that reached the env
    reward: float
    done: bool


@dataclass
class Batch:
    """One iteration's rollouts."""

    decisions: list[Decision]
    episodes: list[dict]  # per slot: task, seed, group, success, steps, return
    env_steps: int
    frames_rendered: int
    seconds: float
    forward_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def eval_seed_set(spec: EnvSpec, tasks: list[str], eval_seed: int, eval_episodes: int) -> dict[str, set[int]]:
    """The held-out evaluation's episode seeds per task (`vlaforge eval --seed eval_seed`), at least 100 per
    task so a later, larger evaluation on that seed stays disjoint too."""
    n = max(100, int(eval_episodes))
    return {t: {episode_seed(eval_seed, t, i) for i in range(n)} for t in tasks}


def training_scenes(
    tasks: list[str], iteration: int, n_groups: int, train_seed: int, avoid: dict[str, set[int]]
) -> list[tuple[str, int]]:
    """(task, seed) of each group of `iteration`: groups cycle through the tasks; group k overall (counted
    across iterations) of task t starts from `episode_seed(train_seed, t, k')`, k' the k-th index whose seed
    is not an evaluation seed. A function of the iteration alone, so a resumed run draws the same scenes."""
    out = []
    for g in range(n_groups):
        k = iteration * n_groups + g
        task = tasks[k % len(tasks)]
        index = k // len(tasks)
        seed = episode_seed(train_seed, task, index)
        bump = 0
        while seed in avoid.get(task, ()):
            bump += 1
            seed = episode_seed(train_seed, task, 1_000_000_000 + index * 1000 + bump)
        out.append((task, seed))
    return out


# Envs made in this process, reused by later pools with the same settings (making a Meta-World env with its
# renderer takes about a second; `reset(seed)` alone decides an episode, so reuse changes nothing).
_MADE: dict[tuple, object] = {}


class EnvPool:
    """Envs kept per (slot, task), made on first use (making a Meta-World env costs more than a reset)."""

    def __init__(self, spec: EnvSpec, cameras: tuple[str, ...], image_size: int, max_steps: int):
        self.spec, self.cameras, self.image_size, self.max_steps = spec, cameras, image_size, max_steps
        self._envs: dict[tuple[int, str], object] = {}

    def get(self, slot: int, task: str):
        key = (slot, task)
        if key not in self._envs:
            made = (self.spec.name, task, self.cameras, self.image_size, self.max_steps, slot)
            if made not in _MADE:
                _MADE[made] = self.spec.make(
                    task, cameras=self.cameras, image_size=self.image_size, max_steps=self.max_steps,
                    render=False,
                )  # fmt: skip
            self._envs[key] = _MADE[made]
        return self._envs[key]

    def frames_rendered(self) -> int:
        return sum(e.frames_rendered for e in self._envs.values())

    def close(self) -> None:
        """Forgets this pool's envs (they stay made for the next pool in this process; `close_all` ends them)."""
        self._envs = {}


def close_all() -> None:
    """Closes every env this process made."""
    for e in _MADE.values():
        e.close()
    _MADE.clear()


def collect(
    actor,
    pool: EnvPool,
    scenes: list[tuple[str, int]],
    group_size: int,
    execute_steps: int,
    generator: torch.Generator,
    dense: bool = False,
) -> Batch:
    """Runs len(scenes) * group_size episodes to their end (success or `pool.max_steps`)."""
    start = time.perf_counter()
    n = len(scenes) * group_size
    spec = pool.spec
    envs = [pool.get(j, scenes[j // group_size][0]) for j in range(n)]
    frames0 = sum(e.frames_rendered for e in envs)
    slots = []
    for j, env in enumerate(envs):
        task, seed = scenes[j // group_size]
        obs = env.reset(seed, render=True)
        slots.append({"env": env, "obs": obs, "task": task, "seed": seed, "steps": 0, "success": False})
    episodes = [
        {
            "task": s["task"],
            "seed": s["seed"],
            "group": j // group_size,
            "slot": j,
            "success": False,
            "steps": 0,
        }
        for j, s in enumerate(slots)
    ]
    instruction = {t: spec.instruction(t) for t, _ in scenes}
    decisions: list[Decision] = []
    alive = list(range(n))
    env_steps, fwd_s = 0, 0.0
    cams = actor.policy.embodiment.camera_names
    while alive:
        images = {c: np.stack([slots[j]["obs"].images[c] for j in alive]) for c in cams}
        states = None
        if actor.policy.uses_state:
            states = np.stack([slots[j]["obs"].state for j in alive]).astype(np.float32)
        words = [instruction[slots[j]["task"]] for j in alive]
        t0 = time.perf_counter()
        ctx = actor.context(images, states, words)
        chunk_norm, record = actor.sample(ctx, generator)
        chunks = actor.normalized_to_robot(chunk_norm.float().cpu().numpy())  # (B, H, D)
        fwd_s += time.perf_counter() - t0
        still = []
        for b, j in enumerate(alive):
            s = slots[j]
            env, reward, done, executed = s["env"], 0.0, False, 0
            for r in range(execute_steps):
                last = r == execute_steps - 1
                obs, shaped, truncated, info = env.step(chunks[b, r], render=False)
                if dense:
                    reward += float(shaped) / pool.max_steps
                executed += 1
                s["steps"] += 1
                env_steps += 1
                if info.get("success"):
                    reward, done, s["success"] = reward + 1.0, True, True
                    break
                if truncated or s["steps"] >= pool.max_steps:
                    done = True
                    break
                if last:
                    s["obs"] = env.observe(render=True)
            decisions.append(
                Decision(
                    slot=j,
                    images={c: images[c][b] for c in cams},
                    state=None if states is None else states[b],
                    instruction=words[b],
                    record=record[b].detach().cpu(),
                    executed=executed,
                    reward=reward,
                    done=done,
                )
            )
            if done:
                episodes[j].update(success=s["success"], steps=s["steps"])
            else:
                still.append(j)
        alive = still
    for e in episodes:
        e["return"] = sum(d.reward for d in decisions if d.slot == e["slot"])
    return Batch(
        decisions=decisions,
        episodes=episodes,
        env_steps=env_steps,
        frames_rendered=sum(e.frames_rendered for e in envs) - frames0,
        seconds=time.perf_counter() - start,
        forward_seconds=fwd_s,
    )


__all__ = ["Batch", "Decision", "EnvPool", "close_all", "collect", "eval_seed_set", "training_scenes"]
