"""`vlaforge rl --algo filtered`: the policy imitates its own successful episodes.

Reward-weighted regression with the success flag as the reward (Peters & Schaal, 2007): weighting each
episode's actions by exp(R / T) with R in {0, 1} and T -> 0 keeps exactly the episodes that succeeded, and
maximising their likelihood under the policy is the EM step of policy search. The VLA literature runs the
same loop as "supervised learning on collected successful trajectories" (iRe-VLA) or filtered
self-training (ReST): the policy acts, the simulator says which episodes succeeded, and those episodes
become demonstrations. No critic, no likelihood ratio: the update is the head's own training loss
(`Policy.compute_loss`: flow matching, or the chunk head's regression), so it applies to a flow head
without Flow-SDE's chain likelihood, and its step size is the one supervised fine-tuning already has.

Each successful episode's decisions join `SuccessBuffer` (the frame and state each decision saw, its
instruction, and as targets the next chunk-size actions the episode executed from there, in robot units,
padded past the episode's end as datasets are); every iteration then takes ``ceil(epochs * new / minibatch)``
gradient steps on minibatches drawn uniformly from the whole buffer (older successes stay, up to
``buffer_size`` decisions, the oldest dropped first; one 64 px camera frame is 12 KB, so a full buffer of
the default 200,000 holds ~2.4 GB). The buffer is saved with each checkpoint, so a resumed run continues
bit for bit.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

from vlaforge.errors import InputError

BUFFER_FILE = "successes.safetensors"
DEFAULT_MINIBATCH = 64


def episode_targets(decisions: list, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The targets of one episode's decisions, in order: for the decision that starts at env step s, the
    actions the episode executed at steps s .. s + chunk_size - 1 (robot units), the last executed action
    repeated past the episode's end, with a pad flag there.

    Returns:
        actions (M, H, D) float32 and pad (M, H) bool.
    """
    if not decisions:
        raise ValueError("an episode without decisions")
    rows = [np.asarray(d.actions, np.float32)[: d.executed] for d in decisions]
    if any(r.shape[0] != d.executed for r, d in zip(rows, decisions)):
        raise ValueError("a decision holds fewer executed actions than it ran")
    traj = np.concatenate(rows)  # (T, D): every action the episode sent, in order
    T, H = len(traj), int(chunk_size)
    starts = np.cumsum([0] + [d.executed for d in decisions[:-1]])
    idx = starts[:, None] + np.arange(H)[None]  # (M, H)
    pad = idx >= T
    return traj[np.minimum(idx, T - 1)], pad


