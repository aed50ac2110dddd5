"""The token head with FAST tokens: targets, training, cached decoding against a no-cache reference,
and the tokenizer travelling inside the checkpoint."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from vlaforge.actions.fast import FASTTokenizer
from vlaforge.errors import InputError
from vlaforge.models.policy import Policy

H, D = 8, 4


def smooth_chunks(n: int, seed: int = 0) -> np.ndarray:
    """Normalised chunks whose steps move slowly (what FAST compresses), a binary gripper last."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(-0.8, 0.8, (n, 1, D))
    drift = rng.uniform(-0.05, 0.05, (n, 1, D))
    x = start + drift * np.arange(H)[None, :, None]
    x[..., -1] = np.sign(start[..., -1])
    return np.clip(x, -1, 1)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    tok = FASTTokenizer.train(smooth_chunks(400), vocab_size=200)
    return tok.save(tmp_path_factory.mktemp("fast") / "tok")


def make_policy(h, tokenizer_dir, **kw) -> Policy:
    return Policy.from_preset(
        "tiny", "fast", h.embodiment(), h.stats(), chunk_size=H, tokenizer=str(tokenizer_dir), **kw
    )


def fast_batch(h, seed: int = 0, B: int = 4) -> dict:
    batch = h.batch(B=B, H=H, seed=seed)
    batch["actions"] = torch.from_numpy(smooth_chunks(B, seed + 1)).float() * 0.8  # robot units (q99 = 0.8)
    return batch


def test_targets_are_fast_ids_in_the_action_range_then_eos(h, tokenizer_dir):
    policy = make_policy(h, tokenizer_dir)
    head, tok = policy.head, FASTTokenizer.load(tokenizer_dir)
    chunks = torch.from_numpy(smooth_chunks(3, 5)).float()
    ids, keep = head.targets(chunks)
    for b in range(3):
        row = ids[b][keep[b]].tolist()
        assert row[-1] == policy.text.eos_id
        assert row[:-1] == tok.to_lm_ids(tok.encode(chunks[b : b + 1].numpy()), policy.bins.vocab_size)[0]
        assert all(policy.bins.first_id <= i <= policy.bins.last_id for i in row[:-1])
    assert keep.sum(1).float().mean() < H * D / 3  # smooth chunks take far fewer than H x D tokens


def test_loss_falls_and_cached_decoding_equals_the_reference(h, tokenizer_dir):
    policy = make_policy(h, tokenizer_dir)
    batch = fast_batch(h)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(40):
        loss, metrics = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    policy.eval()
    ctx = policy._context(batch["images"], batch["state"], batch["instruction"])
    got = policy.head.decode_ids(policy.backbone, ctx)
    # Reference: no cache, the whole sequence re-run for every token.
    bb, eos = policy.backbone, policy.text.eos_id
    want = []
    with torch.no_grad():
        for b in range(ctx.batch_size):
            ids: list[int] = []
            sub = ctx.__class__(
                [img[b : b + 1] for img in ctx.images], ctx.state[b : b + 1], ctx.prompt_ids[b : b + 1]
            )
            while len(ids) < policy.head.max_tokens:
                suffix = bb.embed_tokens(torch.tensor([ids])) if ids else None
                seq = bb.assemble(sub.images, sub.state, sub.prompt_ids, suffix=suffix)
                nxt = int(bb.lm_head(bb.run(seq)[0][:, -1]).argmax(-1))
                if nxt == eos:
                    break
                ids.append(nxt)
            want.append(ids)
    assert got == want
    actions = policy.predict_action_batch(batch)
    assert actions.shape == (4, H, D) and np.isfinite(actions).all()


def test_the_tokenizer_travels_in_the_checkpoint(h, tokenizer_dir, tmp_path):
    copy = shutil.copytree(tokenizer_dir, tmp_path / "tok")
    policy = make_policy(h, copy)
    batch = fast_batch(h, seed=3)
    ctx = policy._context(batch["images"], batch["state"], batch["instruction"])
    before = policy.head.decode_ids(policy.backbone, ctx)  # an untrained head's ids need not decode
    policy.save_pretrained(tmp_path / "p")
    shutil.rmtree(copy)  # the saved policy needs nothing but its own directory
    again = Policy.from_pretrained(tmp_path / "p")
    assert again.head.decode_ids(again.backbone, ctx) == before
    assert again.head.fast.encode(smooth_chunks(2)) == policy.head.fast.encode(smooth_chunks(2))


