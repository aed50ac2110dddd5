"""Random-shift augmentation against DrQ's definition (pad with the border, crop back at the offset)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge.errors import InputError
from vlaforge.train.augment import augment_batch, random_shift


def _drq(img: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
    """(h, w, C): np.pad with edge values by `pad`, then the window starting at (pad + dy, pad + dx)."""
    h, w = img.shape[:2]
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return padded[pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def _shift_of(out: np.ndarray, img: np.ndarray, pad: int) -> tuple[int, int]:
    hits = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
            if np.array_equal(out, _drq(img, dy, dx, pad))]  # fmt: skip
    assert len(hits) == 1, hits
    return hits[0]


def test_every_sample_is_a_drq_shift_of_its_own():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (16, 20, 24, 3), dtype=np.uint8))
    out = random_shift(images, 3, torch.Generator().manual_seed(5))
    assert out.shape == images.shape and out.dtype == torch.uint8
    shifts = [_shift_of(out[b].numpy(), images[b].numpy(), 3) for b in range(16)]
    assert len(set(shifts)) > 4  # samples draw their own offsets
    assert all(-3 <= dy <= 3 and -3 <= dx <= 3 for dy, dx in shifts)


def test_history_frames_share_their_sample_shift():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (6, 3, 16, 16, 3), dtype=np.uint8))  # (B, T, h, w, 3)
    out = random_shift(images, 2, torch.Generator().manual_seed(2))
    for b in range(6):
        shifts = {_shift_of(out[b, t].numpy(), images[b, t].numpy(), 2) for t in range(3)}
        assert len(shifts) == 1


def test_the_draws_are_a_function_of_the_training_position():
    batch = {"images": {"corner2": torch.zeros(4, 8, 8, 3, dtype=torch.uint8).random_(0, 255)}, "state": 1}
    a = augment_batch(batch, 2, seed=0, rank=0, step=10, micro=0)
    b = augment_batch(batch, 2, seed=0, rank=0, step=10, micro=0)
    c = augment_batch(batch, 2, seed=0, rank=0, step=11, micro=0)
    assert torch.equal(a["images"]["corner2"], b["images"]["corner2"])  # resume replays the same shifts
    assert not torch.equal(a["images"]["corner2"], c["images"]["corner2"])
    assert a["state"] == 1 and augment_batch(batch, 0, 0, 0, 0, 0) is batch
    with pytest.raises(InputError, match="must be >= 0 pixels"):
        random_shift(batch["images"]["corner2"], -1, torch.Generator())
