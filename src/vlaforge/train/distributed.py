"""Data parallelism through ``torchrun``: which process this is, its device, and the few collectives the
loop needs.

With ``WORLD_SIZE > 1`` the process group starts (NCCL on CUDA, Gloo on CPU), the loss module is wrapped in
DDP, every rank reads its own shard of the sampler, and only rank 0 writes metrics and checkpoints (the RNG
and sampler states of all ranks are gathered into it, as JSON over tensors: no pickling).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vlaforge.errors import InputError


@dataclass
class Dist:
    """This process's place in the run (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_choice: str) -> tuple[Dist, torch.device]:
    """Reads torchrun's environment, picks the device (``auto``, ``cpu`` or ``cuda``), starts the process
    group when distributed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    want_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise InputError("device='cuda' but torch sees no CUDA device; use --device cpu or auto")
    if want_cuda:
        device = torch.device("cuda", d.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        if local_world > 1:  # share the cores between the processes of this machine
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return d, device


def teardown(d: Dist) -> None:
    if d.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


class LossModule(nn.Module):
    """Routes ``forward`` to ``policy.compute_loss`` so DDP's gradient hooks see the call."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.policy.compute_loss(batch)


def loss_module(policy: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """The module the loop calls: the policy's loss, DDP-wrapped when distributed."""
    model: nn.Module = LossModule(policy)
    if d.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # Every trainable parameter gets a gradient at every step (`finetune.freeze_unused`).
            find_unused_parameters=False,
        )
    return model


def gather_json(obj: Any, d: Dist, device: torch.device) -> list[Any]:
    """Every rank's JSON-able `obj`, in rank order (tensors on the wire; no pickling)."""
    if d.world_size == 1:
        return [obj]
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=device)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(d.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    bufs = [torch.zeros_like(padded) for _ in range(d.world_size)]
    dist.all_gather(bufs, padded)
    return [json.loads(bytes(b[: int(s.item())].cpu().tolist()).decode()) for b, s in zip(bufs, sizes)]


def mean_over_ranks(values: dict[str, float], d: Dist, device: torch.device) -> dict[str, float]:
    """The mean of each value over the ranks (the value itself in a single process)."""
    if d.world_size == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / d.world_size for k, v in zip(keys, t.tolist())}


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        dist.barrier()


def max_over_ranks(values: list[int], d: Dist, device: torch.device) -> list[int]:
    """Each value's maximum over the ranks, so every rank takes the same decision at the same step (stop
    on a signal one rank received, checkpoint when rank 0's clock says so). One small all-reduce."""
    if d.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]
