"""The one training loop: pre-training the tiny preset and fine-tuning a 7B model go through `train`.

- AdamW with no weight decay (OpenVLA's recipe, Kim et al., 2024), gradient clipping at 1.0 and gradient
  accumulation; the learning rate follows `config.lr_at`.
- bf16 autocast on CUDA only; CPU runs in fp32 so a resumed run can be checked bit for bit.
- Exact resume (openpi's ``train_test``: train, stop, resume, compare): a checkpoint holds the weights, the
  optimizer state, the step, every RNG state (dropout draws from torch's global generator) and the sampler
  position, so N steps straight equal k steps + resume + N - k steps bitwise on CPU
  (`vlaforge.train.checkpoint`).
- ``batch_size`` is per process and per micro-batch: one optimizer step sees
  ``batch_size * grad_accum * world_size`` samples (`vlaforge.train.distributed`).
- Around the loop (`vlaforge.train.runtime`): CPU threads sized to the free cores, a checkpoint at the
  next step boundary on Ctrl-C / SIGTERM (every rank at the same step), library warnings kept out of the
  progress bar.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vlaforge import metrics_log
from vlaforge.atomic import write_json
from vlaforge.errors import InputError
from vlaforge.train import checkpoint as ckpt
from vlaforge.train.augment import augment_batch, instruction_augmentation, mix_seed
from vlaforge.train.batches import Batches
from vlaforge.train.build import build_policy, fingerprint, frozen_fingerprint, load_trainable, restore_policy
from vlaforge.train.config import RESUMABLE_CHANGES, RUN_CONFIG, TrainConfig, check_resumable, lr_at
from vlaforge.train.distributed import (
    Dist,
    barrier,
    gather_json,
    loss_module,
    max_over_ranks,
    mean_over_ranks,
    setup,
    teardown,
)
from vlaforge.train.finetune import describe_counts, merged_lora, trainable_state_dict
from vlaforge.train.runtime import (
    StopOnSignal,
    ThreadPlan,
    TrainingStopped,
    WarningLog,
    apply_threads,
    eval_command,
    plan_threads,
    resume_command,
)

# Importable from here as well (the CLI, the demo and the benchmarks name vlaforge.train.loop).
__all__ = [
    "RESUMABLE_CHANGES",
    "TrainConfig",
    "TrainingStopped",
    "fingerprint",
    "lr_at",
    "restore_policy",
    "train",
]


def train(cfg: TrainConfig, stop_after: int | None = None) -> Path:
    """Trains (or resumes) a policy and returns the run directory.

    Args:
        cfg: the run's configuration.
        stop_after: stop (with a checkpoint) once this many optimizer steps have run in this call,
            even though the schedule spans ``cfg.steps``; a later ``resume`` continues as if the run
            had never stopped. Used to split long jobs and to test exact resumption.

    Returns:
        ``Path(cfg.out)``; ``out/last`` points to the final checkpoint.

    Raises:
        TrainingStopped: SIGINT / SIGTERM stopped the run; its checkpoint was written first (``out/last``).
    """
    d, device = setup(cfg.device)
    run = Path(cfg.out)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(d.world_size)))
    reserved = (1 if cfg.num_workers > 0 else 0) + (cfg.decode_workers if cfg.cache_max_gb == 0 else 0)
    plan = plan_threads(cfg.threads, reserved, local_world)
    threads_before = apply_threads(plan)  # before the model is built
    warned = WarningLog()
    try:
        with warned:
            step, signum, policy = _train(cfg, d, device, run, plan, stop_after)
    finally:
        torch.set_num_threads(threads_before)
        if d.main:
            warned.write(run)
        teardown(d)
    if signum and step < cfg.steps:
        said = (
            f"vlaforge train: stopped at step {step} of {cfg.steps}; checkpoint {run / 'last'}\n"
            f"  resume: {resume_command(cfg.dataset, run, d.world_size)}"
        )
        raise TrainingStopped(said if d.main else "", signum, run / "last")  # one rank says it
    if d.main:
        if step >= cfg.steps:
            print(f"vlaforge train: done, {step} steps; checkpoint {run / 'last'}")
            print(f"  next: {eval_command(run, getattr(policy, 'training_data', None))}")
        else:
            print(f"vlaforge train: paused at step {step} of {cfg.steps}; checkpoint {run / 'last'}")
    return run


def _train(
    cfg: TrainConfig, d: Dist, device: torch.device, run: Path, plan: ThreadPlan, stop_after: int | None
) -> tuple[int, int, nn.Module]:
    """`train`'s body: (the step reached, the signal that stopped it or 0, the policy)."""
    from vlaforge.data.dataset import open_dataset
    from vlaforge.data.sampler import make_sampler

    resume_from = _checkpoint_to_resume(cfg, run)
    ckpt.seed_everything(cfg.seed)
    dataset = open_dataset(
        cfg.dataset,
        image_size=cfg.image_size,
        unnormalized_actions=cfg.unnormalized_actions,
        keep_all_steps=cfg.keep_all_steps,
    )
    policy, counts = build_policy(
        cfg,
        dataset.embodiment(),
        dataset.norm_stats(),
        device,
        say=print if d.main and resume_from is None else None,
    )
    _record_dataset(policy, dataset)
    policy.to(device).train()
    params, base_lr, optimizer = _optimizer(cfg, policy)
    sampler = make_sampler(
        dataset,
        batch_size=cfg.batch_size,
        chunk_size=policy.chunk_size,
        seed=cfg.seed,
        shuffle=True,
        cameras=list(policy.embodiment.camera_names),
        rank=d.rank,
        world_size=d.world_size,
        cache_max_gb=cfg.cache_max_gb,
        decode_workers=cfg.decode_workers,
        history=policy.history,
        balance=cfg.balance,
    )
    frozen_print = frozen_fingerprint(policy)
    start = _Start()
    if resume_from is not None:
        start = _restore(cfg, d, resume_from, policy, optimizer, sampler, params, frozen_print)
    else:
        ckpt.seed_everything(cfg.seed + d.rank)  # ranks draw different dropout masks
    model = loss_module(policy, d, device)
    if resume_from is not None:
        ckpt.set_rng_state(start.mine["rng"], device)  # last: DDP's broadcast must not shift the streams
    if d.main:
        _open_run(cfg, d, device, run, start.step, resume_from, counts, plan, getattr(policy, "family", None))

    batches = Batches(sampler, lookahead=cfg.num_workers)
    try:
        session = _Session(
            cfg, d, device, run, policy, model, optimizer, params, batches, base_lr, frozen_print, counts,
            plan.threads, instruction_augmentation(cfg, dataset, d.main),
        )  # fmt: skip
        step, signum = session.loop(
            start.step, start.elapsed, stop_after, window=start.mine.get("log_window")
        )
    finally:
        batches.close()
    return step, signum, policy


