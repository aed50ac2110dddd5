"""Action heads: how a Prismatic backbone turns its hidden states into a normalised action chunk (B, H, D).

One interface (`ActionHead`), swappable:

- `TokenHead` (RT-2, Brohan et al., 2023; OpenVLA, Kim et al., 2024): every normalised action dim is one of
  256 bin tokens on the last ids of the LM vocabulary (`vlaforge.actions.BinTokenizer`). Training is
  teacher-forced next-token prediction on `H*D` action tokens followed by `</s>`, with the loss only on those
  positions. Inference is greedy decoding with the KV cache: one prefill, then one token per step. Unlike
  OpenVLA (which asserts batch size 1) decoding is batched through left padding, an explicit mask and
  position ids that count valid tokens. Decoding is a plain argmax over the whole vocab as in OpenVLA; an
  id outside the action range is mapped to the nearest bin by the tokenizer's clipping rule.
- `ChunkHead` (OpenVLA-OFT parallel decoding with L1 regression, Kim et al., 2025): `H*D` learned placeholder
  embeddings follow the prompt and attend to each other bidirectionally; one forward pass, then each
  placeholder's final hidden state goes through a small MLP to one continuous value. L1 loss against the
  normalised chunk, ignoring the steps padded past an episode's end.

A head is called with the backbone and a `Context` (images, state, prompt ids) because each head appends its
own suffix to the sequence before the LLM runs. At inference a head encodes the prefix once
(`backbone.encode_prefix`) and runs only its suffix on the cached keys and values (`backbone.run_suffix`);
training runs the whole sequence in one pass, which is also the reference the tests compare against.

Every head is declared once, in `HEADS` (`vlaforge.head_specs`, torch-free): name, default chunk and options
with their docs. The CLI's choices, config validation, `Policy` construction and checkpoint loading all read
that table (`vlaforge.models.registry` pairs each name with its class). `predict` takes sampling options (a
`torch.Generator`, a number of steps) so that stochastic heads are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlaforge.actions import BinTokenizer
from vlaforge.errors import InputError
from vlaforge.head_specs import HEADS, HeadOption, HeadSpec
from vlaforge.models.backbone import PrismaticBackbone
from vlaforge.models.presets import LLMSpec

IGNORE_INDEX = -100


@dataclass
class Context:
    """What every head conditions on.

    Attributes:
        images: one uint8 (B, h, w, 3) tensor per camera, in embodiment order.
        state: normalised state (B, S) or None.
        prompt_ids: B lists of prompt ids (no BOS).
    """

    images: list[torch.Tensor]
    state: torch.Tensor | None
    prompt_ids: list[list[int]]

    @property
    def batch_size(self) -> int:
        return len(self.prompt_ids)


@dataclass(frozen=True)
class HeadDims:
    """What every head is built from, besides its own options.

    Attributes:
        action_dim: D.
        chunk_size: H.
        hidden_size: the LLM width.
        bins: the action bin tokenizer (the token head's vocabulary).
        eos_id: the text tokenizer's `</s>`.
        llm: the LLM's sizes (depth, heads, KV heads), for heads whose layers attend to its keys and values
            (the flow head's action expert); None when unknown.
        reserved_ids: ids below this belong to the text tokenizer (`vlaforge.models.text.reserved_ids`):
            heads that place their own tokens in the vocabulary keep above it.
    """

    action_dim: int
    chunk_size: int
    hidden_size: int
    bins: BinTokenizer
    eos_id: int
    llm: LLMSpec | None = None
    reserved_ids: int = 3


class ActionHead(nn.Module):
    """Base class: `loss` for training, `predict` for inference (normalised chunks).

    Subclasses declare `spec: HeadSpec` and take `(dims: HeadDims, **options)`.
    """

    spec: HeadSpec
    uses_lm_head = False  # True when the loss goes through the LLM's output layer (token heads)

    def __init__(self, action_dim: int, chunk_size: int):
        super().__init__()
        if chunk_size < 1 or action_dim < 1:
            raise InputError(f"need chunk_size >= 1 and action_dim >= 1, got {chunk_size}, {action_dim}")
        self.action_dim = action_dim
        self.chunk_size = chunk_size

    @property
    def execute_steps(self) -> int:
        """The natural number of steps to run open-loop from one prediction."""
        return self.chunk_size

    def loss(
        self, backbone: PrismaticBackbone, ctx: Context, actions: torch.Tensor, pad: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss and metrics (detached scalar tensors, left on the device: the training loop reads
        them back to the host only at log steps).

        Args:
            backbone: the Prismatic backbone.
            ctx: images, state, prompt ids.
            actions: normalised target chunk (B, H, D).
            pad: bool (B, H), True on steps past the episode's end (they do not count).
        """
        raise NotImplementedError

    def predict(
        self,
        backbone: PrismaticBackbone,
        ctx: Context,
        *,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Normalised action chunk (B, H, D).

        Args:
            backbone: the Prismatic backbone.
            ctx: images, state, prompt ids.
            generator: the random stream of a stochastic head (flow matching, diffusion), for
                reproducible samples: one generator, or one per sample (`standard_normal`);
                deterministic heads ignore it.
            num_steps: integration / denoising steps of an iterative head (None: its default);
                deterministic heads ignore it.
        """
        raise NotImplementedError

    def unused_backbone_modules(self, backbone: PrismaticBackbone) -> list[nn.Module]:
        """Backbone modules whose outputs never reach this head's loss or predictions, besides the vision
        tail and (for heads that do not decode tokens) the LLM output layer, which `Policy` declares itself."""
        return []

    def untrained_parameters(self) -> list[nn.Parameter]:
        """The head's own parameters imitation's loss never reaches (reinforcement learning trains them);
        training keeps them frozen."""
        return []

    @property
    def kind(self) -> str:
        """The head's registered name (what config.json stores)."""
        return self.spec.name

    def options(self) -> dict[str, Any]:
        """The head's own options, as the registry declares them (saved in config.json)."""
        return {o.name: getattr(self, o.name) for o in self.spec.options}

    def config(self) -> dict:
        return {
            "kind": self.kind,
            "chunk_size": self.chunk_size,
            "action_dim": self.action_dim,
            **self.options(),
        }


class TokenHead(ActionHead):
    """RT-2 / OpenVLA discrete action tokens, autoregressive with a KV cache.

    Args:
        dims: D, H (OpenVLA: H = 1; H*D tokens are decoded), the bin tokenizer (its ids must fit the LLM
            vocab) and `</s>`.
    """

    uses_lm_head = True

    def __init__(self, dims: HeadDims):
        super().__init__(dims.action_dim, dims.chunk_size)
        self.bins = dims.bins
        self.eos_id = dims.eos_id

    @property
    def n_tokens(self) -> int:
        return self.chunk_size * self.action_dim

    def targets(self, actions: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (B, H, D) -> target ids (B, H*D + 1) (action tokens then `</s>`) and the loss mask."""
        B = actions.shape[0]
        ids = self.encode_t(actions.detach()).flatten(1)  # (B, H*D), on the actions' device
        eos = torch.full((B, 1), self.eos_id, dtype=torch.long, device=actions.device)
        keep = (~pad).repeat_interleave(self.action_dim, dim=1)  # (B, H*D)
        keep = torch.cat([keep, torch.ones(B, 1, dtype=torch.bool, device=actions.device)], dim=1)
        return torch.cat([ids, eos], dim=1), keep

    def encode_t(self, actions: torch.Tensor) -> torch.Tensor:
        """`BinTokenizer.encode` on the actions' device (no host round trip in the training step).

        `torch.bucketize(right=True)` puts x in bin i when edges[i-1] <= x < edges[i], numpy's `digitize`
        rule; float64 so the edges are exactly numpy's `linspace`.
        """
        edges = torch.as_tensor(self.bins.bins, dtype=torch.float64, device=actions.device)
        a = actions.double().clamp(self.bins.low, self.bins.high)
        return self.bins.vocab_size - torch.bucketize(a, edges, right=True)

    def decode_t(self, ids: torch.Tensor) -> torch.Tensor:
        """`BinTokenizer.decode` on the ids' device: bin centres, any id clipped into the action range."""
        centres = torch.as_tensor(self.bins.centres, dtype=torch.float32, device=ids.device)
        return centres[(self.bins.vocab_size - ids - 1).clamp(0, self.bins.n_bins - 2)]

    @staticmethod
    def sequence_labels(seq_len: int, targets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Full-sequence labels (B, T): the target ids on the last K positions where kept, -100 elsewhere.

        Label at position t is the token at t (HF convention: logits at t - 1 predict it).
        """
        B, K = targets.shape
        labels = torch.full((B, seq_len), IGNORE_INDEX, dtype=torch.long, device=targets.device)
        labels[:, -K:] = torch.where(keep, targets, torch.full_like(targets, IGNORE_INDEX))
        return labels

    def loss(self, backbone, ctx, actions, pad):
        targets, keep = self.targets(actions[:, : self.chunk_size], pad[:, : self.chunk_size])
        K = targets.shape[1]
        seq = backbone.assemble(ctx.images, ctx.state, ctx.prompt_ids, suffix=backbone.embed_tokens(targets))
        hidden, _ = backbone.run(seq)
        labels = self.sequence_labels(seq.embeds.shape[1], targets, keep)
        # Only the K positions that predict the suffix need logits (cheap even with a 32k vocab).
        logits = backbone.lm_head(hidden[:, -K - 1 : -1]).float()  # (B, K, V)
        lab = labels[:, -K:]  # (B, K)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=IGNORE_INDEX
        )
        with torch.no_grad():
            pred = logits[:, :-1].argmax(-1)  # (B, H*D) action positions only
            act_keep = keep[:, :-1]
            n = act_keep.sum().clamp(min=1)
            acc = ((pred == targets[:, :-1]) & act_keep).sum() / n
            decoded = self.decode_t(pred)
            target = actions[:, : self.chunk_size].flatten(1).float()
            l1 = ((decoded - target).abs() * act_keep).sum() / n
        return loss, {"token_acc": acc.detach(), "l1": l1.detach()}  # tensors: read at log steps

    @torch.no_grad()
    def decode(self, backbone: PrismaticBackbone, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding on the cached prefix: one prefill, then one token per step.

        Returns:
            ids (B, H*D) and the logits each was chosen from (B, H*D, V).
        """
        prefix = backbone.encode_prefix(ctx.images, ctx.state, ctx.prompt_ids)
        logits = [backbone.lm_head(prefix.last_hidden).float()]  # (B, V)
        ids = [logits[-1].argmax(-1)]
        for _ in range(self.n_tokens - 1):
            backbone.run_suffix(prefix, backbone.embed_tokens(ids[-1][:, None]), keep=True)
            logits.append(backbone.lm_head(prefix.last_hidden).float())
            ids.append(logits[-1].argmax(-1))
        return torch.stack(ids, dim=1), torch.stack(logits, dim=1)

    def decode_ids(self, backbone: PrismaticBackbone, ctx: Context) -> torch.Tensor:
        """Greedy ids (B, H*D) with the KV cache."""
        return self.decode(backbone, ctx)[0]

    @torch.no_grad()
    def decode_reference(
        self, backbone: PrismaticBackbone, ctx: Context
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Slow reference: re-runs the whole sequence for every token, no cache. Ids (B, H*D), logits (B, H*D, V)."""
        B = ctx.batch_size
        device = backbone.device
        ids = torch.zeros(B, 0, dtype=torch.long, device=device)
        logits = []
        for _ in range(self.n_tokens):
            suffix = backbone.embed_tokens(ids) if ids.shape[1] else None
            seq = backbone.assemble(ctx.images, ctx.state, ctx.prompt_ids, suffix=suffix)
            hidden, _ = backbone.run(seq)
            logits.append(backbone.lm_head(hidden[:, -1]).float())
            ids = torch.cat([ids, logits[-1].argmax(-1)[:, None]], dim=1)
        return ids, torch.stack(logits, dim=1)

    def ids_to_actions(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids (B, H*D) -> normalised actions (B, H, D); non-action ids clip to the nearest bin."""
        return self.decode_t(ids).view(ids.shape[0], self.chunk_size, self.action_dim)

    def predict(self, backbone, ctx, *, generator=None, num_steps=None):
        return self.ids_to_actions(self.decode_ids(backbone, ctx))

    def config(self) -> dict:
        return {**super().config(), "bins": self.bins.to_dict(), "eos_id": self.eos_id}


TokenHead.spec = HEADS["tokens"]


class ChunkHead(ActionHead):
    """OpenVLA-OFT parallel decoding: H*D placeholders, one pass, an MLP to continuous values, L1 loss.

    Args:
        dims: D, H and the LLM width.
        bidirectional: placeholders attend to each other both ways (OFT); False keeps plain causal attention.
    """

    def __init__(self, dims: HeadDims, bidirectional: bool = True):
        super().__init__(dims.action_dim, dims.chunk_size)
        self.bidirectional = bool(bidirectional)
        hidden_size, chunk_size, action_dim = dims.hidden_size, dims.chunk_size, dims.action_dim
        self.placeholders = nn.Parameter(torch.randn(chunk_size * action_dim, hidden_size) * 0.02)
        self.mlp = nn.Sequential(
            nn.LayerNorm(hidden_size),
            nn.Linear(hidden_size, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, 1),
        )

    def forward(self, backbone: PrismaticBackbone, ctx: Context) -> torch.Tensor:
        """Normalised chunk (B, H, D), differentiable: the whole sequence in one pass (training, reference)."""
        B, K = ctx.batch_size, self.placeholders.shape[0]
        suffix = self.placeholders[None].expand(B, -1, -1)  # (B, H*D, d)
        seq = backbone.assemble(
            ctx.images, ctx.state, ctx.prompt_ids, suffix=suffix, bidirectional_suffix=self.bidirectional
        )
        hidden, _ = backbone.run(seq)
        values = self.mlp(hidden[:, -K:].to(self.placeholders.dtype))  # (B, H*D, 1)
        return values.view(B, self.chunk_size, self.action_dim)

    def loss(self, backbone, ctx, actions, pad):
        pred = self(backbone, ctx).float()
        target = actions[:, : self.chunk_size].float()
        keep = (~pad[:, : self.chunk_size]).float()[..., None]  # (B, H, 1)
        n = (keep.sum() * self.action_dim).clamp(min=1)
        l1 = ((pred - target).abs() * keep).sum() / n
        return l1, {"l1": l1.detach()}

    @torch.no_grad()
    def predict(self, backbone, ctx, *, generator=None, num_steps=None):
        """One pass: the chunk head does not iterate, so caching the prefix would only add a second call
        (`backbone.encode_prefix` + `run_suffix` give the same values; tests/models check it)."""
        return self(backbone, ctx).float()


ChunkHead.spec = HEADS["chunk"]


def standard_normal(shape: tuple[int, ...], device: torch.device, generator: Any = None) -> torch.Tensor:
    """N(0, I) float32 of `shape` (B, ...) on `device`, from `generator`:

    - None: torch's global stream, on `device`;
    - one `torch.Generator`: drawn on the generator's device (a CPU generator gives the same sample on any
      device), then moved;
    - a sequence of B generators, one per sample: sample b is drawn from generator b alone, so a sample's
      noise does not depend on what else is in the batch (batched evaluation gives every episode its own
      stream, and each episode sees the noise it would see alone, where one generator gives
      `torch.randn((1, ...), generator=g)`, the same numbers).
    """
    if generator is None or isinstance(generator, torch.Generator):
        where = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=where).to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise InputError(f"{len(gens)} generators for a batch of {shape[0]} samples: give one per sample")
    return torch.stack([torch.randn(shape[1:], generator=g, device=g.device).to(device) for g in gens])


def check_bins_fit(bins: BinTokenizer, vocab_size: int) -> None:
    """The action ids must exist in the LLM's vocab."""
    if bins.last_id >= vocab_size:
        raise InputError(
            f"action ids {bins.first_id}..{bins.last_id} do not fit the LLM vocab of {vocab_size}"
        )


__all__ = [
    "ActionHead",
    "ChunkHead",
    "Context",
    "HeadDims",
    "HeadOption",
    "HeadSpec",
    "TokenHead",
    "check_bins_fit",
]
