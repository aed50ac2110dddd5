"""Training on Open X-Embodiment RLDS serves the steps OpenVLA trains on, and DROID's still-step rule.

Expected values come from openvla/openvla @ c8f03f4, written out here:
- prismatic/vla/datasets/rlds/oxe/transforms.py `bridge_orig_dataset_transform`: every step feature is
  sliced `[1:]` (the first step is dropped), then utils/data_utils.py `relabel_bridge_actions` keeps `[:-1]`
  (the last step has no next state and is dropped).
- oxe/utils/droid_utils.py `zero_action_filter` (DROID's `chunk_filter_fn`, configs.py): a step is kept when
  `any(|a_norm[:6] - zero_norm| > 1e-5)`, both normalised as `2 (x - q01) / (q99 - q01 + 1e-8) - 1` with
  DROID's q01 / q99 below.
"""

from __future__ import annotations

import numpy as np
import pytest

from vlaforge.data import oxe
from vlaforge.data.dataset import open_dataset

from .conftest import smooth_images
from .rlds_spec import write_steps_tfds

DROID_Q01 = np.array([-0.7776297926902771, -0.5803514122962952, -0.5795090794563293,
                      -0.6464047729969025, -0.7041108310222626, -0.8895104378461838])  # fmt: skip
DROID_Q99 = np.array([0.7597932070493698, 0.5726242214441299, 0.7351000607013702,
                      0.6705610305070877, 0.6464948207139969, 0.8897542208433151])  # fmt: skip
# |a| at which a dim's normalised distance from the normalised zero reaches 1e-5: about 5.8e-6 .. 8.9e-6
RAW_TOL = 1e-5 * (DROID_Q99 - DROID_Q01 + 1e-8) / 2


def bridge_steps(T: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    state = np.cumsum(rng.normal(size=(T, 7)), axis=0).astype(np.float32)
    action = rng.normal(size=(T, 7)).astype(np.float32)
    action[:, 6] = rng.integers(0, 2, T)
    return {"observation/image_0": smooth_images(T, 8, 8, seed), "observation/state": state, "action": action}


def droid_steps(velocity: np.ndarray, seed: int) -> dict:
    T = len(velocity)
    return {
        "observation/exterior_image_1_left": smooth_images(T, 8, 8, seed),
        "action_dict/cartesian_velocity": velocity.astype(np.float32),
        "action_dict/gripper_position": np.full((T, 1), 0.25, np.float32),
        "observation/cartesian_position": np.zeros((T, 6), np.float32),
        "observation/gripper_position": np.zeros((T, 1), np.float32),
    }


def test_training_on_bridge_drops_its_first_and_last_steps(tmp_path):
    episodes = [bridge_steps(5, 0), bridge_steps(7, 1)]
    root = write_steps_tfds(tmp_path, "bridge_orig", episodes)
    ds = open_dataset(root, cache_dir=tmp_path / "cache")
    assert ds.num_frames == 3 + 5 and [len(ds.episode_frames(e)) for e in range(2)] == [3, 5]
    outs = [oxe.standardize("bridge_orig", ep) for ep in episodes]
    np.testing.assert_array_equal(outs[0]["index"], [1, 2, 3])
    np.testing.assert_allclose(ds.actions(), np.concatenate([o["action"] for o in outs]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.states(), np.concatenate([o["state"] for o in outs]), rtol=0, atol=1e-6)
    # the images are those of the kept steps (PNG: lossless)
    images = np.concatenate([ep["observation/image_0"][o["index"]] for ep, o in zip(episodes, outs)])
    np.testing.assert_array_equal(ds.frames("primary"), images)
    np.testing.assert_array_equal(ds.frame_reader("primary").read(np.array([4, 0])), images[[4, 0]])

    every = open_dataset(root, cache_dir=tmp_path / "cache", keep_all_steps=True)
    assert every.num_frames == 5 + 7
    keep_all = [oxe.standardize("bridge_orig", ep, keep_all=True)["action"] for ep in episodes]
    np.testing.assert_allclose(every.actions(), np.concatenate(keep_all), rtol=0, atol=1e-6)


def test_training_on_droid_drops_still_steps(tmp_path):
    v = np.zeros((6, 6))
    v[1, 0] = 0.3  # moves
    v[2, 0] = 0.5 * RAW_TOL[0]  # within OpenVLA's tolerance: still
    v[3, 5] = 2.0 * RAW_TOL[5]  # outside it: moves
    v[4] = 0.9 * RAW_TOL  # every dim just inside: still
    root = write_steps_tfds(tmp_path, "droid", [droid_steps(v, 3)])
    ds = open_dataset(root, cache_dir=tmp_path / "cache")
    assert ds.num_frames == 2
    np.testing.assert_allclose(ds.actions()[:, :6], v[[1, 3]].astype(np.float32), rtol=0, atol=0)
    assert open_dataset(root, cache_dir=tmp_path / "cache", keep_all_steps=True).num_frames == 6


def test_droid_still_steps_follow_openvla_normalised_tolerance():
    v = np.zeros((8, 6))
    v[1, 0] = 0.9 * RAW_TOL[0]  # ~6.9e-6: still (a raw 1e-6 rule keeps it)
    v[2, 5] = 0.9 * RAW_TOL[5]  # ~8.0e-6: still
    v[2, 1] = -0.9 * RAW_TOL[1]
    v[3, 1] = 1.1 * RAW_TOL[1]  # ~6.3e-6: moves
    v[4, 5] = -1.1 * RAW_TOL[5]  # ~-9.8e-6: moves
    v[5, 2] = 2e-6  # still
    v[6, 3] = 0.9 * RAW_TOL[3]  # still on dim 3 ...
    v[6, 4] = 1.1 * RAW_TOL[4]  # ... but moves on dim 4: kept
    v[7] = 0.9 * RAW_TOL  # every dim just inside: still
    out = oxe.standardize("droid", droid_steps(v, 0))
    np.testing.assert_array_equal(out["index"], [3, 4, 6])
    assert len(oxe.standardize("droid", droid_steps(v, 0), keep_all=True)["action"]) == 8


@pytest.mark.parametrize("dim", range(6))
def test_droid_tolerance_per_dim(dim):
    v = np.zeros((2, 6))
    v[0, dim] = 0.95 * RAW_TOL[dim]
    v[1, dim] = 1.05 * RAW_TOL[dim]
    np.testing.assert_array_equal(oxe.standardize("droid", droid_steps(v, 0))["index"], [1])


def test_a_mixture_passes_the_step_selection_to_its_datasets(tmp_path):
    a = write_steps_tfds(tmp_path / "a", "bridge_orig", [bridge_steps(5, 0)])
    b = write_steps_tfds(tmp_path / "b", "bridge_dataset", [bridge_steps(6, 1)])
    spec = f"{a.parent},{b.parent}"
    assert open_dataset(spec, cache_dir=tmp_path / "cache").num_frames == 3 + 4
    assert open_dataset(spec, cache_dir=tmp_path / "cache", keep_all_steps=True).num_frames == 5 + 6