class SuccessBuffer:
    """The decisions of successful episodes, first in first out, up to `capacity`; saved and restored
    as `vlaforge.rl.sac.ReplayBuffer` is (`state`, `restore`, into a checkpoint's `file`)."""

    file = BUFFER_FILE

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.images: dict[str, list[np.ndarray]] = {}
        self.states: list[np.ndarray] = []
        self.instruction: list[str] = []
        self.actions: list[np.ndarray] = []
        self.pad: list[np.ndarray] = []
        self.episodes = 0  # successful episodes added so far (dropped ones included)

    def __len__(self) -> int:
        return len(self.actions)

    def add_batch(self, batch: Any, chunk_size: int) -> int:
        """Adds every successful episode of an iteration's `Batch`; returns the decisions added."""
        by_slot: dict[int, list] = {}
        for d in batch.decisions:
            by_slot.setdefault(d.slot, []).append(d)
        added = 0
        for e in batch.episodes:
            if not e["success"]:
                continue
            ds = by_slot[e["slot"]]
            actions, pad = episode_targets(ds, chunk_size)
            for d, a, p in zip(ds, actions, pad):
                # Copies: a decision's frame is a view of its whole step group's stacked frames, which a
                # kept view would keep alive (up to `envs` frames per decision).
                for cam, img in d.images.items():
                    self.images.setdefault(cam, []).append(np.array(img, np.uint8))
                if d.state is not None:
                    self.states.append(np.array(d.state, np.float32))
                self.instruction.append(d.instruction)
                self.actions.append(a)
                self.pad.append(p)
            added += len(ds)
            self.episodes += 1
        self._trim()
        return added

    def _trim(self) -> None:
        drop = len(self) - self.capacity
        if drop > 0:
            for frames in self.images.values():
                del frames[:drop]
            if self.states:
                del self.states[:drop]
            del self.instruction[:drop], self.actions[:drop], self.pad[:drop]

    def batch(self, idx: list[int]) -> dict[str, Any]:
        """A training batch (`Policy.compute_loss`'s layout) of the decisions at `idx`."""
        out: dict[str, Any] = {
            "images": {cam: np.stack([f[i] for i in idx]) for cam, f in self.images.items()},
            "instruction": [self.instruction[i] for i in idx],
            "actions": np.stack([self.actions[i] for i in idx]),
            "action_pad": np.stack([self.pad[i] for i in idx]),
        }
        if self.states:
            out["state"] = np.stack([self.states[i] for i in idx])
        return out

    # ------------------------------------------------------------------ persistence
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Tensors and safetensors metadata (instructions as an index into a table of distinct ones)."""
        table = sorted(set(self.instruction))
        where = {s: i for i, s in enumerate(table)}
        tensors: dict[str, torch.Tensor] = {}
        if len(self):
            tensors["actions"] = torch.from_numpy(np.stack(self.actions))
            tensors["pad"] = torch.from_numpy(np.stack(self.pad))
            tensors["instruction"] = torch.tensor([where[s] for s in self.instruction], dtype=torch.int64)
            for cam, frames in self.images.items():
                tensors[f"images.{cam}"] = torch.from_numpy(np.stack(frames))
            if self.states:
                tensors["state"] = torch.from_numpy(np.stack(self.states))
        meta = {
            "capacity": str(self.capacity),
            "episodes": str(self.episodes),
            "instructions": json.dumps(table),
        }
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        if int(meta["capacity"]) != self.capacity:
            raise InputError(
                f"the run's success buffer holds up to {meta['capacity']} decisions, this call asks for "
                f"{self.capacity} (--buffer-size); keep the run's value"
            )
        table = json.loads(meta["instructions"])
        self.episodes = int(meta["episodes"])
        if "actions" not in tensors:
            return
        self.actions = list(tensors["actions"].numpy())
        self.pad = list(tensors["pad"].numpy())
        self.instruction = [table[i] for i in tensors["instruction"].tolist()]
        self.images = {
            k.split(".", 1)[1]: list(v.numpy()) for k, v in tensors.items() if k.startswith("images.")
        }
        self.states = list(tensors["state"].numpy()) if "state" in tensors else []


def filtered_update(run: Any, batch: Any) -> dict[str, float | int | None]:
    """The iteration's successful episodes into the buffer, then ``ceil(epochs * new / minibatch)``
    gradient steps of the policy's own loss on uniform draws from the buffer."""
    cfg, actor, buffer = run.cfg, run.actor, run.buffer
    policy = actor.policy
    new = buffer.add_batch(batch, policy.head.chunk_size)
    mb = cfg.minibatch or DEFAULT_MINIBATCH
    steps = math.ceil(cfg.epochs * new / mb) if new else 0
    params = [p for p in actor.parameters() if p.requires_grad]
    total = 0.0
    for _ in range(steps):
        idx = torch.randint(len(buffer), (min(mb, len(buffer)),), generator=run.generator).tolist()
        loss, _ = policy.compute_loss(buffer.batch(idx))
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        run.optimizer.step()
        total += loss.item()
    return {
        "bc_loss": total / steps if steps else None,
        "gradient_steps": steps,
        "decisions_added": new,
        "buffer_size": len(buffer),
        "buffer_episodes": buffer.episodes,
    }


__all__ = ["BUFFER_FILE", "SuccessBuffer", "episode_targets", "filtered_update"]
