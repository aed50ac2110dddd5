"""Batched evaluation: many simulated episodes at once, one copy of the policy, one forward per batch.

`vlaforge.eval.rollout.run_jobs` gives every worker process its own policy and runs one episode at a time
at batch 1. Here the policy lives once, in this process (on the GPU when there is one), and the worker
processes only simulate:

- Each worker hosts several episode *slots* (`envs_per_worker`), each with its own env. An env is kept
  per task and reused by the slot's next episode of that task (a reset makes an episode a function of its
  seed alone, `Env.reset`).
- The slots are split into two groups that take turns: while the workers step the physics of one group's
  chunks, this process runs the forward pass of the other group, so neither the simulators nor the model
  wait for long.
- Per re-plan, the observations of a group's slots are stacked into one batch for
  `Policy.predict_action_batch`; each slot then gets the actions it runs until its next re-plan (through
  the same `vlaforge.client.ActionQueue` as the per-process path), the worker runs them, stopping at the
  first success, at the env's end or at `max_steps`, and renders the cameras only where the next plan
  needs them (or at every step of an episode whose video is kept).
- A stochastic head's noise comes from each episode's own generator (`baselines.noise_generator`), one
  per sample of the batch, so an episode's actions do not depend on which other episodes share its batch.

The env calls of an episode are those of `rollout.run_episode` (same resets, same steps, same renders), so
batched and per-process evaluation give the same episodes up to the floating-point difference between a
batched and a one-sample forward pass (`tests/eval/test_vector.py` checks they agree, episode by episode).
Only a local checkpoint with a one-observation history is batched; `vlaforge.eval.run` runs baselines,
served policies and history policies on the per-process path.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vlaforge.client import ActionQueue
from vlaforge.envs.registry import get_env
from vlaforge.envs.rendering import configure_rendering
from vlaforge.errors import InputError
from vlaforge.eval.baselines import noise_generator
from vlaforge.eval.rollout import EXECUTIONS, Job, VideoGate, WorkerSpec, write_mp4

GROUPS = 2  # slot groups taking turns between the simulators and the model


# ------------------------------------------------------------------------------------------ the workers


@dataclass
class _Episode:
    """A worker's view of the episode running in one slot."""

    job: Job
    env: Any
    steps: int = 0
    success: bool = False
    frames: list[np.ndarray] | None = None


