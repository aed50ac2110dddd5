"""Training checkpoints: atomic on disk, complete enough to resume bit for bit.

A checkpoint is a directory ``RUN/checkpoints/step-XXXXXXX/`` holding

- a loadable policy dir (``policy.save_pretrained``: config, weights, norm stats); a LoRA run saves
  the merged weights here, so evaluation and serving never need peft,
- ``adapter.safetensors`` (LoRA runs only): the trainable tensors under their training names
  (adapters + head), since merged weights cannot be split back into base + adapter exactly,
- ``optimizer.safetensors``: every tensor of the optimizer state under ``state.{i}.{name}`` keys,
  with the rest (param groups, the trainable parameter names that fix ``i``) as JSON in the
  file's metadata,
- ``trainer_state.json``, written last: step, scheduler state, per-rank RNG states (python, numpy,
  torch, CUDA) and sampler states, the run config. Its presence marks the checkpoint complete.

Writing goes through `vlaforge.atomic`: everything is staged in a hidden sibling inside
``checkpoints/`` (`atomic.StagedDir`), fsynced and renamed to ``step-XXXXXXX``, then ``RUN/last`` is
switched by renaming a fresh symlink over it. A crash at any point leaves ``last`` on the previous complete
checkpoint, and readers only trust directories named ``step-*`` that contain ``trainer_state.json``.
Safetensors and JSON only: no pickle.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save_file

from vlaforge.atomic import StagedDir, replace_path, write_json
from vlaforge.errors import InputError

TRAINER_STATE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
ADAPTER_FILE = "adapter.safetensors"
CKPT_DIR = "checkpoints"
LAST = "last"
FORMAT_VERSION = 1


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


# ---------------------------------------------------------------------------------------------- RNG


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def rng_state(device: torch.device | str | None = None) -> dict[str, Any]:
    """Python, numpy, torch and, when `device` is a CUDA device, that device's generator state, JSON-safe.

    The CUDA state is saved whenever the run uses CUDA (not only once CUDA happens to be initialised), and
    only the run's own device: a torchrun rank must not touch, or depend on the count of, the other GPUs.
    """
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": {"version": version, "state": list(mt), "gauss_next": gauss},
        "numpy": {
            "kind": kind,
            "keys": np.asarray(keys).tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": _b64(torch.get_rng_state()),
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        out["cuda"] = {"device": device.index, "state": _b64(torch.cuda.get_rng_state(device))}
    return out


def set_rng_state(state: Mapping[str, Any], device: torch.device | str | None = None) -> None:
    """Restores what `rng_state` returned; the CUDA state goes to `device` when it is a CUDA device.

    A checkpoint written on CUDA and resumed on the CPU (or the reverse) restores the host generators
    only; such a continuation is not bit-exact anyway, and a warning says so.
    """
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            np.asarray(npy["keys"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(_unb64(state["torch"]))
    device = torch.device(device) if device is not None else None
    on_cuda = device is not None and device.type == "cuda"
    saved = state.get("cuda")
    if isinstance(saved, list):  # the first checkpoint format: every visible device's state
        index = device.index or 0 if on_cuda else 0
        saved = {"device": index, "state": saved[index]} if index < len(saved) else None
    if on_cuda and saved is not None:
        torch.cuda.set_rng_state(_unb64(saved["state"]), device)
    elif on_cuda or saved is not None:
        warnings.warn(
            "resuming a run on a different device type than it was saved on: the CUDA random stream "
            "cannot be restored, so the continuation is not bit-exact",
            stacklevel=2,
        )


def seed_everything(seed: int) -> None:
    """Seeds python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------- optimizer


