"""OpenVLA's action tokenizer: continuous actions in [-1, 1] as the last `n_bins` ids of an LM vocabulary.

RT-2 and OpenVLA discretise each normalised action dim into 256 uniform bins and reuse the least-used
token ids of the language model's vocabulary (for Llama-2's 32000 tokens: ids 31744..31999). The rule,
matched exactly to OpenVLA's ``ActionTokenizer``:

    bins    = linspace(-1, 1, n_bins)               # n_bins edges
    centres = (bins[:-1] + bins[1:]) / 2            # n_bins - 1 values
    encode: id  = vocab_size - digitize(clip(a, -1, 1), bins)        # in [vocab - n_bins, vocab - 1]
    decode: idx = clip(vocab_size - id - 1, 0, n_bins - 2);  a = centres[idx]

`digitize` puts a = -1 in bin 1 and a = 1 in bin n_bins, so encode never leaves the range; decode clips,
so any id (even a text token a model emitted by mistake) maps to a valid action. Pure numpy.
"""

from __future__ import annotations

import numpy as np

from vlaforge.errors import InputError


class BinTokenizer:
    """Uniform-bin action tokenizer on normalised actions.

    Args:
        vocab_size: size of the LM vocabulary whose last `n_bins` ids hold the bins (32000 for Llama-2;
            OpenVLA's checkpoint pads the embedding to 32064 but still uses 32000 here).
        n_bins: number of bin edges (256 in OpenVLA).
        low, high: the range of normalised actions (OpenVLA: -1, 1).
    """

    def __init__(self, vocab_size: int = 32000, n_bins: int = 256, low: float = -1.0, high: float = 1.0):
        if n_bins < 2:
            raise InputError(f"n_bins must be >= 2, got {n_bins}")
        if vocab_size < n_bins:
            raise InputError(f"vocab_size ({vocab_size}) must be >= n_bins ({n_bins})")
        if not high > low:
            raise InputError(f"need low < high, got low={low}, high={high}")
        self.vocab_size = int(vocab_size)
        self.n_bins = int(n_bins)
        self.low, self.high = float(low), float(high)
        self.bins = np.linspace(low, high, n_bins)
        self.centres = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def first_id(self) -> int:
        """The smallest action token id (31744 for OpenVLA)."""
        return self.vocab_size - self.n_bins

    @property
    def last_id(self) -> int:
        """The largest action token id (31999 for OpenVLA)."""
        return self.vocab_size - 1

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Normalised actions (..., D) -> int64 token ids (..., D) in [first_id, last_id]."""
        a = np.clip(np.asarray(actions, dtype=np.float64), self.low, self.high)
        if np.isnan(a).any():
            raise InputError("cannot tokenize NaN actions; check the normalisation statistics")
        return (self.vocab_size - np.digitize(a, self.bins)).astype(np.int64)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Token ids (..., D) -> normalised actions (..., D) float32 (bin centres)."""
        idx = np.clip(self.vocab_size - np.asarray(ids, dtype=np.int64) - 1, 0, self.n_bins - 2)
        return self.centres[idx].astype(np.float32)

    def is_action_token(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask of ids that fall in the action range."""
        ids = np.asarray(ids)
        return (ids >= self.first_id) & (ids <= self.last_id)

    def to_dict(self) -> dict:
        return {"vocab_size": self.vocab_size, "n_bins": self.n_bins, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, d: dict) -> BinTokenizer:
        return cls(**d)

    def __repr__(self) -> str:
        return f"BinTokenizer(vocab_size={self.vocab_size}, n_bins={self.n_bins}, ids {self.first_id}..{self.last_id})"