class _SimWorker:
    """The simulation side of one worker process: the slots' envs and episodes."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.episodes: dict[int, _Episode] = {}
        self.free: dict[str, list[Any]] = {}  # task -> envs no slot is using

    def _env(self, task: str) -> Any:
        pool = self.free.get(task)
        if pool:
            return pool.pop()
        return get_env(self.spec.env).make(
            task,
            cameras=tuple(self.spec.cameras),
            image_size=self.spec.image_size,
            max_steps=self.spec.max_steps,
            render=False,  # each call says whether to render
        )

    def _release(self, slot: int) -> None:
        ep = self.episodes.pop(slot, None)
        if ep is None:
            return
        pool = self.free.setdefault(ep.job.task, [])
        pool.append(ep.env)
        limit = max(1, len(self.episodes) + 1)  # keep at most one spare env per slot, of recent tasks
        while sum(len(p) for p in self.free.values()) > limit:
            oldest = next(t for t, p in self.free.items() if p)
            self.free[oldest].pop(0).close()
            if not self.free[oldest]:
                del self.free[oldest]

    def handle(self, item: dict[str, Any]) -> dict[str, Any]:
        slot = item["slot"]
        if "reset" in item:
            self._release(slot)
            job = Job(**item["reset"])
            ep = _Episode(job, self._env(job.task))
            obs = ep.env.reset(job.seed, render=True)
            ep.frames = [obs.images[self.spec.cameras[0]]] if job.video else None
            self.episodes[slot] = ep
            return {"slot": slot, "images": obs.images, "state": obs.state}
        ep = self.episodes[slot]
        keep = ep.frames is not None
        obs = None
        ended = False
        for action in item["actions"]:
            obs, _reward, done, info = ep.env.step(action, render=keep)
            ep.steps += 1
            if keep:
                ep.frames.append(obs.images[self.spec.cameras[0]])
            if info.get("success"):
                ep.success = True
            if ep.success or done or ep.steps >= self.spec.max_steps:
                ended = True
                break
        if ended:
            video = (
                str(write_mp4(ep.frames, ep.job.video, self.spec.fps, self.spec.video_crf)) if keep else None
            )
            self._release(slot)
            return {"slot": slot, "ended": True, "success": ep.success, "steps": ep.steps, "video": video}
        if not obs.images:
            obs = ep.env.observe(render=True)  # the state the next plan starts from
        return {"slot": slot, "images": obs.images, "state": obs.state, "steps": ep.steps}

    def close(self) -> None:
        for slot in list(self.episodes):
            self._release(slot)
        for pool in self.free.values():
            for env in pool:
                env.close()
        self.free.clear()


def _worker_main(conn: Any, spec_dict: dict[str, Any]) -> None:
    """A worker process: answers each message (a list of slot items) with the list of their replies."""
    configure_rendering()  # before anything in this fresh process imports mujoco
    sim = None
    try:
        sim = _SimWorker(WorkerSpec(**spec_dict))
        while True:
            msg = conn.recv()
            if msg is None:
                break
            try:
                conn.send([sim.handle(item) for item in msg])
            except Exception:
                conn.send({"error": traceback.format_exc()})
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        if sim is not None:
            sim.close()


# ---------------------------------------------------------------------------------------- the model side


class _JobBoard:
    """Hands out the jobs so that each slot stays on one task for as long as the task has episodes left:
    an env is built once per task and slot (building one, with its renderer, takes seconds), where taking
    the jobs in order would move every slot to a new task after nearly every episode. A slot whose task
    is done takes a task no slot has started, else helps the task with the most episodes left."""

    def __init__(self, jobs: list[Job]):
        self.queues: dict[str, deque[Job]] = {}
        for job in jobs:
            self.queues.setdefault(job.task, deque()).append(job)
        self.started: set[str] = set()

    def __bool__(self) -> bool:
        return any(self.queues.values())

    def next_for(self, task: str | None) -> Job | None:
        if task is not None and self.queues.get(task):
            return self.queues[task].popleft()
        fresh = [t for t, q in self.queues.items() if q and t not in self.started]
        left = [t for t, q in self.queues.items() if q]
        if not left:
            return None
        pick = fresh[0] if fresh else max(left, key=lambda t: len(self.queues[t]))
        self.started.add(pick)
        return self.queues[pick].popleft()


@dataclass
class _Slot:
    index: int
    worker: int
    group: int
    job: Job | None = None
    steps: int = 0
    queue: ActionQueue | None = None
    generator: Any = None
    obs: dict[str, Any] | None = None
    last_task: str | None = None  # the task of the slot's previous episode (its env is still there)


class BatchedRunner:
    """Runs evaluation jobs on worker processes that simulate, batching the policy's forward passes.

    Args:
        spec: what the workers build (cameras, image size, max_steps, fps) and the policy to load here.
        workers: simulator processes (at least 1).
        envs_per_worker: episode slots per worker; `workers * envs_per_worker` episodes run at once, in
            two groups of about half that, so a forward pass sees about half of them.
        threads: torch threads of the forward pass in this process (None: 1 on a CPU, where the workers
            use the other cores, torch's default on a GPU).
    """

    def __init__(self, spec: WorkerSpec, workers: int, envs_per_worker: int, threads: int | None = None):
        if spec.execution not in EXECUTIONS:
            raise InputError(f"execution must be one of {list(EXECUTIONS)}; got {spec.execution!r}")
        if workers < 1 or envs_per_worker < 1:
            raise InputError(
                f"batched evaluation needs workers >= 1 and envs_per_worker >= 1; got {workers}, {envs_per_worker}"
            )

        from vlaforge.models.policy import Policy

        if threads is None and not str(spec.device).startswith("cuda"):
            threads = 1  # the workers keep the other cores busy; more threads would only spin-wait for them
        self.threads = threads
        self.spec = spec
        self.policy = Policy.from_pretrained(spec.policy, device=spec.device)
        if self.policy.history != 1:
            raise InputError(
                f"{spec.policy} reads {self.policy.history} observations per prediction; batched evaluation "
                "runs one-observation policies (evaluate it with envs_per_worker 0)"
            )
        self.execute_steps = int(spec.execute_steps or self.policy.execute_steps)
        self.workers, self.envs_per_worker = int(workers), int(envs_per_worker)
        self.batch_sizes: list[int] = []  # of every forward pass, for the protocol and the bench
        self.gate = VideoGate(None)

    def run(self, jobs: list[Job], progress: Any = None, gate: VideoGate | None = None) -> Iterator[dict]:
        """Yields each episode's record (as `rollout.run_episode` returns it) as the episode ends; `gate`
        decides as each episode starts whether its video is recorded (`rollout.VideoGate`)."""
        if not jobs:
            return
        self.gate = gate or VideoGate(None)
        import torch

        before = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            yield from self._run(jobs, progress)
        finally:
            torch.set_num_threads(before)

    def _run(self, jobs: list[Job], progress: Any) -> Iterator[dict]:
        n_slots = min(len(jobs), self.workers * self.envs_per_worker)
        n_workers = min(self.workers, n_slots)
        slots = [_Slot(i, i % n_workers, (i // n_workers) % GROUPS) for i in range(n_slots)]
        todo = _JobBoard(jobs)
        ctx = mp.get_context("spawn")
        conns, procs = [], []
        try:
            for _ in range(n_workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker_main, args=(child, asdict(self.spec)), daemon=True)
                proc.start()
                child.close()
                conns.append(parent)
                procs.append(proc)
            waiting = [[False] * n_workers for _ in range(GROUPS)]  # [group][worker]: a reply is due
            for g in range(GROUPS):
                items = [self._start(s, todo.next_for(None)) for s in slots if s.group == g and todo]
                self._send(conns, waiting[g], [s for s in slots if s.group == g and s.job], items)
            while any(any(w) for w in waiting):
                for g in range(GROUPS):
                    if not any(waiting[g]):
                        continue
                    group = [s for s in slots if s.group == g]
                    for reply in self._receive(conns, waiting[g]):
                        slot = slots[reply["slot"]]
                        if reply.get("ended"):
                            rec = self._record(slot, reply)
                            self.gate.finished(rec)
                            yield rec
                            if progress is not None:
                                progress.update(1)
                            slot.last_task, slot.job, slot.obs = slot.job.task, None, None
                        else:
                            slot.obs = reply
                    items = []
                    ready = [s for s in group if s.job is not None and s.obs is not None]
                    if ready:
                        items += self._plan(ready)
                    for s in group:
                        if s.job is None and todo:
                            items.append(self._start(s, todo.next_for(s.last_task)))
                    self._send(conns, waiting[g], [s for s in group if s.job is not None], items)
        finally:
            for conn in conns:
                with contextlib.suppress(BrokenPipeError, OSError):
                    conn.send(None)
            for proc in procs:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.terminate()
            for conn in conns:
                conn.close()

    # -- steps of the loop ---------------------------------------------------------------------------

    def _start(self, slot: _Slot, job: Job) -> dict[str, Any]:
        job = self.gate.admit(job)
        mode = EXECUTIONS[self.spec.execution]
        slot.job, slot.steps, slot.obs = job, 0, None
        slot.queue = ActionQueue(mode, self.execute_steps, self.spec.ensemble_decay)
        slot.generator = noise_generator(job.seed)
        return {"slot": slot.index, "reset": asdict(job)}

    def _plan(self, ready: list[_Slot]) -> list[dict[str, Any]]:
        """One forward pass for the ready slots; returns each slot's actions until its next re-plan."""
        cams = list(self.policy.embodiment.camera_names)
        batch = {
            "images": {c: np.stack([s.obs["images"][c] for s in ready]) for c in cams},
            "state": np.stack([s.obs["state"] for s in ready]) if ready[0].obs["state"] is not None else None,
            "instruction": [s.job.instruction for s in ready],
        }
        chunks = self.policy.predict_action_batch(
            batch, generator=[s.generator for s in ready], unnorm_key=self.spec.unnorm_key
        )
        self.batch_sizes.append(len(ready))
        items = []
        ensemble = self.spec.execution == "ensemble"
        for s, chunk in zip(ready, chunks):
            if self.spec.execution == "receding" and len(chunk) < self.execute_steps:
                raise InputError(
                    f"receding execution re-plans every {self.execute_steps} steps, but the policy returned a "
                    f"chunk of {len(chunk)} actions; use replan_every <= {len(chunk)}"
                )
            s.queue.add(chunk, s.steps, s.steps)
            n = 1 if ensemble else s.queue.remaining(s.steps)
            n = min(n, self.spec.max_steps - s.steps)
            actions = np.stack([s.queue.pop(s.steps + i) for i in range(n)]).astype(np.float32)
            s.steps += n  # where the next plan starts, unless the episode ends inside
            s.obs = None
            items.append({"slot": s.index, "actions": actions})
        return items

    def _record(self, slot: _Slot, reply: dict[str, Any]) -> dict[str, Any]:
        job = slot.job
        return {
            "task": job.task,
            "episode": job.episode,
            "instruction": job.instruction,
            "seed": job.seed,
            "success": bool(reply["success"]),
            "steps": int(reply["steps"]),
            "video": reply["video"],
            "execute_steps": 1 if self.spec.execution == "ensemble" else self.execute_steps,
        }

    @staticmethod
    def _send(conns: list, waiting: list[bool], active: list[_Slot], items: list[dict]) -> None:
        per_worker: dict[int, list[dict]] = {}
        where = {s.index: s.worker for s in active}
        for item in items:
            per_worker.setdefault(where[item["slot"]], []).append(item)
        for w, msg in per_worker.items():
            conns[w].send(msg)
            waiting[w] = True

    @staticmethod
    def _receive(conns: list, waiting: list[bool]) -> Iterator[dict[str, Any]]:
        for w, due in enumerate(waiting):
            if not due:
                continue
            try:
                replies = conns[w].recv()
            except EOFError as e:
                raise RuntimeError(f"evaluation worker {w} exited unexpectedly") from e
            waiting[w] = False
            if isinstance(replies, dict):
                raise RuntimeError(f"evaluation worker {w} failed:\n{replies['error']}")
            yield from replies
