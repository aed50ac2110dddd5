"""Spatial soft-argmax keypoints: the expected coordinates of a peaked map are the peak's cell, an encoder
learns to locate a one-pixel marker, and a policy with keypoint tokens trains, saves and refuses OpenVLA's
format."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlaforge.errors import InputError
from vlaforge.models.keypoints import KeypointEncoder, SpatialSoftmax
from vlaforge.models.policy import Policy
from vlaforge.models.presets import get_preset


def test_a_peaked_map_gives_its_cell_and_a_flat_map_the_centre():
    soft = SpatialSoftmax()
    with torch.no_grad():
        soft.log_temperature.fill_(math.log(0.01))
    maps = torch.zeros(2, 3, 7, 9)
    maps[0, 0, 0, 0] = 1.0  # top-left cell
    maps[0, 1, 6, 8] = 1.0  # bottom-right
    maps[0, 2, 3, 2] = 1.0  # row 3 of 7 (the middle), column 2 of 9
    xy = soft(maps)
    # cell centres span [-1, 1]: column c of W sits at -1 + 2c / (W - 1)
    expected = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0 + 4 / 8, 0.0]])
    torch.testing.assert_close(xy[0], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(xy[1], torch.zeros(3, 2), atol=1e-6, rtol=0)  # flat: the mean of the grid


def test_a_fresh_encoder_already_moves_its_keypoints_with_the_image():
    """Maps are standardised before the softmax: a freshly initialised conv net's raw maps barely vary
    (softmax over them is near uniform and every image gives the centre, std ~0.001 here), which left a
    policy's keypoint token constant through training."""
    torch.manual_seed(0)
    enc = KeypointEncoder(8, 4)
    x = (torch.rand(16, 3, 64, 64) - 0.5) / 0.25
    with torch.no_grad():
        spread = enc.points(x).std(0).mean().item()
    assert spread > 0.05, spread


def test_the_encoder_learns_where_a_one_pixel_marker_is():
    """Random grey clutter with one red pixel at a random place: regressing the pixel's position through
    the keypoints reaches under a pixel (0.2 px), where guessing the centre is off by ~13 px."""
    torch.manual_seed(0)
    size = 32
    enc = KeypointEncoder(8, 2)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)

    def batch(n, g):
        img = torch.rand(n, 1, size, size, generator=g).expand(n, 3, size, size).clone() * 0.6
        rc = torch.randint(0, size, (n, 2), generator=g)
        img[torch.arange(n), 0, rc[:, 0], rc[:, 1]] = 1.0  # red: only the first channel rises
        img[torch.arange(n), 1:, rc[:, 0], rc[:, 1]] = 0.0
        target = rc.flip(1).float() / (size - 1) * 2 - 1  # (x, y) in [-1, 1]
        return (img - 0.5) / 0.25, target

    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        x, y = batch(32, g)
        loss = torch.nn.functional.mse_loss(enc(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = batch(256, torch.Generator().manual_seed(2))
    with torch.no_grad():
        err_px = ((enc(x) - y).norm(dim=1) * (size - 1) / 2).median().item()
    centre_px = (y.norm(dim=1) * (size - 1) / 2).median().item()
    assert centre_px > 8, centre_px
    assert err_px < 2.0, (err_px, centre_px)


@pytest.fixture
def policy(h):
    return Policy.from_preset("tiny", "chunk", h.embodiment(("corner2", "wrist")), h.stats(), keypoints=8)


def test_one_token_per_camera_follows_the_patches_and_reads_the_pixels(policy, h):
    batch = h.batch(B=3, cameras=("corner2", "wrist"))
    bb = policy.backbone
    images = [batch["images"]["corner2"], batch["images"]["wrist"]]
    with torch.no_grad():
        tokens = bb.embed_images(images)
        n = bb.vision.n_patches
        assert tokens.shape == (3, 2 * n + 2, bb.hidden_size)
        for i, img in enumerate(images):  # the keypoint tokens come last, in camera order
            pixels = bb.vision.preprocess(img)[:, :3]
            # Not bit for bit: the cameras go through the convolutions as one batch there, and a batch of
            # another size may take another kernel (seen: 3e-8 apart); the other camera's token is 0.35 away.
            torch.testing.assert_close(tokens[:, 2 * n + i], bb.keypoints(pixels), rtol=0, atol=1e-6)
            torch.testing.assert_close(
                tokens[:, i * n : (i + 1) * n], bb.projector(bb.vision(bb.vision.preprocess(img)))[:, :n]
            )
    loss, _ = policy.compute_loss(batch)
    loss.backward()
    assert bb.keypoints.conv1.weight.grad.abs().sum() > 0
    assert bb.keypoints.softmax.log_temperature.grad is not None


def test_saved_and_loaded_with_its_keypoints_and_refused_as_openvla(policy, h, tmp_path):
    batch = h.batch(B=2, cameras=("corner2", "wrist"))
    gen = torch.Generator().manual_seed(0)
    before = policy.predict_action_batch(batch, generator=gen)
    loaded = Policy.from_pretrained(policy.save_pretrained(tmp_path / "p"))
    assert loaded.preset.keypoints == 8
    after = loaded.predict_action_batch(batch, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(before, after)
    with pytest.raises(InputError, match="8 keypoint tokens"):
        policy.save_pretrained(tmp_path / "ovla", format="openvla")


def test_keypoints_are_checked():
    with pytest.raises(InputError, match="keypoints must be >= 0"):
        get_preset("tiny").with_overrides(keypoints=-1)
