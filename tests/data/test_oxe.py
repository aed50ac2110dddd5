"""The Open X-Embodiment table (`vlaforge.data.oxe`) against OpenVLA's published source, and its ops by hand.

Expected values are written out here, from openvla/openvla (prismatic/vla/datasets/rlds/oxe/: configs.py,
transforms.py, mixtures.py) and from working the ops through on small arrays, never by calling the op.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from vlaforge.data import oxe, oxe_table
from vlaforge.data.rlds_dataset import RLDSDataset
from vlaforge.errors import InputError

from .rlds_spec import libero_like, write_tfds

SOUP_PLUS_MINUS = [
    "fractal20220817_data", "kuka", "bridge_orig", "taco_play", "jaco_play", "berkeley_cable_routing", "roboturk",
    "viola", "berkeley_autolab_ur5", "toto", "stanford_hydra_dataset_converted_externally_to_rlds",
    "austin_buds_dataset_converted_externally_to_rlds", "nyu_franka_play_dataset_converted_externally_to_rlds",
    "furniture_bench_dataset_converted_externally_to_rlds", "ucsd_kitchen_dataset_converted_externally_to_rlds",
    "austin_sailor_dataset_converted_externally_to_rlds", "austin_sirius_dataset_converted_externally_to_rlds",
    "dlr_edan_shared_control_converted_externally_to_rlds", "iamlab_cmu_pickup_insert_converted_externally_to_rlds",
    "utaustin_mutex", "berkeley_fanuc_manipulation", "cmu_stretch", "bc_z", "fmb_dataset", "dobbe",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Constants from the published source
# ---------------------------------------------------------------------------------------------------------


def test_openvla_7b_mixture_has_its_25_datasets_in_order():
    mix = oxe.MIXTURES["oxe_magic_soup_plus_minus"]
    assert [n for n, _ in mix] == SOUP_PLUS_MINUS
    weights = dict(mix)
    assert weights["fractal20220817_data"] == 1.0  # 0.54087122203 in the other soups
    assert weights["kuka"] == 0.8341046294
    assert weights["nyu_franka_play_dataset_converted_externally_to_rlds"] == 3.0
    assert weights["furniture_bench_dataset_converted_externally_to_rlds"] == 0.1
    assert (weights["bc_z"], weights["fmb_dataset"], weights["dobbe"]) == (0.2, 1.0, 0.2)
    assert "language_table" not in weights and "droid" not in weights
    assert oxe.get_mixture("oxe_magic_soup_plus_minus") == mix  # nothing to drop


def test_other_mixtures_weights():
    soup = dict(oxe.MIXTURES["oxe_magic_soup"])
    assert len(oxe.MIXTURES["oxe_magic_soup"]) == 23
    assert soup["fractal20220817_data"] == 0.54087122203 and soup["language_table"] == 0.1
    assert "bc_z" not in soup
    plus = oxe.MIXTURES["oxe_magic_soup_plus"]
    assert len(plus) == 27 and plus[-1] == ("droid", 0.06)
    assert oxe.MIXTURES["bridge"] == [("bridge_orig", 1.0)]
    assert oxe.MIXTURES["bridge_rt_1"] == [("bridge_orig", 1.0), ("fractal20220817_data", 1.0)]
    rtx = dict(oxe.MIXTURES["rtx"])
    assert len(oxe.MIXTURES["rtx"]) == 10 and rtx["berkeley_cable_routing"] == 3.0 and rtx["jaco_play"] == 2.0
    assert oxe.MIXTURES["libero_10_no_noops"] == [("libero_10_no_noops", 1.0)]
    assert len(oxe.MIXTURES) == 18


def test_rtx_franka_as_published_and_as_trained():
    published = oxe.get_mixture("rtx_franka", as_trained=False)
    assert len(published) == 28
    assert [w for n, w in published if n == "taco_play"] == [2.0, 1.0]
    trained = oxe.get_mixture("rtx_franka")
    assert len(trained) == 23  # 4 repeats (taco, cable routing, viola, toto) and berkeley_rpt (joint actions)
    assert dict(trained)["taco_play"] == 2.0 and dict(trained)["viola"] == 2.0
    assert "berkeley_rpt_converted_externally_to_rlds" not in dict(trained)


def test_every_mixture_entry_is_a_row_and_trained_ones_are_7d_eef():
    for name, entries in oxe.MIXTURES.items():
        for ds, w in entries:
            assert ds in oxe.DATASETS, (name, ds)
            assert w > 0
        for ds, _ in oxe.get_mixture(name):
            row = oxe.get_dataset(ds)
            assert row.action_encoding == "eef_pos" and row.action_dim == 7, ds
    assert len(oxe.DATASETS) == 70  # every entry of OXE_DATASET_CONFIGS


def test_bridge_cameras_and_transform():
    row = oxe.get_dataset("bridge_orig")
    assert row.images == {"primary": "image_0", "secondary": "image_1", "wrist": None}
    assert oxe.get_dataset("bridge_oxe").images["primary"] == "image"
    assert row.control_hz == 5.0 and row.state_encoding == "pos_euler"
    assert [str(p) for p in row.action] == ["action[:6]", "action[-1:]|binarize"]
    assert [str(op) for op in row.episode] == ["skip_first", "relabel(observation/state)"]
    assert row.gripper == "continuous"
    assert "bridge_orig_dataset_transform" in row.source and "openvla/openvla" in row.source


def test_fractal_gripper_and_keys():
    row = oxe.get_dataset("fractal20220817_data")
    assert [p.key for p in row.action] == [
        "action/world_vector", "action/rotation_delta", "action/gripper_closedness_action"
    ]  # fmt: skip
    assert [op.name for op in row.action[-1].ops] == ["rel2abs"]
    assert row.gripper == "relative"
    assert row.control_hz == 3.0 and row.state_encoding == "pos_quat"
    assert row.instruction == "observation/natural_language_instruction"


def test_other_rows():
    taco = oxe.get_dataset("taco_play")
    assert taco.images == {"primary": "rgb_static", "secondary": None, "wrist": "rgb_gripper"}
    assert taco.depth["wrist"] == "depth_gripper" and taco.control_hz == 15.0
    assert oxe.get_dataset("roboturk").gripper == "close=1"
    assert oxe.get_dataset("berkeley_cable_routing").gripper == "none"
    assert oxe.get_dataset("toto").gripper == "open=1" and oxe.get_dataset("toto").control_hz == 30.0
    assert (
        oxe.get_dataset("dobbe").images["primary"] == "wrist_image"
        and oxe.get_dataset("dobbe").control_hz == 3.75
    )
    assert oxe.get_dataset("berkeley_rpt_converted_externally_to_rlds").action_encoding == "joint_pos"
    assert oxe.get_dataset("stanford_mask_vit_converted_externally_to_rlds").control_hz is None
    assert oxe.get_dataset("libero_goal_no_noops").control_hz == 20.0
    furniture = oxe.get_dataset("furniture_bench_dataset_converted_externally_to_rlds")
    assert [str(p) for p in furniture.action] == ["action[:3]", "action[3:7]|quat2euler",
                                                  "action[-1:]|clip(0,1)|invert"]  # fmt: skip
    for row in oxe.DATASETS.values():
        assert row.gripper in oxe.GRIPPERS and row.source.startswith(oxe_table.OPENVLA)
        assert all(p.key is None or not p.key.startswith("steps/") for p in row.action + row.state)


# ---------------------------------------------------------------------------------------------------------
# The ops, worked by hand
# ---------------------------------------------------------------------------------------------------------


def col(*v):
    return np.asarray(v, dtype=np.float32)[:, None]


def test_binarize_takes_the_next_settled_state():
    # from the end: 0.3 undecided at the end keeps itself, 0.97 and 1.0 open, 0.5 takes the next (open), 0 closed
    out = oxe.binarize(col(0.0, 0.5, 1.0, 0.97, 0.3))
    np.testing.assert_allclose(out[:, 0], [0.0, 1.0, 1.0, 1.0, 0.3], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(oxe.binarize(col(0.9, 0.04, 0.6, 0.96))[:, 0], [0.0, 0.0, 1.0, 1.0])


def test_rel2abs_integrates_commands():
    # +1 close, -1 open; before the first command (close) the gripper was open
    np.testing.assert_array_equal(oxe.rel2abs(col(0, 0, 1, 0, -1, 0))[:, 0], [1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(oxe.rel2abs(col(-1, 0, 1))[:, 0], [1, 1, 0])
    np.testing.assert_array_equal(oxe.rel2abs(col(0.0, 0.05, -0.05))[:, 0], [1, 1, 1])  # all below 0.1
    np.testing.assert_array_equal(
        oxe.rel2abs(col(0.0, 0.5))[:, 0], [1, 0]
    )  # first command closes: open before


def test_invert_and_clip():
    np.testing.assert_array_equal(oxe.invert(col(0, 0.25, 1))[:, 0], [1, 0.75, 0])
    np.testing.assert_array_equal(oxe.clip(col(-1, 0.5, 2), 0, 1)[:, 0], [0, 0.5, 1])


def test_quat2euler():
    s, c = math.sin, math.cos
    q = np.array(
        [
            [0, 0, 0, 1],  # identity
            [s(0.15), 0, 0, c(0.15)],  # 0.3 about x
            [0, s(0.2), 0, c(0.2)],  # 0.4 about y
            [0, 0, s(math.pi / 4), c(math.pi / 4)],  # pi/2 about z
            [0, s(math.pi / 4), 0, c(math.pi / 4)],  # pi/2 about y: gimbal lock, yaw 0
        ]
    )
    expected = [[0, 0, 0], [0.3, 0, 0], [0, 0.4, 0], [0, 0, math.pi / 2], [0, math.pi / 2, 0]]
    np.testing.assert_allclose(oxe.quat2euler(q), expected, atol=1e-6)


def test_unzip_f32():
    raw = [zlib.compress(np.array(v, np.float32).tobytes()) for v in ([1, 2, 3], [4, 5, 6])]
    np.testing.assert_array_equal(oxe.unzip_f32(raw), [[1, 2, 3], [4, 5, 6]])


def test_spec_parsing_round_trip_and_errors():
    parts = oxe.parse_parts("action[-2:-1]|clip(0,1)|invert, zeros(2), ones(1), action[3], obs/x[2:]")
    assert [str(p) for p in parts] == ["action[-2:-1]|clip(0,1)|invert", "zeros(2)", "ones(1)", "action[3]",
                                       "obs/x[2:]"]  # fmt: skip
    assert parts[0].index == (-2, -1) and parts[1].width == 2 and parts[2].value == 1.0
    with pytest.raises(InputError, match="did you mean 'invert'"):
        oxe.parse_parts("action|invrt")
    with pytest.raises(InputError, match="takes 2 args"):
        oxe.parse_parts("action|clip(1)")
    with pytest.raises(InputError, match="cannot parse"):
        oxe.parse_parts("action[1:2:3]")


# ---------------------------------------------------------------------------------------------------------
# Whole rows on hand-made episodes
# ---------------------------------------------------------------------------------------------------------


def bridge_episode():
    # state[t, :6] = t^2, state[t, 6] = 10 + t; raw gripper 1, 1, 0, 0
    t = np.arange(4, dtype=np.float32)
    state = np.concatenate([np.repeat((t**2)[:, None], 6, 1), (10 + t)[:, None]], 1)
    action = np.zeros((4, 7), np.float32)
    action[:, 6] = [1, 1, 0, 0]
    return {"action": action, "observation/state": state, "language_instruction": ["put the spoon"] * 4,
            "observation/image_0": [b"jpeg"] * 4}  # fmt: skip


def test_bridge_as_openvla_drops_first_and_last_step():
    out = oxe.standardize("bridge_orig", bridge_episode())
    # steps 1, 2 kept; movement = next state - this state: 4 - 1 = 3, 9 - 4 = 5; gripper of those steps
    np.testing.assert_array_equal(out["index"], [1, 2])
    np.testing.assert_array_equal(out["action"], [[3] * 6 + [1], [5] * 6 + [0]])
    np.testing.assert_array_equal(out["state"], [[1] * 6 + [0, 11], [4] * 6 + [0, 12]])
    assert out["instruction"] == ["put the spoon"] * 2
    assert out["images"] == {"primary": "observation/image_0", "secondary": "observation/image_1"}
    assert out["action"].dtype == np.float32 and out["state"].dtype == np.float32


def test_bridge_keeping_every_step():
    values = {f"steps/{k}": v for k, v in bridge_episode().items()}
    values["episode_metadata/file_path"] = "x"
    action, state = oxe.standardize_columns("bridge_orig", values)
    # step 0 keeps its own movement (1 - 0), the last step has no next state: zero movement
    np.testing.assert_array_equal(action, [[1] * 6 + [1], [3] * 6 + [1], [5] * 6 + [0], [0] * 6 + [0]])
    assert state.shape == (4, 8)


def test_fractal_row_on_a_hand_made_episode():
    steps = {
        "action/world_vector": np.array([[1, 2, 3]] * 4, np.float32),
        "action/rotation_delta": np.array([[4, 5, 6]] * 4, np.float32),
        "action/gripper_closedness_action": col(0, 1, 0, -1),
        "observation/base_pose_tool_reached": np.ones((4, 7), np.float32),
        "observation/gripper_closed": col(0, 1, 1, 0),
        "observation/natural_language_instruction": [b"pick coke can"] * 4,
    }
    out = oxe.standardize("fractal20220817_data", steps)
    # gripper: no command, close, hold, open; open before the first (closing) command
    np.testing.assert_array_equal(out["action"][:, 6], [1, 0, 0, 1])
    np.testing.assert_array_equal(out["action"][:, :6], [[1, 2, 3, 4, 5, 6]] * 4)
    assert out["state"].shape == (4, 8) and out["instruction"][0] == "pick coke can"
    np.testing.assert_array_equal(out["index"], np.arange(4))


def test_language_table_instruction_code_points_and_constant_dims():
    codes = np.zeros((2, 8), np.int32)
    codes[:, :4] = [ord(c) for c in "push"]
    out = oxe.standardize(
        "language_table",
        {"action": np.array([[0.1, -0.2]] * 2, np.float32), "observation/effector_translation": np.ones((2, 2)),
         "observation/instruction": codes},
    )  # fmt: skip
    np.testing.assert_allclose(out["action"], [[0.1, -0.2, 0, 0, 0, 0, 1]] * 2)
    assert out["instruction"] == ["push", "push"] and out["state"].shape == (2, 8)


def test_droid_drops_still_steps():
    steps = {
        "action_dict/cartesian_velocity": np.array([[0] * 6, [0.5] + [0] * 5, [0] * 6], np.float32),
        "action_dict/gripper_position": col(0.0, 0.25, 1.0),
        "observation/cartesian_position": np.zeros((3, 6), np.float32),
        "observation/gripper_position": col(0, 0, 0),
    }
    out = oxe.standardize("droid", steps)
    np.testing.assert_array_equal(out["index"], [1])
    np.testing.assert_array_equal(out["action"], [[0.5, 0, 0, 0, 0, 0, 0.75]])
    assert len(oxe.standardize("droid", steps, keep_all=True)["action"]) == 3


def test_missing_key_names_dataset_key_and_present_keys():
    with pytest.raises(InputError) as e:
        oxe.standardize("fractal20220817_data", {"action": np.zeros((3, 7)), "observation/image": [b""] * 3})
    msg = str(e.value)
    assert "fractal20220817_data" in msg and "'action/world_vector'" in msg and "'observation/image'" in msg


def test_wrong_action_width_is_an_error():
    with pytest.raises(InputError, match="6-dim action, not 7"):
        oxe.standardize(
            "libero_10_no_noops", {"action": np.zeros((2, 5)), "observation/state": np.zeros((2, 8))}
        )


def test_unknown_names_say_did_you_mean():
    with pytest.raises(InputError, match="did you mean 'bridge_orig'"):
        oxe.get_dataset("bridge_orgi")
    with pytest.raises(InputError, match="did you mean 'oxe_magic_soup_plus_minus'"):
        oxe.get_mixture("oxe_magic_soup_plus_minsu")
    with pytest.raises(InputError, match="did you mean"):
        oxe.standardize("fractal2022081_data", {})
    assert oxe.find_dataset("not_in_the_table", required=False) is None


# ---------------------------------------------------------------------------------------------------------
# Through the RLDS reader
# ---------------------------------------------------------------------------------------------------------


def test_rlds_reader_standardises_a_libero_dataset_by_its_name(tmp_path):
    data = libero_like(n_episodes=2, shards=1, size=8)
    root = write_tfds(tmp_path, data, name="libero_10_no_noops")
    ds = RLDSDataset(root)
    assert ds.mapping.oxe == "libero_10_no_noops" and ds.camera_names == ["primary"]
    assert ds.mapping.cameras == {"primary": "steps/observation/image"}
    raw_a = np.concatenate([e["action"] for e in data["episodes"]])
    raw_s = np.concatenate([e["state"] for e in data["episodes"]])
    # gripper: clip to [0, 1], then 1 - g; state: eef (6), a zero, the last two dims
    expected = np.concatenate([raw_a[:, :6], 1 - np.clip(raw_a[:, 6:], 0, 1)], 1)
    np.testing.assert_allclose(ds.actions(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.states(), np.concatenate([raw_s[:, :6], 0 * raw_s[:, :1], raw_s[:, 6:]], 1))
    emb = ds.embodiment()
    assert emb.action_names == list(oxe.ACTION_NAMES) and emb.normalize_mask == [True] * 6 + [False]
    assert emb.control_hz == 20.0


def test_rlds_mapping_names_a_missing_feature(tmp_path):
    root = write_tfds(tmp_path, libero_like(n_episodes=1, shards=1, size=8), name="fractal20220817_data")
    with pytest.raises(InputError, match="action/world_vector"):
        RLDSDataset(root)
    assert RLDSDataset(root, oxe="libero_10_no_noops").mapping.oxe == "libero_10_no_noops"


def test_named_mixture_file_resolves_through_the_table(tmp_path):
    from vlaforge.data.mixture import parse_mixture

    for name, _ in oxe.get_mixture("rtx_franka"):
        (tmp_path / "oxe" / name).mkdir(parents=True)
    spec = tmp_path / "mix.json"
    spec.write_text('{"mixture": "rtx_franka", "data_dir": "oxe"}')
    entries = parse_mixture(spec)
    assert len(entries) == 23 and entries[3].key == "taco_play" and entries[3].weight == 2.0
    assert all(e.oxe == e.key for e in entries)
