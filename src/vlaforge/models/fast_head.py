"""The token head with FAST tokens (pi0-FAST; Pertsch et al., 2025): a chunk as a few BPE tokens, then `</s>`.

The normalised chunk is encoded with a FAST tokenizer trained on the dataset (`vlaforge.actions.fast`) and
the LM learns to emit those ids, then `</s>`; decoding is greedy with the KV cache. Vocabulary placement,
what happens to a token sequence that does not decode, and other choices: docs/fast.md.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from vlaforge.actions.fast import FASTTokenizer
from vlaforge.errors import InputError
from vlaforge.head_specs import HEADS
from vlaforge.models.backbone import PrismaticBackbone
from vlaforge.models.heads import IGNORE_INDEX, ActionHead, Context, HeadDims
from vlaforge.models.text import reserved_ids

ON_INVALID = ("hold", "raise")


class FastDecodeError(RuntimeError):
    """Predicted FAST tokens that do not decode to a chunk, with no valid chunk to execute instead."""


class FastDecodeWarning(RuntimeWarning):
    """Predicted FAST tokens that did not decode; the row's last valid chunk was held."""


def tokenizer_from_json(text: str) -> FASTTokenizer:
    """A FAST tokenizer from the inline form `FastTokenHead.config` writes."""
    try:
        doc = json.loads(text)
        bpe = Tokenizer.from_str(doc["bpe"])
        cfg = doc["fast"]
        return FASTTokenizer(
            bpe, cfg["horizon"], cfg["action_dim"], cfg["scale"], cfg["min_value"], cfg["max_value"]
        )
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(
            f"the head's tokenizer_json is not a FAST tokenizer written by vlaforge ({e})"
        ) from e


def _load_tokenizer(tokenizer: str, tokenizer_json: str) -> FASTTokenizer | None:
    if tokenizer_json:
        return tokenizer_from_json(tokenizer_json)
    return FASTTokenizer.load(tokenizer) if tokenizer else None


def fit_preset(preset: Any, options: dict[str, Any]) -> Any:
    """The preset with room for the FAST ids above the text tokenizer's ids.

    A preset whose action ids end its vocabulary (the byte-tokenizer presets: `action_vocab_size ==
    llm.vocab_size`) grows both to `reserved + vocab`, so FAST's 1,024 tokens fit the 515-id tiny model; a
    padded vocabulary (OpenVLA's 32,064 rows, actions below 32,000) keeps its size, and the head checks it.
    """
    tok = _load_tokenizer(str(options.get("tokenizer") or ""), str(options.get("tokenizer_json") or ""))
    if tok is None:
        return preset  # the head says what to pass
    need = reserved_ids(preset.tokenizer) + tok.vocab_size
    if preset.action_vocab_size >= need or preset.action_vocab_size != preset.llm.vocab_size:
        return preset
    return preset.with_overrides(action_vocab_size=need, llm=replace(preset.llm, vocab_size=need))


