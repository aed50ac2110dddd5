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
    policy = Policy.from_preset("tiny", "tokens", embodiment, norm_stats, chunk_size=2).eval()
    ctx = _ctx(policy, h.batch(B=3, H=2))
    with torch.inference_mode():
        fast = policy.head.decode_ids(policy.backbone, ctx)
        slow = policy.head.decode_ids_reference(policy.backbone, ctx)
    assert fast.shape == (3, 8)
    assert torch.equal(fast, slow)


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
