"""Action heads: token-head labels, KV-cache decoding vs a no-cache reference, batched vs one-by-one decoding,
the chunk head's bidirectional placeholder mask."""

from __future__ import annotations

import torch

from vlaforge.models.backbone import build_mask
from vlaforge.models.policy import Policy


def _ctx(policy: Policy, batch: dict):
    return policy._context(batch["images"], batch["state"], batch["instruction"])


def test_token_labels_cover_only_action_tokens_and_eos(embodiment, norm_stats, h):
    policy = Policy.from_preset("tiny", "tokens", embodiment, norm_stats, chunk_size=2)
    batch = h.batch(B=3, H=2)
    pad = batch["action_pad"]  # sample 0: step 1 padded
    actions = torch.from_numpy(policy.action_norm.normalize(batch["actions"].numpy()))
    targets, keep = policy.head.targets(actions, pad)
    assert targets.shape == (3, 2 * 4 + 1)
    assert (targets[:, -1] == policy.text.eos_id).all()
    assert ((targets[:, :-1] >= policy.bins.first_id) & (targets[:, :-1] <= policy.bins.last_id)).all()
    ctx = _ctx(policy, batch)
    seq = policy.backbone.assemble(ctx.images, ctx.state, ctx.prompt_ids)
    T = seq.embeds.shape[1] + targets.shape[1]
    labels = policy.head.sequence_labels(T, targets, keep)
    counted = labels != -100
    # Everything before the suffix (pads, BOS, patches, state, prompt) is ignored.
    assert not counted[:, : T - targets.shape[1]].any()
    # Sample 0: the 4 tokens of its padded step do not count; eos always does.
    assert counted.sum(1).tolist() == [4 + 1, 8 + 1, 8 + 1]
    assert labels[0, -1] == policy.text.eos_id and labels[0, -5:-1].eq(-100).all()
    assert torch.equal(labels[1, -9:], targets[1])


def test_kv_cache_decoding_equals_no_cache_reference(embodiment, norm_stats, h):
    # Per-step logits, not argmax ids: an untrained model's argmax could agree by luck.
    policy = Policy.from_preset("tiny", "tokens", embodiment, norm_stats, chunk_size=2).eval()
    ctx = _ctx(policy, h.batch(B=3, H=2))
    with torch.inference_mode():
        fast_ids, fast_logits = policy.head.decode(policy.backbone, ctx)
        slow_ids, slow_logits = policy.head.decode_reference(policy.backbone, ctx)
    assert fast_logits.shape == (3, 8, policy.preset.llm.vocab_size)
    torch.testing.assert_close(fast_logits, slow_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(fast_ids, slow_ids)
    assert fast_logits.std() > 0.01  # logits that carry information, not a constant


def test_cached_prefix_suffix_equals_one_pass(embodiment, norm_stats, h):
    """`encode_prefix` + `run_suffix` gives the plain one-pass hidden states position by position, for a
    bidirectional and a causal suffix, and leaves the prefix cache as it found it."""
    policy = Policy.from_preset("tiny", "chunk", embodiment, norm_stats).eval()
    bb = policy.backbone
    ctx = _ctx(policy, h.batch(B=3))
    suffix = torch.randn(3, 5, bb.hidden_size)
    with torch.inference_mode():
        prefix = bb.encode_prefix(ctx.images, ctx.state, ctx.prompt_ids)
        T = prefix.length
        for bidirectional in (True, False, True):  # the third pass reuses the cropped cache
            seq = bb.assemble(
                ctx.images, ctx.state, ctx.prompt_ids, suffix=suffix, bidirectional_suffix=bidirectional
            )
            plain, _ = bb.run(seq)
            cached = bb.run_suffix(prefix, suffix, bidirectional=bidirectional)
            torch.testing.assert_close(cached, plain[:, -5:], atol=1e-5, rtol=1e-5)
            assert prefix.cache.get_seq_length() == T
        # The two attention patterns really differ (the test would not notice a mask that is ignored).
        causal = bb.run_suffix(prefix, suffix, bidirectional=False)
        both = bb.run_suffix(prefix, suffix, bidirectional=True)
        assert not torch.allclose(causal[:, 0], both[:, 0], atol=1e-4)


def test_chunk_head_cached_predict_equals_plain_forward(embodiment, norm_stats, h):
    policy = Policy.from_preset("tiny", "chunk", embodiment, norm_stats).eval()
    ctx = _ctx(policy, h.batch(B=3))
    head, bb = policy.head, policy.backbone
    with torch.inference_mode():
        plain = head.predict(bb, ctx)
        prefix = bb.encode_prefix(ctx.images, ctx.state, ctx.prompt_ids)
        hidden = bb.run_suffix(prefix, head.placeholders[None].expand(3, -1, -1), bidirectional=True)
        cached = head.mlp(hidden).view(3, head.chunk_size, head.action_dim)
    assert cached.shape == (3, 8, 4)
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)


