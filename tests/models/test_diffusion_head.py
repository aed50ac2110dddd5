"""The diffusion head: the schedule and DDIM against formulas written here, adaLN-Zero identity at init, the
cached prefix vs the per-step reference, reproducible sampling, learning on a fixed batch, save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlaforge.errors import InputError
from vlaforge.models.diffusion import DiffusionHead, ddim_timesteps, squaredcos_alphas_cumprod
from vlaforge.models.policy import Policy


def _ctx(policy: Policy, batch: dict):
    return policy._context(batch["images"], batch["state"], batch["instruction"])


def _policy(embodiment, norm_stats, randomise: bool = True, **options) -> Policy:
    """A tiny diffusion policy; `randomise` moves the zero-initialised adaLN / output weights away from zero,
    so the DiT's output depends on its inputs (at init it is exactly zero)."""
    policy = Policy.from_preset("tiny", "diffusion", embodiment, norm_stats, **options).eval()
    if randomise:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in policy.head.parameters():
                if not p.any():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return policy


def _alphas_cumprod_by_formula(T: int) -> np.ndarray:
    """squaredcos_cap_v2 (Nichol & Dhariwal, 2021), as Diffusion Policy's DDPMScheduler defines it."""

    def f(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    return np.cumprod(1 - betas)


def test_schedule_noising_and_ddim_match_the_formulas(embodiment, norm_stats):
    head = _policy(embodiment, norm_stats, randomise=False).head
    assert isinstance(head, DiffusionHead) and head.train_steps == 100
    ac = _alphas_cumprod_by_formula(100)
    np.testing.assert_allclose(head.alphas_cumprod.numpy(), ac, rtol=0, atol=1e-7)
    np.testing.assert_allclose(squaredcos_alphas_cumprod(100).numpy(), ac, rtol=0, atol=1e-12)
    assert head.alphas_cumprod.dtype == torch.float32 and 0.999 < ac[0] < 1 and ac[-1] < 1e-4

    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(3, 8, 4, generator=g) * 2 - 1, torch.randn(3, 8, 4, generator=g)
    t = torch.tensor([0, 41, 99])
    a = torch.tensor(ac, dtype=torch.float32)[t].view(3, 1, 1)
    torch.testing.assert_close(head.add_noise(x0, noise, t), a.sqrt() * x0 + (1 - a).sqrt() * noise)

    # One DDIM step (eta = 0), x0 estimate clipped to [-1, 1], 49 -> 39 and the last one to a = 1.
    eps = torch.randn(3, 8, 4, generator=g)
    x_t = torch.randn(3, 8, 4, generator=g) * 2
    for t_, tp in ((49, 39), (9, -1)):
        a_t, a_p = float(ac[t_]), float(ac[tp]) if tp >= 0 else 1.0
        x0_hat = ((x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
        want = math.sqrt(a_p) * x0_hat + math.sqrt(1 - a_p) * eps
        torch.testing.assert_close(head.ddim_step(x_t, eps, t_, tp), want, atol=1e-5, rtol=1e-5)

    # Evenly spaced timesteps ending at T - 1 ("trailing").
    assert head.timesteps() == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    assert ddim_timesteps(100, 1) == [99] and ddim_timesteps(100, 100) == list(range(99, -1, -1))

    # A perfect noise predictor (eps from the known x0) recovers x0 exactly, for any number of steps.
    def perfect_eps(x, tt):
        a = head.alphas_cumprod[tt].view(-1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    for n in (10, 3):
        torch.testing.assert_close(head.sample(perfect_eps, noise, n), x0, atol=1e-5, rtol=0)


def test_schedule_is_derived_not_saved_and_stays_float32(embodiment, norm_stats):
    policy = _policy(embodiment, norm_stats, randomise=False)
    assert not any("alphas_cumprod" in k for k in policy.state_dict())
    head = policy.head.to(torch.bfloat16)
    assert head.alphas_cumprod.dtype == torch.float32 and head.dit.out.weight.dtype == torch.bfloat16


def test_adaln_zero_blocks_are_identity_at_init(embodiment, norm_stats, h):
    head = _policy(embodiment, norm_stats, randomise=False).head
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 8, head.width, generator=g), torch.randn(2, head.width, generator=g)
    ctx, mask = torch.randn(2, 5, head.width, generator=g), torch.ones(2, 5, dtype=torch.bool)
    for block in head.dit.blocks:
        assert not block.ada[-1].weight.any() and not block.ada[-1].bias.any()  # all gates start at zero
        assert torch.equal(block(x, c, ctx, mask), x)
    # The final layer is zero too, so the initial noise estimate is 0 (DiT).
    assert not head.denoise(torch.randn(2, 8, 4), torch.tensor([5, 50]), ctx, mask).any()


def test_shapes_loss_and_cached_prefix_equals_reference(embodiment, norm_stats, h, monkeypatch):
    policy = _policy(embodiment, norm_stats)
    assert policy.head.width == 128 and policy.head.num_steps == 10 and not policy.head.uses_lm_head
    batch = h.batch(B=3)
    loss, metrics = policy.compute_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and {"loss", "l1", "mse"} <= set(metrics)

    ctx, head, bb = _ctx(policy, batch), policy.head, policy.backbone
    calls = []
    run = bb.run
    monkeypatch.setattr(bb, "run", lambda *a, **k: calls.append(1) or run(*a, **k))
    with torch.inference_mode():
        fast = head.predict(bb, ctx, generator=torch.Generator().manual_seed(3))
        n_fast = len(calls)
        slow = head.predict_reference(bb, ctx, generator=torch.Generator().manual_seed(3), num_steps=10)
    assert n_fast == 1 and len(calls) - n_fast == 10  # the prefix once vs once per step
    assert fast.shape == (3, 8, 4) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    assert fast.abs().max() <= 1 and fast.std() > 0.05


def test_left_padding_is_masked_batched_equals_one_by_one(embodiment, norm_stats, h):
    policy = _policy(embodiment, norm_stats)
    batch, head, bb = h.batch(B=3), policy.head, policy.backbone
    noise = torch.randn(3, 8, 4)
    with torch.inference_mode():
        ctx = _ctx(policy, batch)
        context, valid = head.encode(bb, ctx)
        assert (~valid).any()  # different prompt lengths: left padding is exercised
        together = head.sample(lambda x, t: head.denoise(x, t, context, valid), noise)
        for i in range(3):
            one = {
                k: (v[i : i + 1] if k != "images" else {c: x[i : i + 1] for c, x in v.items()})
                for k, v in batch.items()
            }
            c1, v1 = head.encode(bb, _ctx(policy, one))
            alone = head.sample(lambda x, t, c1=c1, v1=v1: head.denoise(x, t, c1, v1), noise[i : i + 1])
            torch.testing.assert_close(alone, together[i : i + 1], atol=1e-4, rtol=0)


def test_sampling_is_reproducible_and_seeded(embodiment, norm_stats, h):
    policy = _policy(embodiment, norm_stats)
    batch = h.batch(B=2)
    a = policy.predict_action_batch(batch, generator=torch.Generator().manual_seed(0))
    b = policy.predict_action_batch(batch, generator=torch.Generator().manual_seed(0))
    c = policy.predict_action_batch(batch, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 8, 4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    fewer = policy.predict_action_batch(batch, generator=torch.Generator().manual_seed(0), num_steps=3)
    assert fewer.shape == a.shape and np.abs(fewer - a).max() > 1e-4
    with pytest.raises(InputError, match="num_steps"):
        policy.predict_action_batch(batch, num_steps=101)


def test_loss_falls_on_a_fixed_batch(embodiment, norm_stats, h):
    policy = Policy.from_preset("tiny", "diffusion", embodiment, norm_stats).train()
    batch = h.batch(B=4)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    losses = []
    for _ in range(50):
        loss, _ = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.7 * first, (first, last)


def test_save_load_round_trip_same_predictions(embodiment, norm_stats, h, tmp_path):
    policy = _policy(embodiment, norm_stats, num_steps=4, depth=2, width=64)
    batch = h.batch(B=2)
    want = policy.predict_action_batch(batch, generator=torch.Generator().manual_seed(7))
    loaded = Policy.from_pretrained(policy.save_pretrained(tmp_path / "p"))
    assert loaded.head.config() == policy.head.config()
    assert (loaded.head.num_steps, loaded.head.depth, loaded.head.width) == (4, 2, 64)
    got = loaded.predict_action_batch(batch, generator=torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(got, want)
