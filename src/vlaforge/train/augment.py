"""Image and instruction augmentation applied to training batches on the fly.

Instructions (`instruction_augmentation`): with `TrainConfig.instruction_aug`, each sample whose
instruction an environment knows is given one of that task's phrasings (`vlaforge.envs.phrasing`).

Random shift (DrQ, Kostrikov et al. 2020; the random crop of Diffusion Policy, Chi et al. 2023, is the
same idea): every image moves by an integer offset drawn uniformly from [-pad, pad] in each axis, the
border pixels repeated into the uncovered band. That is DrQ's "pad by `pad` with replicate, crop back to
the original size", written as one gather, so the images keep their size and evaluation sees them
unchanged. It makes a small policy trained on a few hundred scenes far less sensitive to where exactly
things sit in the frame.

Every sample draws its own shift, and each camera its own; the frames of one sample's history share
theirs (the camera does not jump between consecutive frames). Draws come from a generator seeded by
(seed, rank, step, micro-batch), so the augmentation is a pure function of the training position and an
exactly resumed run augments exactly as one that never stopped, with no state to checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch

from vlaforge.errors import InputError

# A stream id so the augmentation's draws never coincide with another use of the run seed ("SHFT").
AUGMENT_STREAM = 0x53484654


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shifts each sample's image(s) by a random offset in [-pad, pad]^2, repeating the border.

    Args:
        images: uint8 (or float) (B, h, w, C), or (B, T, h, w, C) with a history of T frames per sample.
        pad: the largest shift in pixels; 0 returns `images` as they are.
        generator: the random stream (a CPU generator).

    Returns:
        A tensor of the same shape and dtype: out[b, y, x] = images[b, clamp(y + dy_b), clamp(x + dx_b)].
    """
    if pad < 0:
        raise InputError(f"the random shift must be >= 0 pixels; got {pad}")
    if pad == 0:
        return images
    if images.ndim not in (4, 5):
        raise InputError(f"images of shape {tuple(images.shape)}: expected (B, h, w, C) or (B, T, h, w, C)")
    b, (h, w) = images.shape[0], images.shape[-3:-1]
    shift = torch.randint(-pad, pad + 1, (b, 2), generator=generator).to(images.device)  # (B, [dy, dx])
    rows = (torch.arange(h, device=images.device)[None, :] + shift[:, :1]).clamp_(0, h - 1)  # (B, h)
    cols = (torch.arange(w, device=images.device)[None, :] + shift[:, 1:]).clamp_(0, w - 1)  # (B, w)
    batch = torch.arange(b, device=images.device)[:, None, None]
    if images.ndim == 4:
        return images[batch, rows[:, :, None], cols[:, None, :]]
    moved = images.transpose(0, 1)  # (T, B, h, w, C): the same shift for every frame of a sample
    return moved[:, batch, rows[:, :, None], cols[:, None, :]].transpose(0, 1).contiguous()


def augment_batch(
    batch: dict[str, Any], pad: int, seed: int, rank: int, step: int, micro: int
) -> dict[str, Any]:
    """The batch with every camera's images randomly shifted (`random_shift`); other keys untouched.

    The draws depend only on (seed, rank, step, micro), see the module docstring.
    """
    if pad <= 0:
        return batch
    g = torch.Generator().manual_seed(_mix(seed, rank, step, micro))
    images = {cam: random_shift(torch.as_tensor(img), pad, g) for cam, img in batch["images"].items()}
    return {**batch, "images": images}


def instruction_augmentation(cfg: Any, dataset: Any, verbose: bool = False) -> Any:
    """The run's `InstructionAug`, or None: augmentation off, or no instruction of the dataset is an
    environment's training instruction (real-robot data, a dataset of other origin)."""
    if not getattr(cfg, "instruction_aug", False):
        return None
    from vlaforge.envs.phrasing import InstructionAug

    tasks = list(getattr(dataset, "tasks", []) or [])
    aug = InstructionAug(tasks, dropout=float(getattr(cfg, "instruction_dropout", 0.0)))
    if verbose:
        n = sum(len(v) for v in aug.table.values())
        note = (
            f"{len(aug.table)} of {len(tasks)} task instructions get phrasings ({n} in all)"
            if aug
            else "no instruction of this dataset is an environment's; instructions kept as they are"
        )
        print(f"vlaforge train: instruction augmentation: {note}")
    return aug if aug else None


def mix_seed(*values: int) -> int:
    """One 63-bit seed from the training position (seed, rank, step, micro-batch)."""
    return _mix(*values)


def _mix(*values: int) -> int:
    """One 63-bit seed from several integers (splitmix64 steps), stable across runs and platforms."""
    x = AUGMENT_STREAM
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF
