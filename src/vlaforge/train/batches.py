"""Training batches from the sampler, optionally built ahead in a background thread.

The sampler is vectorised, so one thread of look-ahead suffices (``num_workers`` batches queued). The
sampler state that follows each *consumed* batch is kept, so a checkpoint records where the stream the
trainer has actually read stands, not how far the thread has run ahead (exact resume).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from vlaforge.errors import InputError


class Batches:
    """`next()` gives the sampler's next batch; `state` is the sampler state after the last one given."""

    def __init__(self, sampler: Any, lookahead: int):
        self.sampler, self.lookahead = sampler, lookahead
        self.state = sampler.state_dict()
        self._q: queue.Queue | None = None
        self._stop = threading.Event()
        if lookahead > 0:
            self._q = queue.Queue(maxsize=lookahead)
            self._thread = threading.Thread(target=self._fill, daemon=True)
            self._thread.start()

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                self._put((next(self.sampler), self.sampler.state_dict()))
        except Exception as e:  # surfaced in the training thread
            self._put(e)

    def _put(self, item: Any) -> None:
        """Queues `item`, giving up when the trainer has stopped reading (`close`)."""
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self) -> dict[str, Any]:
        if self._q is None:
            batch = next(self.sampler)
            self.state = self.sampler.state_dict()
            return batch
        item = self._q.get()
        if isinstance(item, InputError):
            raise item
        if isinstance(item, Exception):
            raise RuntimeError(f"building a training batch failed: {item}") from item
        batch, self.state = item
        return batch

    def close(self) -> None:
        """Stops the look-ahead thread and the sampler's own workers (a streaming sampler's decoders)."""
        self._stop.set()
        if self._q is not None:
            # Wait for the thread to finish the batch it is building: a daemon thread still inside torch
            # or the sampler while the interpreter shuts down can hang the process on exit.
            self._thread.join(timeout=60)
        close = getattr(self.sampler, "close", None)
        if close is not None:
            close()
