"""Training the dynamics unrolled on its own predictions (`--rollout R`): the windows and actions it reads,
the loss at R = 1, its gradients through the rollout, and an exact resume."""

import numpy as np
import pytest
import torch

from vlaforge.errors import InputError
from vlaforge.worldmodel.config import WorldModelConfig
from vlaforge.worldmodel.data import context_actions, window_starts, windows
from vlaforge.worldmodel.train import fit

from .squares import square_world
from .test_learns_squares import tiny_model


def test_windows_and_actions_by_hand():
    bounds = [(0, 5), (5, 8)]
    win = windows(bounds, [0, 1], context=2, horizon=2)
    # targets j, j + 1 inside the episode; context before the start repeats the first frame
    assert win.tolist() == [[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], [5, 5, 6, 7]]
    actions = np.arange(8, dtype=np.float32)[:, None] * 10  # action of frame i is 10 i
    acts, pad = context_actions(actions, win, window_starts(bounds, win), context=2)
    # the actions taken at frames first - 2, first - 1 (context) and first (on to the second target)
    assert acts[..., 0].tolist() == [[0, 0, 10], [0, 10, 20], [10, 20, 30], [0, 50, 60]]
    assert pad.tolist() == [[True, False, False], [False] * 3, [False] * 3, [True, False, False]]
    # R = 1 reads the windows and actions it always did
    one = windows(bounds, [0, 1], context=2)
    a1, p1 = context_actions(actions, one, window_starts(bounds, one))
    assert one.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [5, 5, 6], [5, 6, 7]]
    assert a1[..., 0].tolist() == [[0, 0], [0, 10], [10, 20], [20, 30], [0, 50], [50, 60]]
    with pytest.raises(InputError, match="lower --rollout"):
        windows([(0, 3)], [0], context=2, horizon=3)


def test_rollout_of_one_is_the_one_step_loss_and_longer_ones_backpropagate():
    torch.manual_seed(0)
    model, _ = tiny_model(square_world(episodes=4, steps=6), objective="mse")
    model.delta_std.fill_(0.3)
    ctx = torch.rand(3, 2, 4, 4, 4) * 2 - 1
    acts = torch.randn(3, 4, 2)
    targets = torch.rand(3, 3, 4, 4, 4) * 2 - 1
    one = model.rollout_loss(ctx, acts[:, :2], targets[:, :1])
    assert torch.equal(one, model.flow_loss(ctx, acts[:, :2], targets[:, 0], None))
    # with K = 2 the third step's context is the first two predictions alone, so the oldest real latent
    # reaches the third step's loss only through the rollout's predictions
    ctx.requires_grad_(True)
    third = (
        model.rollout_loss(ctx, acts, targets) * 3 - model.rollout_loss(ctx, acts[:, :3], targets[:, :2]) * 2
    )
    (g,) = torch.autograd.grad(third, ctx)
    assert g[:, 0].abs().sum() > 0
    with pytest.raises(InputError, match="needs --objective mse"):
        WorldModelConfig(dataset="d", out="o", objective="flow", rollout=2)


def test_rollout_resumes_exactly(tmp_path):
    torch.set_num_threads(1)
    eps = square_world(episodes=6, steps=8)
    kw = dict(objective="mse", rollout=3, ae_steps=2, steps=4, save_every=2, log_every=1, sample_every=0)
    a, cfg = tiny_model(eps, **kw)
    fit(a, eps, cfg, run=tmp_path / "a")
    b, cfg_b = tiny_model(eps, **kw)
    fit(b, eps, cfg_b, run=tmp_path / "b", stop_at=5)
    c, cfg_c = tiny_model(eps, init_seed=7, resume=True, **kw)
    fit(c, eps, cfg_c, run=tmp_path / "b")
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k]), k
