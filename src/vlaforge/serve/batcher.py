"""Dynamic batching: requests from many connections become one forward pass, run off the event loop.

The batcher owns one queue and one inference thread. Its loop takes the first waiting request, then keeps
taking requests until `max_batch` are gathered or `max_wait_s` has passed since the first, and hands the
batch to the thread. While the thread computes, new requests wait in the queue, so under load the next
batch is already full when the thread frees up and no time is spent waiting (the same shape as the
continuous batching of LLM servers, with one forward pass per batch). When every connected client already
has its request in the batch, nobody else can join, and the batch runs at once.

Requests whose images differ in size (only possible with `--resize-images`) go in separate forward
passes. A request whose caller gave up (timeout, closed connection: the server cancels the caller) before
its batch started is dropped, and stops counting towards `max_queue` at once, so robots that vanish with
requests queued cannot make the server refuse the others as busy.
If a batch fails, each of its requests is retried alone, so one bad request cannot fail the others; an
`InputError` goes back to its caller as a bad request, anything else is logged with its traceback and
reported to the caller as an internal error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlaforge.errors import InputError
from vlaforge.types import Observation

log = logging.getLogger("vlaforge.serve")


class ServerBusy(Exception):
    """The queue is full: the caller should retry later."""


class InternalError(Exception):
    """The policy failed on a request for a reason that is not the request's fault (see the server log)."""


@dataclass
class _Request:
    obs: Observation
    future: asyncio.Future
    unnorm_key: str | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    waiting: bool = True  # counted in `Batcher.waiting` (queued, not given up, not yet in a batch)

    @property
    def group(self) -> tuple:
        """Requests of one group can share a forward pass: same shapes, same statistics."""
        shapes = tuple((k, v.shape) for k, v in sorted(self.obs.images.items()))
        return (*shapes, None if self.obs.state is None else self.obs.state.shape, self.unnorm_key)


def stack(observations: list[Observation]) -> dict[str, Any]:
    """Observations of equal shapes -> the batch `Policy.predict_action_batch` takes."""
    first = observations[0]
    batch: dict[str, Any] = {
        "images": {c: np.stack([o.images[c] for o in observations]) for c in first.images},
        "instruction": [str(o.instruction) for o in observations],
        "state": None,
    }
    if first.state is not None:
        batch["state"] = np.stack([o.state for o in observations]).astype(np.float32)
    return batch


class Batcher:
    """Gathers requests into batches and runs them on one inference thread.

    Args:
        predict_batch: `(batch, unnorm_key=...) -> (B, H, D)` actions (`Policy.predict_action_batch`).
        max_batch: most requests per forward pass (1: no batching).
        max_wait_s: how long the first request of a batch waits for company.
        max_queue: most requests waiting; beyond it `submit` raises `ServerBusy`.
        clients: how many clients are connected now (None: unknown). A batch waits for company only while
            some connected client has no request in it yet, so a lone robot never pays `max_wait_s`.
    """

    def __init__(
        self,
        predict_batch: Callable[..., np.ndarray],
        max_batch: int = 8,
        max_wait_s: float = 0.005,
        max_queue: int = 256,
        clients: Callable[[], int] | None = None,
    ):
        self.predict_batch = predict_batch
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.clients = clients
        self._queue: asyncio.Queue[_Request] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlaforge-infer")
        self.batches = 0
        self.requests = 0
        self.waiting = 0  # requests queued whose caller still waits (those given up are not counted)

    def start(self) -> None:
        """Starts the batching loop on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="vlaforge-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(
        self, obs: Observation, timeout_s: float, unnorm_key: str | None = None
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Queues one observation; returns its (H, D) actions and timings (ms) once its batch ran.
        `unnorm_key` names the statistics that un-normalise (a checkpoint trained on a mixture).

        Raises:
            ServerBusy: the queue is full.
            asyncio.TimeoutError: no answer within `timeout_s`.
            InputError: the policy refused the observation.
            InternalError: the policy failed (the traceback is in the server log).
        """
        assert self._queue is not None, "Batcher.start() was not called"
        if self.waiting >= self.max_queue:
            raise ServerBusy(f"{self.waiting} requests are waiting; retry in a moment")
        req = _Request(obs, asyncio.get_running_loop().create_future(), unnorm_key)
        self._queue.put_nowait(req)
        self.waiting += 1
        try:
            return await asyncio.wait_for(asyncio.shield(req.future), timeout_s)
        finally:  # answered, timed out, or cancelled because its connection is gone
            if not req.future.done():
                req.future.cancel()  # the batch loop skips it if it has not started yet
            self._unqueue(req)

    def _unqueue(self, req: _Request) -> None:
        if req.waiting:
            req.waiting = False
            self.waiting -= 1

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch: list[_Request] = []
            while not batch:  # requests given up while queued are passed over
                self._take(batch, await self._queue.get())
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    self._take(batch, self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or (self.clients is not None and self.clients() <= len(batch)):
                    break
                try:
                    self._take(batch, await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            groups: dict[tuple, list[_Request]] = {}
            for r in batch:
                groups.setdefault(r.group, []).append(r)
            for group in groups.values():
                group = [r for r in group if not r.future.done()]  # callers gone during earlier groups
                if not group:
                    continue
                started = time.perf_counter()
                results = await loop.run_in_executor(
                    self._executor, self._run, [r.obs for r in group], group[0].unnorm_key
                )
                self.batches += 1
                self.requests += len(group)
                for r, result in zip(group, results):
                    if r.future.done():
                        continue
                    if isinstance(result, BaseException):
                        r.future.set_exception(result)
                    else:
                        actions, infer_ms = result
                        timing = {
                            "queue_ms": (started - r.enqueued) * 1000,
                            "infer_ms": infer_ms,
                            "batch_size": len(group),
                        }
                        r.future.set_result((actions, timing))

    def _take(self, batch: list[_Request], req: _Request) -> None:
        self._unqueue(req)
        if not req.future.done():
            batch.append(req)

    def _run(self, observations: list[Observation], unnorm_key: str | None = None) -> list[Any]:
        """On the inference thread: one forward pass, or one per request if the batch fails."""
        t0 = time.perf_counter()
        try:
            options = {} if unnorm_key is None else {"unnorm_key": unnorm_key}
            actions = self.predict_batch(stack(observations), **options)
            ms = (time.perf_counter() - t0) * 1000
            return [(np.asarray(a, dtype=np.float32), ms) for a in actions]
        except Exception as e:
            if len(observations) == 1:
                return [self._error(e)]
            log.warning("a batch of %d failed (%s); running its requests one by one", len(observations), e)
        return [self._run([o], unnorm_key)[0] for o in observations]

    @staticmethod
    def _error(e: Exception) -> BaseException:
        if isinstance(e, InputError):
            return e
        log.error("the policy failed on a request", exc_info=e)
        return InternalError("the policy failed on this request; the server log has the details")


__all__ = ["Batcher", "InternalError", "ServerBusy", "stack"]