class FastTokenHead(ActionHead):
    """Autoregressive FAST tokens (variable length, ending in `</s>`) with a KV cache.

    Args:
        dims: D, H (must equal the tokenizer's), the action vocabulary (FAST id i is LM id
            `action_vocab_size - 1 - i`, above `dims.reserved_ids`) and `</s>`.
        tokenizer: a directory written by `vlaforge tokenizer train` (fast.json + tokenizer.json).
        tokenizer_json: the same tokenizer inline (what a saved checkpoint holds); wins over `tokenizer`.
        on_invalid: what a predicted sequence that does not decode to H x D coefficients becomes: "hold"
            (that batch row's last valid chunk, with a `FastDecodeWarning`; `FastDecodeError` when there is
            none yet) or "raise" (`FastDecodeError`). Never a zero-padded chunk. Either way
            `decode_failures` counts them.
    """

    uses_lm_head = True

    def __init__(
        self, dims: HeadDims, tokenizer: str = "", tokenizer_json: str = "", on_invalid: str = "hold"
    ):
        super().__init__(dims.action_dim, dims.chunk_size)
        tok = _load_tokenizer(tokenizer, tokenizer_json)
        if tok is None:
            raise InputError(
                "the fast head needs a FAST tokenizer: train one with `vlaforge tokenizer train --dataset DIR "
                "--out TOK --chunk-size H` and pass --head-options tokenizer=TOK"
            )
        if (tok.horizon, tok.action_dim) != (dims.chunk_size, dims.action_dim):
            raise InputError(
                f"the FAST tokenizer was trained on chunks of {tok.horizon} x {tok.action_dim}; this policy "
                f"predicts {dims.chunk_size} x {dims.action_dim}: pass --chunk-size {tok.horizon} (and a dataset "
                f"with {tok.action_dim} action dims)"
            )
        room = dims.bins.vocab_size - dims.reserved_ids
        if tok.vocab_size > room:
            raise InputError(
                f"the FAST vocabulary has {tok.vocab_size} ids; this LLM vocabulary has room for at most {room} "
                f"above its text ids (ids {dims.reserved_ids}..{dims.bins.vocab_size - 1}): retrain with "
                f"--vocab-size {max(room, 0)}, or use a preset whose action ids end its vocabulary (it grows)"
            )
        if on_invalid not in ON_INVALID:
            raise InputError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
        self.fast = tok
        self.action_vocab = dims.bins.vocab_size
        self.eos_id = dims.eos_id
        self.on_invalid = on_invalid
        self.tokenizer = ""  # the path is not kept: the inline copy is what the checkpoint holds
        self.tokenizer_json = json.dumps({"fast": tok.config(), "bpe": tok.bpe.to_str()})
        self.decode_failures = 0  # predicted sequences that did not decode, since the head was built
        self._last_valid: np.ndarray | None = None  # (B, H, D) the last chunk predicted per batch row

    @property
    def max_tokens(self) -> int:
        """FAST tokens a chunk can take at most (each BPE token covers >= 1 coefficient), plus `</s>`."""
        return self.chunk_size * self.action_dim + 1

    def targets(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (B, H, D) -> LM ids (B, K) (FAST ids, `</s>`, then filler) and the mask of real ones."""
        fast = self.fast.encode(actions.detach().float().cpu().numpy())
        seqs = [ids + [self.eos_id] for ids in self.fast.to_lm_ids(fast, self.action_vocab)]
        K = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), K), self.eos_id, dtype=torch.long)
        keep = torch.zeros(len(seqs), K, dtype=torch.bool)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.as_tensor(s)
            keep[b, : len(s)] = True
        return ids.to(actions.device), keep.to(actions.device)

    def loss(self, backbone, ctx, actions, pad):
        # The sampler repeats an episode's last action past its end; FAST encodes whole chunks, so those
        # steps are part of the target (`pad` is not used).
        targets, keep = self.targets(actions[:, : self.chunk_size])
        K = targets.shape[1]
        seq = backbone.assemble(ctx.images, ctx.state, ctx.prompt_ids, suffix=backbone.embed_tokens(targets))
        hidden, _ = backbone.run(seq)
        logits = backbone.lm_head(hidden[:, -K - 1 : -1]).float()  # position t - 1 predicts token t
        labels = torch.where(keep, targets, torch.full_like(targets, IGNORE_INDEX))
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
        )
        with torch.no_grad():
            n = keep.sum().clamp(min=1)
            acc = ((logits.argmax(-1) == targets) & keep).sum() / n
        return loss, {"token_acc": acc.detach(), "fast_tokens": (keep.sum() / keep.shape[0]).float().detach()}

    @torch.no_grad()
    def decode_ids(self, backbone: PrismaticBackbone, ctx: Context) -> list[list[int]]:
        """Greedy LM ids per sample, up to and without `</s>` (one prefill, then one token per step)."""
        prefix = backbone.encode_prefix(ctx.images, ctx.state, ctx.prompt_ids)
        B = ctx.batch_size
        done = torch.zeros(B, dtype=torch.bool, device=prefix.last_hidden.device)
        ids = [backbone.lm_head(prefix.last_hidden).float().argmax(-1)]
        for _ in range(self.max_tokens - 1):
            done |= ids[-1] == self.eos_id
            if bool(done.all()):
                break
            backbone.run_suffix(prefix, backbone.embed_tokens(ids[-1][:, None]), keep=True)
            ids.append(backbone.lm_head(prefix.last_hidden).float().argmax(-1))
        out = torch.stack(ids, dim=1).cpu().tolist()
        return [row[: row.index(self.eos_id)] if self.eos_id in row else row for row in out]

    def predict(self, backbone, ctx, *, generator=None, num_steps=None):
        fast = self.fast.from_lm_ids(self.decode_ids(backbone, ctx), self.action_vocab)
        chunk, valid = self.fast.decode(fast, self.chunk_size, self.action_dim, return_valid=True)
        if not valid.all():
            chunk = self._replace_invalid(chunk, valid)
        self._last_valid = chunk.copy()
        return torch.from_numpy(chunk).to(backbone.device)  # (B, H, D)

    def _replace_invalid(self, chunk: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The rows of `chunk` that did not decode, replaced per `on_invalid` (or a FastDecodeError)."""
        bad = np.flatnonzero(~valid)
        self.decode_failures += len(bad)
        what = (
            f"{len(bad)} of {len(valid)} predicted FAST token sequences do not decode to a {self.chunk_size} x "
            f"{self.action_dim} chunk (sample {', '.join(map(str, bad))}: a wrong number of coefficients or "
            f"ids outside the FAST vocabulary; {self.decode_failures} so far)"
        )
        held = self._last_valid
        if self.on_invalid == "raise":
            raise FastDecodeError(f"{what}; on_invalid='raise' executes none")
        if held is None or held.shape != chunk.shape:
            raise FastDecodeError(f"{what}; there is no valid chunk to hold for this batch yet")
        warnings.warn(f"{what}; holding each row's last valid chunk", FastDecodeWarning, stacklevel=3)
        out = chunk.copy()
        out[bad] = held[bad]
        return out


FastTokenHead.spec = HEADS["fast"]