def test_batched_decoding_equals_one_by_one(embodiment, norm_stats, h):
    policy = Policy.from_preset("tiny", "tokens", embodiment, norm_stats).eval()
    batch = h.batch(B=3, H=1)
    lengths = {len(policy.text.encode_prompt(s)) for s in batch["instruction"]}
    assert len(lengths) == 3  # different prompt lengths: left padding is exercised
    with torch.inference_mode():
        ctx = _ctx(policy, batch)
        together = policy.head.decode_ids(policy.backbone, ctx)
        # The prefill's last hidden state matches too, not only the argmax.
        seq = policy.backbone.assemble(ctx.images, ctx.state, ctx.prompt_ids)
        hid_b, _ = policy.backbone.run(seq)
        for i in range(3):
            one = {
                k: (v[i : i + 1] if k != "images" else {c: x[i : i + 1] for c, x in v.items()})
                for k, v in batch.items()
            }
            ctx1 = _ctx(policy, one)
            assert torch.equal(policy.head.decode_ids(policy.backbone, ctx1), together[i : i + 1])
            seq1 = policy.backbone.assemble(ctx1.images, ctx1.state, ctx1.prompt_ids)
            hid_1, _ = policy.backbone.run(seq1)
            torch.testing.assert_close(hid_1[0, -1], hid_b[i, -1], atol=1e-4, rtol=1e-4)


def test_mask_left_padding_and_bidirectional_block():
    valid = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    allowed = build_mask(valid, n_bidirectional=2, dtype=torch.float32)[:, 0] == 0  # (B, T, T)
    assert not allowed[0, 3, :2].any()  # no one attends to left padding...
    assert allowed[0, 0, 0] and allowed[0, 1, 1]  # ...but pad rows see themselves (no empty softmax)
    assert allowed[1, 4, 5] and allowed[1, 5, 4]  # the last two see each other
    assert not allowed[1, 3, 4]  # the prompt does not see the placeholders
    assert allowed[1, 5].all()


def test_chunk_head_is_bidirectional_over_placeholders(embodiment, norm_stats, h):
    # With bidirectional attention the first placeholder's output depends on later placeholders.
    policy = Policy.from_preset("tiny", "chunk", embodiment, norm_stats).eval()
    ctx = _ctx(policy, h.batch(B=1))
    with torch.no_grad():
        base = policy.head(policy.backbone, ctx)
        policy.head.placeholders.data[-1] += 1.0
        moved = policy.head(policy.backbone, ctx)
    assert base.shape == (1, 8, 4)
    assert not torch.allclose(base[0, 0, 0], moved[0, 0, 0])


def test_positions_ignore_left_padding(embodiment, norm_stats, h):
    policy = Policy.from_preset("tiny", "chunk", embodiment, norm_stats)
    ctx = _ctx(policy, h.batch(B=3))
    seq = policy.backbone.assemble(ctx.images, ctx.state, ctx.prompt_ids)
    n_valid = seq.valid.sum(1)
    assert (seq.position_ids[:, -1] == n_valid - 1).all()
    assert seq.valid[:, -1].all() and (~seq.valid).any()
