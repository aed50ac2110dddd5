"""The token head with FAST tokens (pi0-FAST; Pertsch et al., 2025): a chunk as a few BPE tokens, then `</s>`.

`TokenHead` spends H x D tokens per chunk, one 256-bin token per dim and step. `FastTokenHead` encodes the
normalised chunk with a FAST tokenizer trained on the dataset (`vlaforge.actions.fast`: DCT over time,
scale and round, byte-pair encoding) and trains the LM to emit those ids followed by `</s>`: a variable
number of tokens, far fewer than H x D on smooth chunks. Decoding is greedy with the KV cache until every
sample has emitted `</s>` (at most H x D tokens: a BPE token covers at least one coefficient), then the
ids go back through the tokenizer; a sequence of the wrong length is padded or cut as FAST's decoder does.

The FAST ids take the action-token range of the vocabulary (its last `n_bins` ids, where the bins of the
plain token head live), reversed like OpenVLA's bins: FAST id i is `action_vocab_size - 1 - i`. So the
tokenizer's vocabulary must fit in `n_bins` (256 for every preset; `vlaforge tokenizer train --vocab-size
256`). The tokenizer travels inside the checkpoint's config.json (`tokenizer_json`), so a saved policy
needs nothing else.

The sampler pads a chunk that runs past its episode's end by repeating the last action; FAST encodes
whole chunks, so those steps are part of the target (the `pad` mask is not used).
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from vlaforge.actions.fast import FASTTokenizer
from vlaforge.errors import InputError
from vlaforge.models.backbone import PrismaticBackbone
from vlaforge.models.heads import IGNORE_INDEX, ActionHead, Context, HeadDims, HeadOption, HeadSpec


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


class FastTokenHead(ActionHead):
    """Autoregressive FAST tokens (variable length, ending in `</s>`) with a KV cache.

    Args:
        dims: D, H (must equal the tokenizer's), the bin tokenizer (its id range holds the FAST ids) and
            `</s>`.
        tokenizer: a directory written by `vlaforge tokenizer train` (fast.json + tokenizer.json).
        tokenizer_json: the same tokenizer inline (what a saved checkpoint holds); wins over `tokenizer`.
    """

    uses_lm_head = True

    def __init__(self, dims: HeadDims, tokenizer: str = "", tokenizer_json: str = ""):
        super().__init__(dims.action_dim, dims.chunk_size)
        if tokenizer_json:
            tok = tokenizer_from_json(tokenizer_json)
        elif tokenizer:
            tok = FASTTokenizer.load(tokenizer)
        else:
            raise InputError(
                "the fast head needs a FAST tokenizer: train one with `vlaforge tokenizer train --dataset DIR "
                "--out TOK --chunk-size H --vocab-size 256` and pass --head-options tokenizer=TOK"
            )
        if (tok.horizon, tok.action_dim) != (dims.chunk_size, dims.action_dim):
            raise InputError(
                f"the FAST tokenizer was trained on chunks of {tok.horizon} x {tok.action_dim}; this policy "
                f"predicts {dims.chunk_size} x {dims.action_dim}: pass --chunk-size {tok.horizon} (and a dataset "
                f"with {tok.action_dim} action dims)"
            )
        if tok.vocab_size > dims.bins.n_bins:
            raise InputError(
                f"the FAST vocabulary has {tok.vocab_size} ids; the action-token range holds {dims.bins.n_bins}: "
                f"retrain with --vocab-size {dims.bins.n_bins}"
            )
        self.fast = tok
        self.action_vocab = dims.bins.vocab_size
        self.eos_id = dims.eos_id
        self.tokenizer = ""  # the path is not kept: the inline copy is what the checkpoint holds
        self.tokenizer_json = json.dumps({"fast": tok.config(), "bpe": tok.bpe.to_str()})

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
        chunk = self.fast.decode(fast, self.chunk_size, self.action_dim)  # (B, H, D), padded / cut if needed
        return torch.from_numpy(chunk).to(backbone.device)


FastTokenHead.spec = HeadSpec(
    "fast",
    FastTokenHead,
    "pi0-FAST: the chunk as DCT + BPE tokens (variable length, then </s>), greedy decoding with a KV cache",
    default_chunk=None,
    options=(
        HeadOption("tokenizer", str, "", "a FAST tokenizer directory (`vlaforge tokenizer train`)"),
        HeadOption("tokenizer_json", str, "", "the tokenizer inline (written into saved checkpoints)"),
    ),
)
