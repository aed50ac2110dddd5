"""FAST action tokenizer (pi0-FAST): a DCT over each chunk's time axis, then byte-pair encoding.

Pertsch et al., 2025, "FAST: Efficient Action Tokenization for Vision-Language-Action Models". Pure numpy +
`tokenizers`, no model imports; saved as JSON only (fast.json + tokenizer.json). The pipeline, its error
bound and the design choices (character range, vocabulary, LM-id placement) are in docs/fast.md.
`train_tokenizer_command` is `vlaforge tokenizer train`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tokenizers import Tokenizer, models, trainers

from vlaforge.actions.normalize import Normalizer
from vlaforge.atomic import atomic_dir
from vlaforge.errors import InputError

FORMAT_VERSION = 1
CONFIG_FILE = "fast.json"
BPE_FILE = "tokenizer.json"
CHAR_BASE = 0x100  # first character used for coefficient values (after ASCII and Latin-1)
MAX_CHAR = 0xD7FF  # the last code point before the UTF-16 surrogates, which are not valid characters
MIN_PAIR_FREQUENCY = 2


@functools.lru_cache(maxsize=32)
def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix M (n, n), float64, read-only: coefficients = M @ x, x = M.T @ coefficients.

    M[k, i] = a_k cos(pi / n * (i + 1/2) * k), with a_0 = sqrt(1 / n) and a_k = sqrt(2 / n) for k > 0
    (scipy's ``dct(x, type=2, norm="ortho")``); M is orthogonal, so its transpose is the inverse (DCT-III).
    """
    if n < 1:
        raise InputError(f"the DCT needs a chunk of at least 1 step, got {n}")
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi / n * (i + 0.5) * k) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    m.setflags(write=False)
    return m


def coefficient_bound(n: int, scale: float) -> int:
    """The largest |round(scale * c)| a DCT coefficient c of any chunk of `n` steps in [-1, 1] can reach.

    |c_k| = |sum_i M[k, i] x_i| <= sum_i |M[k, i]| with |x_i| <= 1; the zero frequency reaches sqrt(n).
    """
    # rint(v) <= ceil(v); the 1e-9 covers float error in the DCT sums (costing at most one spare value).
    return int(np.ceil(scale * np.abs(dct_matrix(n)).sum(axis=1).max() + 1e-9))


