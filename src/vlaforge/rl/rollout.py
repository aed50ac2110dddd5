"""Rollouts for RL: a batch of episodes in in-process envs, one batched forward pass per step group.

Episode j of an iteration runs in slot j. Slots in a group (`group_size` consecutive slots) start from the
same scene, drawn from the training seed range (`training_scenes`). At every step group the slots whose
chunk is used up re-plan together: their observations are stacked into one batch, the actor samples one
chunk each, and each env executes the first `execute_steps` rows of its chunk (physics only inside the chunk;
the cameras render only after the last row, where the next plan reads them). The reward is the simulator's
success flag: 1 on the decision where it first turns true, and the episode ends there.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlaforge.envs.base import EnvSpec, episode_seed
from vlaforge.envs.rendering import configure_rendering


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
    success: bool = False  # the episode ended here in success (done for that reason, not its step limit)
    actions: np.ndarray | None = None  # the executed rows in robot units, as the env received them


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


# Envs made in this process, per (env, task, cameras, image size, max_steps): every one made so far, and the
# ones a pool holds now. A pool takes a free env of the task when an episode starts and gives its envs back
# when the next episodes start, so a process keeps, per task, only as many envs as episodes of that task ever
# ran in it at once (making a Meta-World env with its renderer takes about a second and ~170 MB; `reset(seed)`
# alone decides an episode, so which instance runs it changes nothing). One env per (slot, task) instead was
# 56 envs, ~9.5 GB, in each worker of a 7-task run with 16 episodes on 2 workers.
_MADE: dict[tuple, list] = {}
_BUSY: set[int] = set()


def run_chunk(env: Any, rows: np.ndarray, steps: int, max_steps: int, dense: bool) -> dict:
    """Executes the rows (E, D) of a chunk in `env`, whose episode has taken `steps` steps: physics only,
    stopping at the first success or at `max_steps`; renders the cameras once after the last row when the
    episode goes on (the next plan reads them).

    Returns:
        executed rows, reward (success flag; plus the shaped reward / max_steps when `dense`), done, success,
        and the observation to re-plan from (None when done).
    """
    reward, done, success, executed, obs = 0.0, False, False, 0, None
    for a in rows:
        _, shaped, truncated, info = env.step(a, render=False)
        executed += 1
        if dense:
            reward += float(shaped) / max_steps
        if info.get("success"):
            reward, done, success = reward + 1.0, True, True
            break
        if truncated or steps + executed >= max_steps:
            done = True
            break
    if not done:
        obs = env.observe(render=True)
    return {"executed": executed, "reward": reward, "done": done, "success": success, "obs": obs}


class EnvPool:
    """The episode slots' envs in this process: each episode takes a free env of its task (made on first
    need, see `_MADE`), held until the next `reset`.

    `reset([(slot, task, seed)])` -> observations; `run([(slot, rows, steps)])` -> `run_chunk` results;
    `WorkerPool` offers the same two calls with the envs in worker processes.
    """

    def __init__(self, spec: EnvSpec, cameras: tuple[str, ...], image_size: int, max_steps: int,
                 dense: bool = False):  # fmt: skip
        self.spec, self.cameras, self.image_size, self.max_steps = spec, cameras, image_size, max_steps
        self.dense = dense
        self._current: dict[int, Any] = {}

    def _take(self, task: str) -> Any:
        made = _MADE.setdefault((self.spec.name, task, self.cameras, self.image_size, self.max_steps), [])
        env = next((e for e in made if id(e) not in _BUSY), None)
        if env is None:
            env = self.spec.make(task, cameras=self.cameras, image_size=self.image_size,
                                 max_steps=self.max_steps, render=False)  # fmt: skip
            made.append(env)
        _BUSY.add(id(env))
        return env

    def _release(self) -> None:
        for env in self._current.values():
            _BUSY.discard(id(env))
        self._current = {}

    def reset(self, items: list[tuple[int, str, int]]) -> list[Any]:
        self._release()
        out = []
        for slot, task, seed in items:
            self._current[slot] = self._take(task)
            out.append(self._current[slot].reset(seed, render=True))
        return out

    def run(self, items: list[tuple[int, np.ndarray, int]]) -> list[dict]:
        return [
            run_chunk(self._current[s], rows, steps, self.max_steps, self.dense) for s, rows, steps in items
        ]

    def frames_rendered(self) -> int:
        return sum(e.frames_rendered for e in self._current.values())

    def envs_made(self) -> int:
        """How many envs this process holds for this pool's env and settings (every task)."""
        key = (self.spec.name, self.cameras, self.image_size, self.max_steps)
        return sum(len(v) for k, v in _MADE.items() if (k[0], *k[2:]) == key)

    def close(self) -> None:
        """Gives this pool's envs back (they stay made for the next pool in this process; `close_all` ends them)."""
        self._release()


def close_all() -> None:
    """Closes every env this process made."""
    for envs in _MADE.values():
        for e in envs:
            e.close()
    _MADE.clear()
    _BUSY.clear()


def _worker_main(conn: Any, args: dict) -> None:
    """A simulation worker: an `EnvPool` of its slots, driven by (command, payload) messages."""
    configure_rendering()  # before anything in this fresh process imports mujoco
    from vlaforge.envs.registry import get_env

    pool = EnvPool(get_env(args["env"]), tuple(args["cameras"]), args["image_size"], args["max_steps"],
                   args["dense"])  # fmt: skip
    try:
        while True:
            cmd, payload = conn.recv()
            if cmd == "close":
                break
            try:
                if cmd == "reset":
                    conn.send(("ok", pool.reset(payload)))
                elif cmd == "run":
                    conn.send(("ok", pool.run(payload)))
                elif cmd == "frames":
                    conn.send(("ok", pool.frames_rendered()))
                elif cmd == "envs":
                    conn.send(("ok", pool.envs_made()))
            except Exception:  # the parent raises it with the worker's traceback
                conn.send(("error", traceback.format_exc()))
    finally:
        close_all()
        conn.close()