def optimizer_to_safetensors(
    optimizer: torch.optim.Optimizer, param_names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flattens ``optimizer.state_dict()`` to (tensors, metadata) for `safetensors.torch.save_file`.

    Tensors go under ``state.{param_index}.{key}``; non-tensor per-parameter values and the param
    groups go to the metadata as JSON, with `param_names` (the names in optimizer order) so a resume
    can check it rebuilt the same parameter list.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {
        "vlaforge.format": str(FORMAT_VERSION),
        "param_groups": json.dumps(sd["param_groups"]),
        "scalars": json.dumps(scalars),
        "param_names": json.dumps(param_names),
    }
    return tensors, meta


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer, param_names: list[str]) -> None:
    """Loads an `optimizer_to_safetensors` file into `optimizer` (built over the same parameters)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "param_groups" not in meta:
        raise InputError(f"{path}: no 'param_groups' metadata; not an optimizer file written by vlaforge")
    saved_names = json.loads(meta["param_names"])
    if saved_names != param_names:
        diff = sorted(set(saved_names) ^ set(param_names))[:5]
        raise InputError(
            f"{path}: the optimizer was saved over {len(saved_names)} trainable parameters, this run has "
            f"{len(param_names)} (first differences: {diff}); resume with the same preset, head, freeze "
            "and LoRA settings"
        )
    tensors = load_file(str(path))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, extra in json.loads(meta["scalars"]).items():
        state.setdefault(int(idx), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})


# ------------------------------------------------------------------------------------------- saving


def save_checkpoint(
    run: Path,
    step: int,
    save_policy: Any,
    optimizer: torch.optim.Optimizer,
    param_names: list[str],
    trainer_state: dict[str, Any],
    adapter: dict[str, torch.Tensor] | None = None,
    keep: int = 3,
) -> Path:
    """Writes ``RUN/checkpoints/step-{step}`` atomically, points ``RUN/last`` at it, prunes old ones.

    Args:
        run: the run directory.
        step: the optimizer step the checkpoint is taken after.
        save_policy: a callable ``save_policy(dir)`` writing a loadable policy dir (the caller merges
            LoRA first).
        optimizer: the optimizer whose state is saved.
        param_names: names of the optimizer's parameters, in order.
        trainer_state: JSON-safe dict (step, scheduler, RNG, sampler, config); written last.
        adapter: trainable tensors by name for LoRA runs (saved to ``adapter.safetensors``).
        keep: how many complete checkpoints to keep (the newest; 0 keeps every one).

    Returns:
        The final checkpoint directory.
    """
    ckpts = Path(run) / CKPT_DIR
    name = step_dir_name(step)
    final = ckpts / name
    if final.exists():
        # The same step saved again (a run resumed from an older `last` while a newer checkpoint exists).
        # The complete checkpoint that `last` may name is never moved away: the new one gets a fresh name
        # (sorted after it), `last` is switched to it, and only then is the old copy removed.
        k = 1
        while (ckpts / f"{name}.{k}").exists():
            k += 1
        final = ckpts / f"{name}.{k}"
    staged = StagedDir(final)
    try:
        save_policy(staged.path)
        tensors, meta = optimizer_to_safetensors(optimizer, param_names)
        save_file(tensors, str(staged.path / OPTIMIZER_FILE), metadata=meta)
        if adapter is not None:
            save_file(
                {k: v.detach().to("cpu").contiguous().clone() for k, v in adapter.items()},
                str(staged.path / ADAPTER_FILE),
            )
        write_json(staged.path / TRAINER_STATE, {"format": FORMAT_VERSION, **trainer_state})
        staged.commit()  # fsyncs the tree, renames it to `final`, fsyncs checkpoints/
    except BaseException:
        staged.abort()
        raise
    point_last(Path(run), final)
    for other in ckpts.glob(f"{name}*"):
        if other != final and (other.name == name or other.name.startswith(name + ".")):
            shutil.rmtree(other, ignore_errors=True)
    prune(Path(run), keep)
    return final


def point_last(run: Path, target: Path) -> None:
    """Switches ``RUN/last`` to `target` atomically (a new symlink renamed over the old one)."""
    link = run / LAST
    tmp = run / f".{LAST}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(target, run), tmp)
    replace_path(tmp, link)  # a rename over the old link, then the run directory is fsynced


def is_complete(path: Path) -> bool:
    """A checkpoint is complete once its ``trainer_state.json`` (written last) exists."""
    return path.is_dir() and path.name.startswith("step-") and (path / TRAINER_STATE).is_file()


def list_checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    ckpts = Path(run) / CKPT_DIR
    if not ckpts.is_dir():
        return []
    return sorted(p for p in ckpts.iterdir() if is_complete(p))


def prune(run: Path, keep: int) -> None:
    """Keeps the newest `keep` complete checkpoints (every one when `keep` is 0, and always the one
    ``last`` names); clears leftovers."""
    complete = list_checkpoints(run) if keep else []
    last = find_last(run)
    for p in complete[: max(0, len(complete) - max(1, keep))]:
        if last is None or p.resolve() != last.resolve():
            shutil.rmtree(p, ignore_errors=True)
    for p in (Path(run) / CKPT_DIR).iterdir():
        # Hidden entries are staging leftovers of a writer that died (`atomic.StagedDir`).
        if p.name.startswith(".") or (p.name.startswith("step-") and not is_complete(p)):
            shutil.rmtree(p, ignore_errors=True)


def find_last(run: Path) -> Path | None:
    """The checkpoint to resume from: ``RUN/last`` if it names a complete one, else the newest complete."""
    link = Path(run) / LAST
    if link.is_symlink() or link.exists():
        target = link.resolve()
        if is_complete(target):
            return target
    complete = list_checkpoints(run)
    return complete[-1] if complete else None


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / TRAINER_STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read the trainer state ({e}); the checkpoint is damaged") from e
    if state.get("format") != FORMAT_VERSION:
        raise InputError(
            f"{path}: trainer state format {state.get('format')!r}; this vlaforge reads {FORMAT_VERSION}"
        )
    return state