def _record_dataset(policy: nn.Module, dataset: Any) -> None:
    """What the policy keeps of its training data: where it came from (evaluation refuses those scenes)
    and, for a mixture, every dataset's own statistics (the checkpoint's unnorm_keys)."""
    policy.training_data = dataset.training_data()
    policy.set_dataset_stats(getattr(dataset, "dataset_norm_stats", dict)())


def _optimizer(
    cfg: TrainConfig, policy: nn.Module
) -> tuple[list[tuple[str, nn.Parameter]], float, torch.optim.Optimizer]:
    """(trainable parameters by name, in optimizer order; the peak learning rate; AdamW without weight
    decay, OpenVLA's)."""
    params = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
    base_lr = cfg.lr if cfg.lr is not None else float(policy.preset.lr)
    optimizer = torch.optim.AdamW([p for _, p in params], lr=base_lr, betas=(0.9, 0.999), weight_decay=0.0)
    return params, base_lr, optimizer


@dataclass
class _Start:
    """Where a run (re)starts: the step, the time trained before, this rank's saved RNG/sampler state."""

    step: int = 0
    elapsed: float = 0.0
    mine: dict[str, Any] = field(default_factory=dict)


def _checkpoint_to_resume(cfg: TrainConfig, run: Path) -> Path | None:
    """The checkpoint `cfg.resume` continues from (None for a new run); refuses to overwrite a run."""
    if not cfg.resume:
        if ckpt.list_checkpoints(run):
            raise InputError(
                f"{run} already holds checkpoints; pass --resume to continue it or choose another --out"
            )
        return None
    found = ckpt.find_last(run)
    if found is None:
        raise InputError(
            f"--resume: {run} has no complete checkpoint to resume from (no {run / 'last'}); "
            "drop --resume to start a new run"
        )
    return found


