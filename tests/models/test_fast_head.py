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
    before = policy.predict_action_batch(batch)
    policy.save_pretrained(tmp_path / "p")
    shutil.rmtree(copy)  # the saved policy needs nothing but its own directory
    again = Policy.from_pretrained(tmp_path / "p")
    np.testing.assert_array_equal(again.predict_action_batch(batch), before)
    assert again.head.fast.encode(smooth_chunks(2)) == policy.head.fast.encode(smooth_chunks(2))


def test_bad_tokenizers_are_refused_clearly(h, tokenizer_dir, tmp_path):
    with pytest.raises(InputError, match="vlaforge tokenizer train"):
        Policy.from_preset("tiny", "fast", h.embodiment(), h.stats(), chunk_size=H)
    with pytest.raises(InputError, match="--chunk-size 8"):
        Policy.from_preset(
            "tiny", "fast", h.embodiment(), h.stats(), chunk_size=4, tokenizer=str(tokenizer_dir)
        )
    big = FASTTokenizer.train(np.random.default_rng(0).uniform(-1, 1, (400, H, D)), vocab_size=400)
    assert big.vocab_size > 256
    with pytest.raises(InputError, match="retrain with --vocab-size 256"):
        Policy.from_preset(
            "tiny", "fast", h.embodiment(), h.stats(), chunk_size=H, tokenizer=str(big.save(tmp_path / "big"))
        )
