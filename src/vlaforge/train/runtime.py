"""What a training process does around its step loop: how many CPU threads it uses, how Ctrl-C / SIGTERM
stop it with a checkpoint, and where third-party warnings go instead of into the progress bar.

- Threads: an OpenMP step waits for its slowest thread, so a thread that shares a core with another
  process slows every step down (measured on 2 cores with one kept busy: 6-8 samples/s with torch's 2
  threads, ~200 with 1). `plan_threads` sizes the pool to the cores left free.
- Signals: the first SIGINT / SIGTERM only sets a flag; the loop checkpoints at the next step boundary
  and raises `TrainingStopped` (exit status 128 + the signal: 130, 143). A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


# ------------------------------------------------------------------------------------------ threads
@dataclass
class ThreadPlan:
    """The threads a run uses and why (recorded in its metrics lines)."""

    threads: int
    cores: int  # cores this process may use (its share of the affinity set)
    busy: int  # of those, kept busy by other processes when the run started
    reserved: int  # left to this run's own helpers (look-ahead thread, decode workers)
    cap: int  # torch's own default (OMP_NUM_THREADS when set)
    source: str  # "threads" (given), "auto"


def _cpu_times(cpus: set[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over `cpus`, from /proc/stat; None where there is none."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for ln in lines:
        name, *vals = ln.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        v = [float(x) for x in vals[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(v)
        busy += sum(v) - v[3] - v[4]
    return busy, total


def busy_cores(cpus: set[int], seconds: float = 0.2) -> float:
    """How many of `cpus` other processes keep busy, sampled over `seconds` (this process sleeps)."""
    first = _cpu_times(cpus)
    if first is None:
        return 0.0
    time.sleep(seconds)
    second = _cpu_times(cpus)
    if second is None or second[1] <= first[1]:
        return 0.0
    return len(cpus) * (second[0] - first[0]) / (second[1] - first[1])


def plan_threads(given: int | None, reserved: int, local_world: int = 1) -> ThreadPlan:
    """The intra-op threads of a training process (`TrainConfig.threads` documents the rule)."""
    cap = torch.get_num_threads()
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = max(1, len(cpus) // max(1, local_world))
    if given is not None:
        return ThreadPlan(given, cores, 0, reserved, cap, "threads")
    if cap <= 1:  # nothing to size (OMP_NUM_THREADS=1, or torch.set_num_threads(1) by the caller)
        return ThreadPlan(1, cores, 0, reserved, cap, "auto")
    busy = int(busy_cores(cpus) / max(1, local_world) + 0.5)  # a core half used by others is not free
    return ThreadPlan(max(1, min(cap, cores - busy - reserved)), cores, busy, reserved, cap, "auto")


def apply_threads(plan: ThreadPlan) -> int:
    """Sets torch's intra-op threads (and inter-op threads to 1, where still possible); returns the
    previous intra-op count, which `train` restores when it returns."""
    before = torch.get_num_threads()
    torch.set_num_threads(plan.threads)
    if torch.get_num_interop_threads() != 1:
        # Allowed once, before any inter-op work; a later run in the same process keeps what it found.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
    return before


# ------------------------------------------------------------------------------------------ signals
class TrainingStopped(KeyboardInterrupt):
    """A run stopped by SIGINT / SIGTERM after writing its checkpoint; `str()` says how to resume.

    A KeyboardInterrupt, so code that already handles Ctrl-C around `train` keeps doing so."""

    def __init__(self, message: str, signum: int, checkpoint: Path):
        super().__init__(message)
        self.signum, self.checkpoint = signum, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def __str__(self) -> str:
        return str(self.args[0])


class StopOnSignal:
    """Within `with`: the first SIGINT / SIGTERM sets `signum` (the loop stops at the next step boundary);
    a second SIGINT raises KeyboardInterrupt at once. Outside the main thread it does nothing."""

    def __init__(self) -> None:
        self.signum = 0
        self._before: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: abort without a checkpoint
        if not self.signum:
            self.signum = signum
            print(
                f"\nvlaforge train: {signal.Signals(signum).name}: saving a checkpoint at the end of this "
                "step, then stopping (Ctrl-C again aborts without one)",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._before[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._before.items():
            signal.signal(s, h)


def resume_command(dataset: str, out: Path, world_size: int = 1) -> str:
    """The command that continues run `out` (its own settings come from its checkpoint); a distributed run
    resumes with as many processes (torchrun's other options as before)."""
    launch = f"torchrun --nproc_per_node {world_size} -m vlaforge.cli" if world_size > 1 else "vlaforge"
    return f"{launch} train --dataset {dataset} --out {out} --resume"


def eval_command(out: Path, training_data: dict[str, Any] | None) -> str:
    """The command that evaluates run `out`'s last checkpoint on the tasks it was trained on."""
    tasks = list(dict.fromkeys(e["task"] for e in (training_data or {}).get("episodes") or []))
    env = (training_data or {}).get("env")
    where = f" --tasks {','.join(tasks)}" if tasks and env else ""
    return f"vlaforge eval --policy {out / 'last'}{where} --out {out / 'eval'}"


# ------------------------------------------------------------------------------------------ warnings
class _Collect(logging.Handler):
    def __init__(self, log: WarningLog):
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        self.log.seen.setdefault(("log", record.name, msg), f"{record.name}: {record.levelname}: {msg}")


@dataclass
class WarningLog:
    """Within `with`: Python warnings (a library's FutureWarning, ...) and what libraries log to stderr at
    WARNING and above (transformers' `logger.warning`) are kept, each once, instead of being printed into
    the progress bar; `write` puts them in ``RUN/warnings.log``. vlaforge's own loggers are left alone."""

    seen: dict[tuple, str] = field(default_factory=dict)

    def _show(self, message: Any, category: type, filename: str, lineno: int, *rest: Any) -> None:
        key = (category.__name__, str(message), filename, lineno)
        self.seen.setdefault(key, f"{filename}:{lineno}: {category.__name__}: {message}")

    def __enter__(self) -> WarningLog:
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.showwarning = self._show
        # Loggers that print to stderr themselves (a library's own handler) write here instead.
        self._swapped: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []
        loggers = [logging.getLogger()] + [
            lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
        ]
        for lg in loggers:
            if lg.name.startswith("vlaforge"):
                continue
            for h in list(lg.handlers):
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr:
                    mine = _Collect(self)
                    lg.removeHandler(h)
                    lg.addHandler(mine)
                    self._swapped.append((lg, h, mine))
        self._last_resort, logging.lastResort = logging.lastResort, _Collect(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        for lg, h, mine in self._swapped:
            lg.removeHandler(mine)
            lg.addHandler(h)
        logging.lastResort = self._last_resort
        self._ctx.__exit__(*exc)

    def write(self, run: Path) -> None:
        """Appends the warnings to ``run/warnings.log`` and says so in one line (no warning text)."""
        if not self.seen or not run.is_dir():
            return
        with open(run / "warnings.log", "a") as f:
            f.write("".join(line + "\n" for line in self.seen.values()))
        print(f"vlaforge train: {len(self.seen)} library warning(s) written to {run / 'warnings.log'}")
        self.seen.clear()