def _restore(
    cfg: TrainConfig,
    d: Dist,
    resume_from: Path,
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: Any,
    params: list[tuple[str, nn.Parameter]],
    frozen_print: str,
) -> _Start:
    """Loads a checkpoint's trained tensors, optimizer and sampler state after checking it fits this run."""
    state = ckpt.read_trainer_state(resume_from)
    check_resumable(state["config"], cfg, resume_from)
    if state["world_size"] != d.world_size:
        raise InputError(
            f"{resume_from} was written by {state['world_size']} processes; this run has "
            f"{d.world_size}. Resume with the same number of processes to continue exactly."
        )
    if state.get("frozen_fingerprint") != frozen_print:
        raise InputError(
            f"{resume_from}: the frozen weights rebuilt for this run differ from those the run "
            "started with (same preset, init directory and seed are needed to resume)"
        )
    param_names = [n for n, _ in params]
    load_trainable(policy, resume_from, param_names)
    ckpt.load_optimizer(resume_from / ckpt.OPTIMIZER_FILE, optimizer, param_names)
    mine = state["ranks"][d.rank]
    sampler.load_state_dict(mine["sampler"])
    return _Start(int(state["step"]), float(state.get("elapsed_s", 0.0)), mine)


def _open_run(
    cfg: TrainConfig,
    d: Dist,
    device: torch.device,
    run: Path,
    step: int,
    resume_from: Path | None,
    counts: dict[str, int],
    plan: ThreadPlan,
    family: str | None = None,
) -> None:
    """Rank 0: the run directory, its config.json (new runs), metrics trimmed to `step`, one line to the user
    (`family`: the pi0 / SmolVLA model that replaces the head, if any)."""
    run.mkdir(parents=True, exist_ok=True)
    if resume_from is None:
        write_json(run / RUN_CONFIG, cfg.to_dict())
    metrics_log.keep_only(run / metrics_log.FILE, lambda r: r.get("step", 0) <= step)
    print(
        f"vlaforge train: {cfg.init or cfg.preset} / {f'{family} model' if family else f'{cfg.head} head'}, "
        f"{counts_line(counts, cfg)}, "
        f"{d.world_size} process(es) on {device}, {_threads_line(plan)}, "
        + (f"resuming at step {step} from {resume_from}" if resume_from else f"{cfg.steps} steps -> {run}")
    )


def _threads_line(plan: ThreadPlan) -> str:
    if plan.source != "auto" or not (plan.busy or plan.reserved):
        return f"{plan.threads} CPU thread(s)"
    why = [f"{plan.busy} busy with other processes"] if plan.busy else []
    why += [f"{plan.reserved} for data workers"] if plan.reserved else []
    return f"{plan.threads} CPU thread(s) ({plan.cores} cores, {', '.join(why)}; --threads to change)"


def counts_line(counts: dict[str, int], cfg: TrainConfig) -> str:
    how = f"LoRA r={cfg.lora_rank} alpha={cfg.lora_alpha}" if cfg.lora_rank else f"freeze={cfg.freeze}"
    return f"{how}: {describe_counts(counts)}"