class WorkerPool:
    """`EnvPool`'s calls with the envs in `workers` spawned processes (slot j lives in worker j % workers);
    each call is sent to every worker before any reply is read, so the workers step their slots in parallel
    while the results are identical to the in-process pool's (the same env calls per slot)."""

    def __init__(self, spec: EnvSpec, cameras: tuple[str, ...], image_size: int, max_steps: int,
                 dense: bool = False, workers: int = 2):  # fmt: skip
        import multiprocessing as mp

        self.spec, self.max_steps, self.workers = spec, max_steps, int(workers)
        args = {"env": spec.name, "cameras": list(cameras), "image_size": image_size, "max_steps": max_steps,
                "dense": dense}  # fmt: skip
        ctx = mp.get_context("spawn")  # never fork a process that holds MuJoCo / OpenGL / torch state
        self._conns, self._procs = [], []
        for _ in range(self.workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, args), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def _call(self, cmd: str, items: list) -> list:
        parts: list[list[int]] = [[] for _ in range(self.workers)]
        for i, item in enumerate(items):
            parts[item[0] % self.workers].append(i)
        busy = [w for w in range(self.workers) if parts[w]]
        for w in busy:
            self._send(w, (cmd, [items[i] for i in parts[w]]))
        out: list = [None] * len(items)
        for w in busy:
            for i, r in zip(parts[w], self._reply(w)):
                out[i] = r
        return out

    def _dead(self, w: int) -> RuntimeError:
        self._procs[w].join(timeout=5)
        return RuntimeError(
            f"simulation worker {w} exited (exit code {self._procs[w].exitcode}) without answering; "
            "a signal or running out of memory are the usual causes"
        )

    def _send(self, w: int, message: tuple) -> None:
        try:
            self._conns[w].send(message)
        except (BrokenPipeError, ConnectionResetError):
            raise self._dead(w) from None

    def _reply(self, w: int) -> Any:
        """Worker `w`'s answer to what it was last sent; its failure, or its death, as an error."""
        try:
            status, reply = self._conns[w].recv()
        except (EOFError, ConnectionResetError):
            raise self._dead(w) from None
        if status != "ok":
            raise RuntimeError(f"simulation worker {w} failed:\n{reply}")
        return reply

    def reset(self, items: list[tuple[int, str, int]]) -> list[Any]:
        return self._call("reset", items)

    def run(self, items: list[tuple[int, np.ndarray, int]]) -> list[dict]:
        return self._call("run", items)

    def frames_rendered(self) -> int:
        return self._sum("frames")

    def envs_made(self) -> int:
        """Envs held by all the workers together."""
        return self._sum("envs")

    def _sum(self, cmd: str) -> int:
        for w in range(len(self._conns)):
            self._send(w, (cmd, None))
        return sum(self._reply(w) for w in range(len(self._conns)))

    def close(self) -> None:
        for c, p in zip(self._conns, self._procs):
            with contextlib.suppress(BrokenPipeError, OSError):
                c.send(("close", None))
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
            c.close()
        self._conns, self._procs = [], []


def collect(
    actor,
    pool: EnvPool | WorkerPool,
    scenes: list[tuple[str, int]],
    group_size: int,
    execute_steps: int,
    generator: torch.Generator,
) -> Batch:
    """Runs len(scenes) * group_size episodes to their end (success or `pool.max_steps`)."""
    start = time.perf_counter()
    n = len(scenes) * group_size
    spec = pool.spec
    starts = [(j, *scenes[j // group_size]) for j in range(n)]
    observations = pool.reset(starts)
    frames0 = pool.frames_rendered()  # the slots' envs are fixed from here to the end of the iteration
    slots = [{"obs": o, "task": t, "steps": 0} for o, (_, t, _) in zip(observations, starts)]
    episodes = [
        {"task": t, "seed": seed, "group": j // group_size, "slot": j, "success": False, "steps": 0}
        for j, t, seed in starts
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
        results = pool.run([(j, chunks[b, :execute_steps], slots[j]["steps"]) for b, j in enumerate(alive)])
        still = []
        for b, (j, res) in enumerate(zip(alive, results)):
            s = slots[j]
            s["steps"] += res["executed"]
            env_steps += res["executed"]
            decisions.append(
                Decision(
                    slot=j,
                    images={c: images[c][b] for c in cams},
                    state=None if states is None else states[b],
                    instruction=words[b],
                    record=record[b].detach().cpu(),
                    executed=res["executed"],
                    reward=res["reward"],
                    done=res["done"],
                    success=res["success"],
                    actions=chunks[b, : res["executed"]].copy(),
                )
            )
            if res["done"]:
                episodes[j].update(success=res["success"], steps=s["steps"])
            else:
                s["obs"] = res["obs"]
                still.append(j)
        alive = still
    for e in episodes:
        e["return"] = sum(d.reward for d in decisions if d.slot == e["slot"])
    return Batch(
        decisions=decisions,
        episodes=episodes,
        env_steps=env_steps,
        frames_rendered=pool.frames_rendered() - frames0 + n * len(cams),  # + the resets' renders
        seconds=time.perf_counter() - start,
        forward_seconds=fwd_s,
    )


__all__ = [
    "Batch",
    "Decision",
    "EnvPool",
    "WorkerPool",
    "close_all",
    "collect",
    "run_chunk",
    "eval_seed_set",
    "training_scenes",
]