def test_bad_tokenizers_are_refused_clearly(h, tokenizer_dir, tmp_path):
    with pytest.raises(InputError, match="vlaforge tokenizer train"):
        Policy.from_preset("tiny", "fast", h.embodiment(), h.stats(), chunk_size=H)
    with pytest.raises(InputError, match="--chunk-size 8"):
        Policy.from_preset(
            "tiny", "fast", h.embodiment(), h.stats(), chunk_size=4, tokenizer=str(tokenizer_dir)
        )
    # An LLM vocabulary that cannot grow (action ids below a padded vocab, as OpenVLA's) and has no room
    # above the text ids for the FAST ids is refused with the numbers.
    with pytest.raises(InputError, match="FAST vocabulary has 200 ids.*at most 141"):
        Policy.from_preset(
            "tiny",
            "fast",
            h.embodiment(),
            h.stats(),
            chunk_size=H,
            action_vocab_size=400,
            tokenizer=str(tokenizer_dir),
        )


def test_the_default_vocabulary_is_accepted(h, tmp_path):
    """`vlaforge tokenizer train` defaults to FAST's 1,024 tokens and the head takes them: the tiny
    preset's vocabulary grows to hold them above its text ids; the checkpoint keeps the grown size."""
    import inspect

    from vlaforge.actions.fast import train_tokenizer_command
    from vlaforge.cli import build_parser

    default = inspect.signature(FASTTokenizer.train).parameters["vocab_size"].default
    assert default == 1024
    assert inspect.signature(train_tokenizer_command).parameters["vocab_size"].default == default
    args = build_parser("tokenizer").parse_args(["tokenizer", "train", "--dataset", "d", "--out", "o"])
    assert args.vocab_size == default
    tok = FASTTokenizer.train(np.random.default_rng(0).uniform(-1, 1, (600, H, D)))
    assert tok.vocab_size > 256
    policy = Policy.from_preset(
        "tiny", "fast", h.embodiment(), h.stats(), chunk_size=H, tokenizer=str(tok.save(tmp_path / "tok"))
    )
    assert policy.preset.llm.vocab_size >= 259 + tok.vocab_size
    batch = fast_batch(h)
    ids, keep = policy.head.targets(torch.from_numpy(smooth_chunks(3)).float())
    fast_ids = ids[keep & (ids != policy.text.eos_id)]
    assert int(fast_ids.min()) >= 259  # never a byte or a special token
    loss, _ = policy.compute_loss(batch)
    assert torch.isfinite(loss)
    again = Policy.from_pretrained(policy.save_pretrained(tmp_path / "p"))
    assert again.preset.llm.vocab_size == policy.preset.llm.vocab_size
    ctx = policy._context(batch["images"], batch["state"], batch["instruction"])
    assert again.head.decode_ids(again.backbone, ctx) == policy.head.decode_ids(policy.backbone, ctx)


def test_undecodable_tokens_are_flagged_and_never_executed(h, tokenizer_dir, monkeypatch):
    """A predicted id sequence that does not decode to H x D coefficients is not zero-padded into a chunk:
    it is counted and warned about, and the head holds that row's last valid chunk (or raises in strict
    mode, or when it has none to hold)."""
    from vlaforge.models.fast_head import FastDecodeError

    policy = make_policy(h, tokenizer_dir)
    tok, head = policy.head.fast, policy.head
    good = tok.to_lm_ids(tok.encode(smooth_chunks(2, 7)), policy.bins.vocab_size)
    outputs = iter([good, [good[0], good[1][:2]], [good[0][:1], good[1]]])
    monkeypatch.setattr(head, "decode_ids", lambda backbone, ctx: next(outputs))
    batch = fast_batch(h, B=2)
    first = policy.predict_action_batch(batch)
    assert head.decode_failures == 0
    with pytest.warns(RuntimeWarning, match="1 of 2 predicted FAST token sequences do not decode"):
        second = policy.predict_action_batch(batch)
    assert head.decode_failures == 1
    np.testing.assert_array_equal(second, first)  # row 1 holds its last valid chunk; row 0 decoded again
    with pytest.warns(RuntimeWarning):
        third = policy.predict_action_batch(batch)
    np.testing.assert_array_equal(third, first)
    assert head.decode_failures == 2

    strict = make_policy(h, tokenizer_dir, on_invalid="raise")
    monkeypatch.setattr(strict.head, "decode_ids", lambda backbone, ctx: [good[0], good[1][:2]])
    with pytest.raises(FastDecodeError, match="sample 1"):
        strict.predict_action_batch(batch)
    fresh = make_policy(h, tokenizer_dir)  # nothing valid to hold yet
    monkeypatch.setattr(fresh.head, "decode_ids", lambda backbone, ctx: [good[0], good[1][:2]])
    with pytest.raises(FastDecodeError, match="no valid chunk to hold"):
        fresh.predict_action_batch(batch)