@dataclass
class _Session:
    """What the step loop and the checkpointing share (built by `train`)."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    run: Path
    policy: nn.Module
    model: nn.Module  # the policy's loss module, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    params: list[tuple[str, nn.Parameter]]  # trainable, in optimizer order
    batches: Batches
    base_lr: float
    frozen_print: str
    counts: dict[str, int]
    threads: int  # torch intra-op threads (recorded in every metrics line)
    phrasing: Any = None  # InstructionAug, or None: instructions as the dataset has them
    window: dict = field(default_factory=dict)  # partial metric sums since the last log line

    def loop(
        self, step: int, elapsed_before: float, stop_after: int | None, window: dict | None = None
    ) -> tuple[int, int]:
        """Runs optimizer steps from `step` to the end (or `stop_after` more, or a signal), logging and
        saving; returns (the step reached, the signal that stopped it or 0).

        Metrics stay on the device as tensors and are read back to the host only at log steps (a CUDA
        step then never waits on a `.item()`). A metrics line is written every `log_every` steps and at
        the run's last step; a run stopped in between carries its partial averages in the checkpoint
        (`window`), so a resumed run logs the same averages as one that never stopped.

        Checkpoints: every `save_every` steps, after `save_minutes`, at the end, and at the boundary of
        the step during which a SIGINT / SIGTERM arrived; under DDP the ranks agree on both through one
        all-reduce per step, so they stop and save at the same step.
        """
        cfg, d, device, run = self.cfg, self.d, self.device, self.run
        model, optimizer, batches, base_lr = self.model, self.optimizer, self.batches, self.base_lr
        trainable = [p for _, p in self.params]
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
        end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
        bar = tqdm(total=cfg.steps, initial=step, desc="train", disable=not d.main, dynamic_ncols=True)
        t_start = time.perf_counter()
        window = window or {}
        sums = {
            k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in window.get("sums", {}).items()
        }
        self.window = {"sums": sums, "n": int(window.get("n", 0)), "samples": int(window.get("samples", 0))}
        t_log = t_start
        max_norm = cfg.clip_grad if cfg.clip_grad > 0 else float("inf")
        last_saved, signum, t_saved = None, 0, t_start
        with StopOnSignal() as stop:
            while step < end:
                lr = lr_at(step, base_lr, cfg.schedule, cfg.warmup_steps, cfg.steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                for micro in range(cfg.grad_accum):
                    batch = augment_batch(batches.next(), cfg.augment_shift, cfg.seed, d.rank, step, micro)
                    if self.phrasing is not None:
                        batch = self.phrasing(batch, mix_seed(cfg.seed, d.rank, step, micro))
                    sync = micro == cfg.grad_accum - 1 or d.world_size == 1
                    with nullcontext() if sync else model.no_sync(), autocast:
                        loss, metrics = model(batch)
                    (loss / cfg.grad_accum).backward()
                    for k, v in metrics.items():  # tensors: no host read-back here
                        v = torch.as_tensor(v).detach().to(device=device, dtype=torch.float64)
                        sums[k] = sums[k] + v if k in sums else v
                    self.window["n"] += 1
                    self.window["samples"] += cfg.batch_size * d.world_size
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)  # a tensor, read at log steps
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)

                if step % cfg.log_every == 0 or step == cfg.steps:
                    n = max(self.window["n"], 1)
                    means = {k: float(v) / n for k, v in sums.items()}
                    means["grad_norm"] = float(grad_norm)
                    means = mean_over_ranks(means, d, device)
                    now = time.perf_counter()
                    row = {
                        "step": step,
                        **{k: round(v, 6) for k, v in means.items()},
                        "lr": lr,
                        "threads": self.threads,
                        "samples_per_s": round(self.window["samples"] / max(now - t_log, 1e-9), 2),
                        "elapsed_s": round(elapsed_before + now - t_start, 2),
                    }
                    if d.main:
                        metrics_log.append(run / metrics_log.FILE, row)
                        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
                    t_log = now
                    sums.clear()
                    self.window["n"] = self.window["samples"] = 0

                # Every rank stops / saves at the same step: a signal any rank got, rank 0's clock.
                due = bool(cfg.save_minutes) and time.perf_counter() - t_saved >= 60 * cfg.save_minutes
                signum, due = max_over_ranks([stop.signum, int(due and d.main)], d, device)
                every = bool(cfg.save_every) and step % cfg.save_every == 0
                if signum or due or every or step == end:
                    self.save(step, elapsed_before + time.perf_counter() - t_start)
                    last_saved, t_saved = step, time.perf_counter()
                if signum:
                    break
        bar.close()
        if last_saved is None and d.main:  # nothing to do: the run was already complete
            print(f"{run}: already at step {step} of {cfg.steps}; nothing to train")
        return step, signum

    def save(self, step: int, elapsed: float) -> None:
        """Checkpoint on rank 0 with every rank's RNG and sampler state; all ranks wait for it."""
        cfg, d, device, run, policy = self.cfg, self.d, self.device, self.run, self.policy
        names = [n for n, _ in self.params]
        weights_print = fingerprint([p for p in policy.parameters()])
        per_rank = gather_json(
            {
                "rng": ckpt.rng_state(device),
                "sampler": self.batches.state,
                "weights_fingerprint": weights_print,
                # This rank's partial metric averages since the last logged step (read back at saves only).
                "log_window": {
                    "sums": {k: float(v) for k, v in self.window["sums"].items()},
                    "n": self.window["n"],
                    "samples": self.window["samples"],
                },
            },
            d,
            device,
        )
        if d.main:
            lora = cfg.lora_rank > 0

            def save_policy(directory: Path) -> None:
                with merged_lora(policy) if lora else nullcontext():
                    policy.save_pretrained(directory)

            state = {
                "step": step,
                "elapsed_s": elapsed,
                "scheduler": {
                    "schedule": cfg.schedule,
                    "base_lr": self.base_lr,
                    "warmup_steps": cfg.warmup_steps,
                    "total_steps": cfg.steps,
                    "last_lr": self.optimizer.param_groups[0]["lr"],
                },
                "world_size": d.world_size,
                "ranks": per_rank,
                "frozen_fingerprint": self.frozen_print,
                "counts": self.counts,
                "config": cfg.to_dict(),
            }
            ckpt.save_checkpoint(
                run,
                step,
                save_policy,
                self.optimizer,
                names,
                state,
                adapter=trainable_state_dict(policy) if lora else None,
                keep=cfg.keep_checkpoints,
            )
        barrier(d)