def dct(x: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-II along axis -2 (time) of (..., H, D) -> (..., H, D) float64."""
    return np.einsum("kn,...nd->...kd", dct_matrix(x.shape[-2]), x)


def idct(c: np.ndarray) -> np.ndarray:
    """Inverse of `dct`: (..., H, D) coefficients -> (..., H, D) float64."""
    return np.einsum("kn,...kd->...nd", dct_matrix(c.shape[-2]), c)


def _check_chunks(actions: np.ndarray, what: str = "actions") -> np.ndarray:
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 3 or 0 in a.shape:
        hint = " (one chunk: add a batch axis, actions[None])" if a.ndim == 2 else ""
        raise InputError(f"{what} must be (B, H, D) normalised chunks, got shape {a.shape}{hint}")
    if not np.isfinite(a).all():
        raise InputError(f"{what} contain NaN or inf; check the normalisation statistics")
    return a


class FASTTokenizer:
    """DCT + BPE action tokenizer over normalised chunks (B, H, D). Build with `train` or `load`.

    Args:
        bpe: the trained `tokenizers.Tokenizer` (a BPE model over coefficient characters).
        horizon: H the tokenizer was trained on (the default for `decode`).
        action_dim: D the tokenizer was trained on.
        scale: coefficients are multiplied by this before rounding (paper: 10).
        min_value, max_value: the range of rounded coefficients the BPE alphabet covers; character
            CHAR_BASE stands for min_value.

    Attributes:
        last_encode_clipped: coefficients clipped to [min_value, max_value] by the last `encode`.
        last_decode_invalid: chunks of the last `decode` that had the wrong length or unknown ids.
    """

    def __init__(
        self, bpe: Tokenizer, horizon: int, action_dim: int, scale: float, min_value: int, max_value: int
    ):
        if horizon < 1 or action_dim < 1:
            raise InputError(f"horizon ({horizon}) and action_dim ({action_dim}) must be >= 1")
        if not scale > 0:
            raise InputError(f"scale must be > 0, got {scale}")
        if max_value < min_value:
            raise InputError(f"max_value ({max_value}) < min_value ({min_value})")
        if CHAR_BASE + max_value - min_value > MAX_CHAR:
            raise InputError(
                f"the coefficients span {max_value - min_value + 1} values, more than the "
                f"{MAX_CHAR - CHAR_BASE + 1} characters available; lower `scale` (now {scale})"
            )
        self.bpe = bpe
        self.horizon, self.action_dim = int(horizon), int(action_dim)
        self.scale = float(scale)
        self.min_value, self.max_value = int(min_value), int(max_value)
        self.last_encode_clipped = 0
        self.last_decode_invalid = 0
        # Per FAST id, the integer coefficients its token stands for (decode is a lookup, not a string walk).
        self._values: list[np.ndarray] = []
        for i in range(bpe.get_vocab_size()):
            token = bpe.id_to_token(i)
            if token is None:
                raise InputError(f"the BPE vocabulary has no token for id {i}; retrain the tokenizer")
            self._values.append(self._chars_to_values(token))

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, actions: np.ndarray, vocab_size: int = 1024, scale: float = 10.0) -> FASTTokenizer:
        """Fits the BPE model on normalised chunks.

        Args:
            actions: (N, H, D) normalised chunks in [-1, 1] (clipped to it).
            vocab_size: the largest BPE vocabulary to learn (paper: 1024); it must hold at least every
                coefficient value between the smallest and largest seen in `actions`.
            scale: coefficient scale before rounding (paper: 10); larger is more precise and less
                compressible.

        Raises:
            InputError: on a bad shape, NaNs, or a vocabulary too small for the coefficient range.
        """
        a = np.clip(_check_chunks(actions), -1.0, 1.0)
        if not scale > 0:
            raise InputError(f"scale must be > 0, got {scale}")
        if vocab_size < 1:
            raise InputError(f"vocab_size must be >= 1, got {vocab_size}")
        q = np.rint(dct(a) * scale).astype(np.int64)  # (N, H, D)
        bound = coefficient_bound(a.shape[1], scale)
        if 2 * bound + 1 <= vocab_size // 2:
            lo, hi = -bound, bound  # every chunk in [-1, 1] is encodable
        else:
            lo, hi = int(q.min()), int(q.max())  # only what training saw; the rest is clipped
        n_values = hi - lo + 1
        if vocab_size < n_values:
            raise InputError(
                f"vocab_size {vocab_size} is smaller than the {n_values} distinct coefficient values "
                f"({lo}..{hi}) at scale {scale}: raise vocab_size or lower scale"
            )
        if CHAR_BASE + n_values - 1 > MAX_CHAR:
            raise InputError(f"the coefficients span {n_values} values at scale {scale}; lower scale")
        strings = _to_strings(q - lo)
        bpe = Tokenizer(models.BPE())  # no unk token, no normaliser, no pre-tokenizer: a chunk is one word
        trainer = trainers.BpeTrainer(
            vocab_size=int(vocab_size),
            min_frequency=MIN_PAIR_FREQUENCY,
            special_tokens=[],
            initial_alphabet=[chr(CHAR_BASE + v) for v in range(n_values)],
            limit_alphabet=n_values,
            show_progress=False,
        )
        bpe.train_from_iterator(strings, trainer=trainer, length=len(strings))
        return cls(bpe, a.shape[1], a.shape[2], scale, lo, hi)

    # ------------------------------------------------------------------ encode / decode
    @property
    def vocab_size(self) -> int:
        """Number of FAST ids (the BPE vocabulary: the coefficient alphabet plus the merges)."""
        return len(self._values)

    def encode(self, actions: np.ndarray) -> list[list[int]]:
        """Normalised chunks (B, H, D), clipped to [-1, 1] -> B variable-length lists of FAST ids.

        Any H and D are accepted; the BPE merges were fitted on the training H and D, where they compress
        best.
        """
        a = np.clip(_check_chunks(actions), -1.0, 1.0)
        q = np.rint(dct(a) * self.scale).astype(np.int64)  # (B, H, D)
        clipped = np.clip(q, self.min_value, self.max_value)
        self.last_encode_clipped = int((clipped != q).sum())
        strings = _to_strings(clipped - self.min_value)
        return [e.ids for e in self.bpe.encode_batch(strings, add_special_tokens=False)]

    def decode(
        self,
        ids: Sequence[Sequence[int]],
        horizon: int | None = None,
        action_dim: int | None = None,
        return_valid: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """FAST ids (B lists) -> normalised chunks float32 (B, H, D) in [-1, 1].

        Ids outside [0, vocab_size) are dropped; a coefficient sequence shorter than H * D is padded with
        zeros (no energy at the missing high frequencies), a longer one is cut. Such chunks are counted in
        `last_decode_invalid` (and marked False in the returned mask with `return_valid`).

        Args:
            ids: per chunk, the FAST ids (e.g. from `encode`, or `from_lm_ids` on a model's output).
            horizon, action_dim: H and D of the chunks (default: those the tokenizer was trained on).
            return_valid: also return a bool (B,) mask, True where a chunk decoded without repair.
        """
        h = self.horizon if horizon is None else int(horizon)
        d = self.action_dim if action_dim is None else int(action_dim)
        if h < 1 or d < 1:
            raise InputError(f"decode needs horizon >= 1 and action_dim >= 1, got {h} and {d}")
        n = h * d
        q = np.zeros((len(ids), n), dtype=np.int64)  # (B, H * D), low frequencies first
        valid = np.ones(len(ids), dtype=bool)
        vocab = len(self._values)
        for b, seq in enumerate(ids):
            seq = [int(i) for i in seq]
            known = [self._values[i] for i in seq if 0 <= i < vocab]
            values = np.concatenate(known) if known else np.zeros(0, dtype=np.int64)
            valid[b] = len(known) == len(seq) and len(values) == n
            m = min(len(values), n)
            q[b, :m] = values[:m] + self.min_value
        self.last_decode_invalid = int((~valid).sum())
        coeffs = q.reshape(len(ids), h, d) / self.scale  # (B, H, D)
        out = np.clip(idct(coeffs), -1.0, 1.0).astype(np.float32)
        return (out, valid) if return_valid else out

    def round_trip_error(self, actions: np.ndarray) -> float:
        """Max abs error of decode(encode(x)) against x (clipped to [-1, 1]), in normalised units."""
        a = np.clip(_check_chunks(actions), -1.0, 1.0)
        out = self.decode(self.encode(a), a.shape[1], a.shape[2])
        return float(np.abs(out - a).max())

    # ------------------------------------------------------------------ LM vocabulary
    def to_lm_ids(self, fast_ids: Sequence[Sequence[int]], lm_vocab_size: int) -> list[list[int]]:
        """FAST ids -> ids of an LM vocabulary of `lm_vocab_size`, on its last `vocab_size` ids.

        FAST id i becomes lm_vocab_size - 1 - i (reversed, like OpenVLA's bins and pi0-FAST): the ids
        lie in [lm_vocab_size - vocab_size, lm_vocab_size). A token head appends ``</s>`` itself.
        """
        top = self._check_lm_vocab(lm_vocab_size) - 1
        out = []
        for seq in fast_ids:
            arr = np.asarray(seq, dtype=np.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
                raise InputError(f"FAST ids must be in [0, {self.vocab_size}), got {arr.min()}..{arr.max()}")
            out.append((top - arr).tolist())
        return out

    def from_lm_ids(
        self, lm_ids: Sequence[Sequence[int]], lm_vocab_size: int, eos_id: int | None = None
    ) -> list[list[int]]:
        """LM ids (a token head's output) -> FAST ids for `decode`; the inverse of `to_lm_ids`.

        Each sequence is cut at its first `eos_id` (when given). An id outside the FAST range (a text
        token) becomes -1, which `decode` drops and flags.
        """
        first = self._check_lm_vocab(lm_vocab_size) - self.vocab_size
        out = []
        for seq in lm_ids:
            arr = np.asarray(seq, dtype=np.int64).reshape(-1)
            if eos_id is not None:
                stop = np.flatnonzero(arr == eos_id)
                arr = arr[: stop[0]] if stop.size else arr
            inside = (arr >= first) & (arr < lm_vocab_size)
            out.append(np.where(inside, lm_vocab_size - 1 - arr, -1).tolist())
        return out

    def _check_lm_vocab(self, lm_vocab_size: int) -> int:
        if lm_vocab_size < self.vocab_size:
            raise InputError(
                f"an LM vocabulary of {lm_vocab_size} ids cannot hold the {self.vocab_size} FAST ids"
            )
        return int(lm_vocab_size)

    # ------------------------------------------------------------------ files
    def config(self) -> dict[str, Any]:
        """The contents of fast.json."""
        return {
            "format": "vlaforge-fast",
            "version": FORMAT_VERSION,
            "horizon": self.horizon,
            "action_dim": self.action_dim,
            "scale": self.scale,
            "min_value": self.min_value,
            "max_value": self.max_value,
            "char_base": CHAR_BASE,
            "vocab_size": self.vocab_size,
        }

    def save(self, directory: str | Path) -> Path:
        """Writes ``tokenizer.json`` and ``fast.json`` as the directory `directory`, atomically (a new or
        empty directory, or an earlier tokenizer's, which is replaced); returns it."""
        directory = Path(directory)
        if _non_empty(directory) and not (directory / CONFIG_FILE).is_file():
            raise InputError(
                f"{directory} holds other files and no {CONFIG_FILE}; the tokenizer replaces its directory "
                "whole: choose a new or empty directory"
            )
        with atomic_dir(directory, overwrite=True) as tmp:  # both files appear together, or neither
            self.bpe.save(str(tmp / BPE_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> FASTTokenizer:
        """Reads a directory written by `save`.

        Raises:
            InputError: naming the file that is missing, not JSON, or of another format version.
        """
        directory = Path(directory)
        cfg_path, bpe_path = directory / CONFIG_FILE, directory / BPE_FILE
        for path in (cfg_path, bpe_path):
            if not path.is_file():
                raise InputError(
                    f"{path} is missing: a FAST tokenizer directory holds {CONFIG_FILE} and {BPE_FILE}; "
                    "make one with `vlaforge tokenizer train --dataset DIR --out DIR`"
                )
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{cfg_path}: not valid JSON ({e})") from e
        if not isinstance(cfg, dict) or cfg.get("format") != "vlaforge-fast":
            raise InputError(f"{cfg_path}: not a vlaforge FAST tokenizer config (no format 'vlaforge-fast')")
        if cfg.get("version") != FORMAT_VERSION:
            raise InputError(
                f"{cfg_path}: format version {cfg.get('version')!r}; this vlaforge reads version "
                f"{FORMAT_VERSION}: retrain the tokenizer"
            )
        keys = ("horizon", "action_dim", "scale", "min_value", "max_value", "char_base", "vocab_size")
        missing = [k for k in keys if k not in cfg]
        if missing:
            raise InputError(f"{cfg_path}: missing keys {missing}")
        if cfg["char_base"] != CHAR_BASE:
            raise InputError(f"{cfg_path}: char_base {cfg['char_base']}, expected {CHAR_BASE}")
        try:
            bpe = Tokenizer.from_file(str(bpe_path))
        except Exception as e:  # tokenizers raises its own Exception type for a malformed file
            raise InputError(f"{bpe_path}: not a `tokenizers` tokenizer.json ({e})") from e
        tok = cls(bpe, cfg["horizon"], cfg["action_dim"], cfg["scale"], cfg["min_value"], cfg["max_value"])
        if tok.vocab_size != cfg["vocab_size"]:
            raise InputError(
                f"{bpe_path} has {tok.vocab_size} tokens; {cfg_path} says {cfg['vocab_size']}: the two files "
                "come from different tokenizers"
            )
        return tok

    # ------------------------------------------------------------------ helpers
    def _chars_to_values(self, token: str) -> np.ndarray:
        """A BPE token's characters -> coefficient values minus min_value, int64 (len(token),)."""
        return np.frombuffer(token.encode("utf-32-le"), dtype="<u4").astype(np.int64) - CHAR_BASE

    def __repr__(self) -> str:
        return (
            f"FASTTokenizer(vocab_size={self.vocab_size}, H={self.horizon}, D={self.action_dim}, "
            f"scale={self.scale:g}, values {self.min_value}..{self.max_value})"
        )


def _non_empty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _to_strings(offsets: np.ndarray) -> list[str]:
    """Non-negative integers (B, H, D) -> B strings of H * D characters, low frequencies first."""
    b = offsets.shape[0]
    codes = (offsets.reshape(b, -1) + CHAR_BASE).astype("<u4")  # (B, H * D): q[0, :], q[1, :], ...
    return [row.tobytes().decode("utf-32-le") for row in codes]


# ---------------------------------------------------------------------- dataset command


class DatasetChunks(NamedTuple):
    """A dataset's actions as normalised chunks (`load_chunks`)."""

    chunks: np.ndarray  # (N, H, D) float32 in [-1, 1], one chunk per frame
    episode: np.ndarray  # (N,) int64 episode of each chunk's first frame
    normalizer: Normalizer  # robot units <-> normalised, as a policy trained on the dataset has it
    outside: float  # fraction of normalised values outside [-1, 1] (unnormalised dims), clipped


def dataset_chunks(actions: np.ndarray, episodes: Sequence[range], chunk_size: int) -> np.ndarray:
    """Every frame's chunk of the next `chunk_size` actions (N, H, D), as `ChunkSampler` builds them.

    Stride 1 within each episode; past the episode's end the last action is repeated.
    """
    actions = np.asarray(actions)
    end = np.empty(len(actions), dtype=np.int64)  # (N,) exclusive end of each frame's episode
    for r in episodes:
        end[r.start : r.stop] = r.stop
    steps = np.arange(len(actions))[:, None] + np.arange(chunk_size)[None, :]  # (N, H)
    steps = np.minimum(steps, end[:, None] - 1)
    return actions[steps]


def load_chunks(dataset: str | Path, chunk_size: int) -> DatasetChunks:
    """Opens `dataset` and cuts its normalised actions into one chunk per frame.

    Actions are normalised as `Policy` does (q99 with the embodiment's normalize mask and the dataset's
    statistics); chunks follow the training sampler (stride 1, the last action repeated past an
    episode's end). Values outside [-1, 1] (dims left unnormalised) are clipped, and their share reported.
    """
    from vlaforge.data.dataset import open_dataset

    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    ds = open_dataset(dataset)
    mask = np.asarray(ds.embodiment().normalize_mask, dtype=bool)
    norm = Normalizer(ds.norm_stats()["action"], mode="q99", mask=mask)
    normed = norm.normalize(np.asarray(ds.actions(), dtype=np.float32))  # (N, D)
    episodes = [ds.episode_frames(e) for e in range(ds.num_episodes)]
    episode = np.empty(len(normed), dtype=np.int64)
    for e, r in enumerate(episodes):
        episode[r.start : r.stop] = e
    chunks = dataset_chunks(normed, episodes, chunk_size)  # (N, H, D)
    outside = float(np.mean(np.abs(normed) > 1.0))
    return DatasetChunks(np.clip(chunks, -1.0, 1.0), episode, norm, outside)


def evaluate(tok: FASTTokenizer, chunks: np.ndarray, normalizer: Normalizer | None = None) -> dict[str, Any]:
    """Tokens per chunk and round-trip error of `tok` on normalised chunks (N, H, D).

    The robot-unit errors (with `normalizer`) compare the un-normalised chunks before and after
    tokenization, so they are the tokenizer's error alone, not the q01/q99 clipping of normalisation.
    """
    chunks = np.clip(_check_chunks(chunks, "chunks"), -1.0, 1.0)
    n, h, d = chunks.shape
    ids = tok.encode(chunks)
    lengths = np.array([len(s) for s in ids])
    decoded = tok.decode(ids, h, d)  # (N, H, D)
    err = np.abs(decoded - chunks)
    out = {
        "chunks": int(n),
        "naive_tokens_per_chunk": int(h * d),
        "fast_tokens_mean": float(lengths.mean()),
        "fast_tokens_p50": float(np.percentile(lengths, 50)),
        "fast_tokens_p95": float(np.percentile(lengths, 95)),
        "fast_tokens_max": int(lengths.max()),
        "compression": float(h * d / lengths.mean()),
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "clipped_coefficients": tok.last_encode_clipped,
    }
    if normalizer is not None:
        err_robot = np.abs(normalizer.unnormalize(decoded) - normalizer.unnormalize(chunks))
        out["max_abs_error_robot"] = float(err_robot.max())
        out["mean_abs_error_robot"] = float(err_robot.mean())
        out["max_abs_error_robot_per_dim"] = [float(v) for v in err_robot.max(axis=(0, 1))]
    return out


def train_tokenizer_command(
    dataset: str,
    out: str,
    chunk_size: int = 10,
    vocab_size: int = 1024,
    scale: float = 10.0,
    max_chunks: int | None = None,
) -> dict[str, Any]:
    """Trains a FAST tokenizer on a dataset's actions and saves it (``vlaforge tokenizer train``).

    The actions are normalised as a policy normalises them and cut into one chunk per frame, as the
    training sampler does (`load_chunks`).

    Args:
        dataset: a dataset `vlaforge.data.dataset.open_dataset` reads.
        out: directory to save the tokenizer in (``fast.json``, ``tokenizer.json``).
        chunk_size: H, steps per chunk.
        vocab_size: largest BPE vocabulary (paper: 1024).
        scale: DCT coefficient scale (paper: 10).
        max_chunks: train on at most this many chunks, drawn at random (seed 0); None uses all.

    Returns:
        A report (JSON-able): chunks, H, D, vocab size, FAST tokens per chunk (mean, p50, p95, max)
        against the H * D of naive bins, and the round-trip error (max and mean abs) in normalised and
        in robot units, all measured on the training chunks (`evaluate`).
    """
    if max_chunks is not None and max_chunks < 1:
        raise InputError(f"max_chunks must be >= 1 (or None for all), got {max_chunks}")
    t0 = time.perf_counter()
    data = load_chunks(dataset, chunk_size)
    chunks = data.chunks
    if max_chunks is not None and len(chunks) > max_chunks:
        chunks = chunks[np.sort(np.random.default_rng(0).choice(len(chunks), max_chunks, replace=False))]
    tok = FASTTokenizer.train(chunks, vocab_size=vocab_size, scale=scale)
    train_s = time.perf_counter() - t0
    tok.save(out)
    return {
        "dataset": str(dataset),
        "out": str(out),
        "chunk_size": int(chunk_size),
        "action_dim": int(chunks.shape[2]),
        "scale": float(scale),
        "vocab_size": tok.vocab_size,
        "vocab_size_requested": int(vocab_size),
        **evaluate(tok, chunks, data.normalizer),
        "fraction_outside_unit_range": data.outside,
        "train_seconds": round(train_s, 2),
    }
