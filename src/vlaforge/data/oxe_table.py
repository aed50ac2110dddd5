"""Open X-Embodiment as data: OpenVLA's per-dataset standardisations as one table, and its named mixtures.

Every dataset of OpenVLA's OXE_DATASET_CONFIGS is a row (`OXEDataset`): its cameras by role, state and
action encodings, control rate, and its transform written in the op vocabulary (`vlaforge.data.oxe_ops`).
Sources (facts only; structures and words are ours): openvla/openvla @ c8f03f4, prismatic/vla/datasets/
rlds/oxe/ configs.py, transforms.py (cited per row), mixtures.py, materialize.py; control rates from
huggingface/lerobot @ 66a3862 (openx/configs.yaml), OpenVLA's configs.py comments (T-DROID) and LIBERO's
env_wrapper.py. How a row is read: docs/oxe.md.
"""

from __future__ import annotations

import dataclasses

from vlaforge.data.oxe_ops import EPISODE_OPS, Op, Part, parse_op, parse_parts

OPENVLA = "openvla/openvla@c8f03f4 prismatic/vla/datasets/rlds/oxe/"
LEROBOT = "huggingface/lerobot@66a3862 lerobot/common/datasets/push_dataset_to_hub/openx/configs.yaml"
LIBERO = "Lifelong-Robot-Learning/LIBERO libero/libero/envs/env_wrapper.py (default control_freq)"
ROLES = ("primary", "secondary", "wrist")
STATE_ENCODINGS = ("none", "pos_euler", "pos_quat", "joint", "joint_bimanual")  # configs.py StateEncoding
ACTION_ENCODINGS = ("eef_pos", "joint_pos", "joint_pos_bimanual", "eef_r6")  # configs.py ActionEncoding
GRIPPERS = {
    "open=1": "absolute, 1 = open: kept as stored (clipped to [0, 1] where the row says so)",
    "close=1": "absolute, 1 = closed: inverted to 1 - g",
    "relative": "relative commands (+1 close, -1 open, 0 hold): integrated to an absolute state",
    "continuous": "continuous in [0, 1], 1 = open: binarised",
    "none": "no gripper action: a constant",
}
ACTION_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")  # the standardised EEF_POS action
EEF_NORMALIZE_MASK = (True,) * 6 + (False,)  # materialize.py: every dim but the gripper is normalised
NLI = "observation/natural_language_instruction"  # where older OXE datasets keep the instruction


@dataclasses.dataclass(frozen=True)
class OXEDataset:
    """One dataset of the table: what OpenVLA reads from it and how it makes the standard action.

    Attributes:
        name: the TFDS name (directory) of the dataset.
        control_hz: control rate in Hz; None where no source gives one.
        images: role ("primary", "secondary", "wrist") -> RGB key under ``observation/``, or None.
        depth: role -> depth image key under ``observation/``, or None.
        state_encoding: one of `STATE_ENCODINGS` (what the state's dims mean).
        action_encoding: one of `ACTION_ENCODINGS`; OpenVLA trains only on "eef_pos" (and "eef_r6") rows.
        action: parts of the standardised action (7 dims for "eef_pos").
        state: parts of the state (OpenVLA's layout, a zero per missing key).
        episode: episode ops, in order.
        instruction: the step feature holding the instruction (code points for language_table).
        source: where the row's facts come from.
        notes: what the row does not capture.
    """

    name: str
    control_hz: float | None
    images: dict[str, str | None]
    depth: dict[str, str | None]
    state_encoding: str
    action_encoding: str
    action: tuple[Part, ...]
    state: tuple[Part, ...]
    episode: tuple[Op, ...] = ()
    instruction: str = "language_instruction"
    source: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        where = f"OXE dataset {self.name!r}"
        if set(self.images) != set(ROLES) or set(self.depth) != set(ROLES):
            raise ValueError(f"{where}: images and depth need exactly the roles {ROLES}")
        if self.state_encoding not in STATE_ENCODINGS or self.action_encoding not in ACTION_ENCODINGS:
            raise ValueError(f"{where}: encodings {self.state_encoding!r} / {self.action_encoding!r} unknown")
        if not any(p.key for p in self.action):
            raise ValueError(f"{where}: the action needs at least one step feature")
        phases = [op.name != "skip_first" for op in self.episode]
        if phases != sorted(phases):
            raise ValueError(f"{where}: skip_first must come before the other episode ops")

    @property
    def action_dim(self) -> int | None:
        """7 for an end-effector action, None where the dims follow the dataset (joint actions)."""
        return 7 if self.action_encoding == "eef_pos" else None

    @property
    def gripper(self) -> str:
        """The raw gripper convention (a key of `GRIPPERS`), read off the last action part's ops."""
        last = self.action[-1]
        names = {op.name for op in last.ops}
        if last.key is None:
            return "none"
        for op, convention in (("rel2abs", "relative"), ("binarize", "continuous"), ("invert", "close=1")):
            if op in names:
                return convention
        return "open=1"

    def needed_keys(self) -> list[str]:
        """The step features (without ``steps/``) that the action, state and episode ops read."""
        keys = {p.key for p in self.action + self.state if p.key}
        keys |= {op.args[0] for op in self.episode if op.name == "relabel"}
        return sorted(keys)


def _roles(text: str) -> dict[str, str | None]:
    keys = text.split()
    return {r: (None if k == "-" else k) for r, k in zip(ROLES, keys, strict=True)}


def _row(name, hz, images, depth, state_enc, fn, action, state, *, act_enc="eef_pos", instr=None,
         episode="", hz_src=LEROBOT, notes="") -> OXEDataset:  # fmt: skip
    """A table row from its compact form (specs as text; `fn` is the transform's name in OpenVLA)."""
    where = f"OXE dataset {name!r}"
    return OXEDataset(
        name=name,
        control_hz=None if hz is None else float(hz),
        images=_roles(images),
        depth=_roles(depth),
        state_encoding=state_enc,
        action_encoding=act_enc,
        action=parse_parts(action, where),
        state=parse_parts(state, where),
        episode=tuple(parse_op(o, EPISODE_OPS, where) for o in episode.split(";") if o.strip()),
        instruction=instr or "language_instruction",
        source=f"{OPENVLA}configs.py OXE_DATASET_CONFIGS[{name!r}], transforms.py {fn}; control rate: "
        + (hz_src if hz is not None else "none found (not in LeRobot's OXE table)"),
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------------------
# The table: OpenVLA's configs.py and transforms.py, every dataset of OXE_DATASET_CONFIGS
# ---------------------------------------------------------------------------------------------------------

_X = "_converted_externally_to_rlds"
_RT1 = "action/world_vector, action/rotation_delta, action/gripper_closedness_action"
_EULER_8 = "observation/state[:6], zeros(1), observation/state[-1:]"  # eef xyz rpy, pad, gripper
_RELABEL = "skip_first; relabel(observation/state)"
_INV = "action[:6], action[-1:]|invert"
_CLIP_INV = "action[:6], action[-1:]|clip(0,1)|invert"
_TDROID = (5, "static_image - -", "static_depth_image - -", "pos_euler", "tdroid_dataset_transform",
           "action[:6], action[-1:]|binarize",
           "observation/cartesian_position[:6], zeros(1), observation/gripper_position[-1:]")  # fmt: skip
_TDROID_HZ = f"{OPENVLA}configs.py comments (5 Hz control)"
_DROID_ACT = "action_dict/cartesian_velocity[:6], action_dict/gripper_position|invert"
_DROID_STATE = "observation/cartesian_position, observation/gripper_position"
_GNM = ("- - image", "- - -", "pos_euler", "gnm_dataset_transform", "action, zeros(5)",
        "observation/position, zeros(3), observation/yaw, zeros(2)")  # fmt: skip
_LIBERO = (20, "image - wrist_image", "- - -", "pos_euler", "libero_dataset_transform", _CLIP_INV,
           "observation/state[:6], zeros(1), observation/state[-2:]")  # fmt: skip

# fmt: off
_ROWS = [
    _row("fractal20220817_data", 3, "image - -", "- - -", "pos_quat", "rt1_dataset_transform", _RT1 + "|rel2abs",
         "observation/base_pose_tool_reached, observation/gripper_closed", instr=NLI),
    _row("kuka", 10, "image - -", "- - -", "pos_quat", "kuka_dataset_transform", _RT1 + "|rel2abs",
         "observation/clip_function_input/base_pose_tool_reached|unzip_f32, observation/gripper_closed|unzip_f32",
         instr=NLI),
    _row("bridge_oxe", 5, "image image_1 -", "- - -", "pos_euler", "bridge_oxe_dataset_transform",
         "action/world_vector, action/rotation_delta, action/open_gripper", _EULER_8, instr=NLI,
         episode=_RELABEL, hz_src=f"{LEROBOT} ('bridge_openx')"),
    *[_row(n, 5, "image_0 image_1 -", "- - -", "pos_euler", "bridge_orig_dataset_transform",
           "action[:6], action[-1:]|binarize", _EULER_8, episode=_RELABEL,
           hz_src=f"{LEROBOT} ('bridge_openx')") for n in ("bridge_orig", "bridge_dataset")],
    _row("taco_play", 15, "rgb_static - rgb_gripper", "depth_static - depth_gripper", "pos_euler",
         "taco_play_dataset_transform", "action/rel_actions_world[:6], action/rel_actions_world[-1:]|clip(0,1)",
         "observation/robot_obs[:6], zeros(1), observation/robot_obs[7:8]", instr=NLI,
         notes="OpenVLA's comment there says the gripper is inverted; its code only clips it"),
    _row("jaco_play", 10, "image - image_wrist", "- - -", "pos_euler", "jaco_play_dataset_transform",
         "action/world_vector, zeros(3), action/gripper_closedness_action|rel2abs",
         "observation/end_effector_cartesian_pos[:6], zeros(1), observation/end_effector_cartesian_pos[-1:]",
         instr=NLI),
    _row("berkeley_cable_routing", 10, "image top_image wrist45_image", "- - -", "joint",
         "berkeley_cable_routing_dataset_transform", "action/world_vector, action/rotation_delta, zeros(1)",
         "observation/robot_state, zeros(1)", instr=NLI),
    _row("roboturk", 10, "front_rgb - -", "- - -", "none", "roboturk_dataset_transform",
         _RT1 + "|clip(0,1)|invert", "zeros(8)", instr=NLI),
    _row("nyu_door_opening_surprising_effectiveness", 3, "- - image", "- - -", "none",
         "nyu_door_opening_dataset_transform", _RT1 + "|rel2abs", "zeros(8)", instr=NLI),
    _row("viola", 20, "agentview_rgb - eye_in_hand_rgb", "- - -", "joint", "viola_dataset_transform",
         _RT1 + "|clip(0,1)|invert", "observation/joint_states, observation/gripper_states", instr=NLI),
    _row("berkeley_autolab_ur5", 5, "image - hand_image", "image_with_depth - -", "pos_quat",
         "berkeley_autolab_ur5_dataset_transform", _RT1 + "|rel2abs", "observation/robot_state[6:14]", instr=NLI,
         notes="depth: the RLDS key; OpenVLA renames it 'depth'"),
    _row("toto", 30, "image - -", "- - -", "joint", "toto_dataset_transform",
         "action/world_vector, action/rotation_delta, action/open_gripper", "observation/state, zeros(1)",
         instr=NLI),
    _row("language_table", 10, "rgb - -", "- - -", "pos_euler", "language_table_dataset_transform",
         "action, zeros(4), ones(1)", "observation/effector_translation, zeros(6)",
         instr="observation/instruction", notes="instruction stored as zero-padded unicode code points"),
    _row("columbia_cairlab_pusht_real", 10, "image - wrist_image", "- - -", "pos_euler",
         "pusht_dataset_transform", _RT1, "observation/robot_state, zeros(6)", instr=NLI),
    _row("stanford_kuka_multimodal_dataset" + _X, 20, "image - -", "depth_image - -", "pos_quat",
         "stanford_kuka_multimodal_dataset_transform", "action[:3], zeros(3), action[-1:]",
         "observation/ee_position, observation/ee_orientation, zeros(1)"),
    _row("nyu_rot_dataset" + _X, 3, "image - -", "- - -", "pos_euler", "nyu_rot_dataset_transform",
         "action[:7]", _EULER_8),
    _row("stanford_hydra_dataset" + _X, 10, "image - wrist_image", "- - -", "pos_euler",
         "stanford_hydra_dataset_transform", _INV,
         "observation/state[:3], observation/state[7:10], zeros(1), observation/state[-3:-2]"),
    _row("austin_buds_dataset" + _X, 20, "image - wrist_image", "- - -", "joint", "austin_buds_dataset_transform",
         _CLIP_INV, "observation/state[:8]"),
    _row("nyu_franka_play_dataset" + _X, 3, "image image_additional_view -", "depth depth_additional_view -",
         "pos_euler", "nyu_franka_play_dataset_transform", "action[-8:-2], action[-2:-1]|clip(0,1)",
         "observation/state[-6:], zeros(2)"),
    _row("maniskill_dataset" + _X, 20, "image - wrist_image", "depth - wrist_depth", "pos_quat",
         "maniskill_dataset_transform", "action", "observation/tcp_pose, observation/state[7:8]"),
    _row("furniture_bench_dataset" + _X, 10, "image - wrist_image", "- - -", "pos_quat",
         "furniture_bench_dataset_transform", "action[:3], action[3:7]|quat2euler, action[-1:]|clip(0,1)|invert",
         "observation/state[:7], observation/state[-1:]"),
    _row("cmu_franka_exploration_dataset" + _X, 10, "highres_image - -", "- - -", "none",
         "cmu_franka_exploration_dataset_transform", "action[:-1]", "zeros(8)"),
    _row("ucsd_kitchen_dataset" + _X, 2, "image - -", "- - -", "joint", "ucsd_kitchen_dataset_transform",
         "action[:-1]", "observation/state[:7], zeros(1)"),
    _row("ucsd_pick_and_place_dataset" + _X, 3, "image - -", "- - -", "pos_euler",
         "ucsd_pick_place_dataset_transform", "action[:3], zeros(3), action[-1:]", _EULER_8),
    _row("austin_sailor_dataset" + _X, 20, "image - wrist_image", "- - -", "pos_quat",
         "austin_sailor_dataset_transform", _CLIP_INV, "observation/state"),
    _row("austin_sirius_dataset" + _X, 20, "image - wrist_image", "- - -", "pos_quat",
         "austin_sirius_dataset_transform", _CLIP_INV, "observation/state"),
    _row("bc_z", 10, "image - -", "- - -", "pos_euler", "bc_z_dataset_transform",
         "action/future/xyz_residual[:3], action/future/axis_angle_residual[:3], action/future/target_close[:1]"
         "|invert", "observation/present/xyz, observation/present/axis_angle, zeros(1), "
         "observation/present/sensed_close", instr=NLI),
    _row("utokyo_pr2_opening_fridge" + _X, 10, "image - -", "- - -", "pos_euler",
         "tokyo_pr2_opening_fridge_dataset_transform", "action[:-1]", _EULER_8),
    _row("utokyo_pr2_tabletop_manipulation" + _X, 10, "image - -", "- - -", "pos_euler",
         "tokyo_pr2_tabletop_manipulation_dataset_transform", "action[:-1]", _EULER_8),
    _row("utokyo_xarm_pick_and_place" + _X, 10, "image image2 hand_image", "- - -", "pos_euler",
         "utokyo_xarm_pick_place_dataset_transform", "action", "observation/end_effector_pose, zeros(2)"),
    _row("utokyo_xarm_bimanual" + _X, 10, "image - -", "- - -", "pos_euler",
         "utokyo_xarm_bimanual_dataset_transform", "action[-7:]", "observation/pose_r, zeros(2)"),
    _row("robo_net", 1, "image image1 -", "- - -", "pos_euler", "robo_net_dataset_transform",
         "action[:4], zeros(2), action[-1:]", "observation/state[:4], zeros(3), observation/state[-1:]"),
    _row("berkeley_mvp" + _X, 5, "- - hand_image", "- - -", "pos_quat", "berkeley_mvp_dataset_transform",
         "action", "observation/pose, observation/gripper", act_enc="joint_pos"),
    _row("berkeley_rpt" + _X, 30, "- - hand_image", "- - -", "joint", "berkeley_rpt_dataset_transform",
         "action", "observation/joint_pos, observation/gripper", act_enc="joint_pos"),
    _row("kaist_nonprehensile" + _X, 10, "image - -", "- - -", "pos_quat", "kaist_nonprehensible_dataset_transform",
         "action[:6], zeros(1)", "observation/state[-7:], zeros(1)"),
    _row("stanford_mask_vit" + _X, None, "image - -", "- - -", "pos_euler", "stanford_mask_vit_dataset_transform",
         "action[:4], zeros(2), action[-1:]",
         "observation/end_effector_pose[:4], zeros(3), observation/end_effector_pose[-1:]"),
    _row("tokyo_u_lsmo" + _X, 10, "image - -", "- - -", "pos_euler", "tokyo_lsmo_dataset_transform", "action",
         _EULER_8),
    _row("dlr_sara_pour" + _X, 10, "image - -", "- - -", "pos_euler", "dlr_sara_pour_dataset_transform", "action",
         "observation/state, zeros(2)"),
    _row("dlr_sara_grid_clamp" + _X, 10, "image - -", "- - -", "pos_euler",
         "dlr_sara_grid_clamp_dataset_transform", "action", "observation/state[:6], zeros(2)"),
    _row("dlr_edan_shared_control" + _X, 5, "image - -", "- - -", "pos_euler",
         "dlr_edan_shared_control_dataset_transform", _INV, "observation/state, zeros(1)"),
    _row("asu_table_top" + _X, 12.5, "image - -", "- - -", "pos_euler", "asu_table_top_dataset_transform",
         "action", "ground_truth_states/EE, zeros(1), observation/state[-1:]"),
    _row("stanford_robocook" + _X, 5, "image_1 image_2 -", "depth_1 depth_2 -", "pos_euler",
         "robocook_dataset_transform", "action", _EULER_8),
    _row("imperialcollege_sawyer_wrist_cam", 10, "image - wrist_image", "- - -", "none",
         "imperial_wristcam_dataset_transform", "action[:-1]", "zeros(7), observation/state"),
    _row("iamlab_cmu_pickup_insert" + _X, 20, "image - wrist_image", "- - -", "joint",
         "iamlab_pick_insert_dataset_transform", "action[:3], action[3:7]|quat2euler, action[7:8]",
         "observation/state[:7], observation/state[7:8]"),
    _row("uiuc_d3field", 1, "image_1 image_2 -", "depth_1 depth_2 -", "none", "uiuc_d3field_dataset_transform",
         "action, zeros(4)", "zeros(8)"),
    _row("utaustin_mutex", 20, "image - wrist_image", "- - -", "joint", "utaustin_mutex_dataset_transform",
         _CLIP_INV, "observation/state[:8]"),
    _row("berkeley_fanuc_manipulation", 10, "image - wrist_image", "- - -", "joint",
         "berkeley_fanuc_dataset_transform", "action, observation/state[6:7]|invert",
         "observation/state[:6], zeros(1), observation/state[6:7]",
         notes="no gripper action stored: the gripper state stands in for it"),
    _row("cmu_playing_with_food", 10, "image - finger_vision_1", "- - -", "pos_euler",
         "cmu_playing_with_food_dataset_transform", "action[:3], action[3:7]|quat2euler, action[-1:]",
         "observation/state, zeros(2)"),
    _row("cmu_play_fusion", 5, "image - -", "- - -", "joint", "playfusion_dataset_transform",
         "action[:3], action[-4:]", "observation/state"),
    _row("cmu_stretch", 10, "image - -", "- - -", "pos_euler", "cmu_stretch_dataset_transform", "action[:-1]",
         "observation/state[:3], zeros(4), observation/state[-1:]"),
    _row("berkeley_gnm_recon", 3, *_GNM),
    _row("berkeley_gnm_cory_hall", 5, *_GNM),
    _row("berkeley_gnm_sac_son", 10, *_GNM),
    _row("droid", 15, "exterior_image_1_left exterior_image_2_left wrist_image_left", "- - -", "pos_quat",
         "droid_baseact_transform (utils/droid_utils.py)", _DROID_ACT, _DROID_STATE, episode="drop_still",
         notes="OpenVLA also swaps the two exterior cameras at random (augmentation, not applied here)"),
    _row("fmb_dataset", 10, "image_side_1 image_side_2 image_wrist_1",
         "image_side_1_depth image_side_2_depth image_wrist_1_depth", "pos_euler", "fmb_dataset_transform",
         "action", "observation/eef_pose, observation/state_gripper_pose", hz_src=f"{LEROBOT} ('fmb')"),
    _row("dobbe", 3.75, "wrist_image - -", "- - -", "pos_euler", "dobbe_dataset_transform", "action",
         "observation/state"),
    _row("roboset", 5, "image_left image_right image_wrist", "- - -", "joint", "roboset_dataset_transform",
         "action[:7], action[-1:]|clip(0,1)|invert", "observation/state", act_enc="joint_pos",
         hz_src=f"{LEROBOT} ('robo_set')"),
    _row("rh20t", None, "image_front image_side_right image_wrist", "- - -", "pos_euler",
         "rh20t_dataset_transform", "action/tcp_base, action/gripper",
         "observation/tcp_base, observation/gripper_width"),
    *[_row(f"tdroid_{task}", *_TDROID, hz_src=_TDROID_HZ) for task in (
        "carrot_in_bowl", "pour_corn_in_pot", "flip_pot_upright", "move_object_onto_plate",
        "knock_object_over", "cover_object_with_towel")],
    _row("droid_wipe", None, "exterior_image_2_left - wrist_image_left", "- - -", "pos_euler",
         "droid_finetuning_transform (utils/droid_utils.py)", _DROID_ACT, _DROID_STATE),
    *[_row(f"libero_{suite}_no_noops", *_LIBERO, hz_src=LIBERO) for suite in ("spatial", "object", "goal", "10")],
]
# fmt: on
DATASETS: dict[str, OXEDataset] = {r.name: r for r in _ROWS}

# ---------------------------------------------------------------------------------------------------------
# OpenVLA's named mixtures (mixtures.py OXE_NAMED_MIXTURES), weights exactly as published
# ---------------------------------------------------------------------------------------------------------

_RTX = [("fractal20220817_data", 0.54087122203), ("kuka", 0.8341046294), ("bridge_orig", 1.0)]
_SOUP_COMMON = [
    ("taco_play", 2.0), ("jaco_play", 1.0), ("berkeley_cable_routing", 1.0), ("roboturk", 2.0),
    ("viola", 2.0), ("berkeley_autolab_ur5", 2.0), ("toto", 1.0),
]  # fmt: skip
_SOUP_TAIL = [
    ("stanford_hydra_dataset" + _X, 2.0), ("austin_buds_dataset" + _X, 1.0),
    ("nyu_franka_play_dataset" + _X, 3.0), ("furniture_bench_dataset" + _X, 0.1),
    ("ucsd_kitchen_dataset" + _X, 2.0), ("austin_sailor_dataset" + _X, 1.0),
    ("austin_sirius_dataset" + _X, 1.0), ("dlr_edan_shared_control" + _X, 1.0),
    ("iamlab_cmu_pickup_insert" + _X, 1.0), ("utaustin_mutex", 1.0), ("berkeley_fanuc_manipulation", 2.0),
    ("cmu_stretch", 1.0),
]  # fmt: skip
_RTX_TAIL = [
    ("taco_play", 2.0), ("jaco_play", 2.0), ("berkeley_cable_routing", 3.0), ("roboturk", 1.0),
    ("viola", 2.0), ("berkeley_autolab_ur5", 1.0), ("toto", 1.0),
]  # fmt: skip
MIXTURES: dict[str, list[tuple[str, float]]] = {
    "bridge": [("bridge_orig", 1.0)],
    "bridge_rt_1": [("bridge_orig", 1.0), ("fractal20220817_data", 1.0)],
    "rtx": _RTX + _RTX_TAIL,
    # repeats taco_play, cable routing, viola and toto: OpenVLA keeps the first weight
    "rtx_franka": _RTX + _RTX_TAIL + [
        ("taco_play", 1.0), ("berkeley_cable_routing", 1.0), ("viola", 1.0), ("toto", 1.0),
        ("stanford_hydra_dataset" + _X, 1.0), ("austin_buds_dataset" + _X, 3.0),
        ("nyu_franka_play_dataset" + _X, 3.0), ("maniskill_dataset" + _X, 0.1),
        ("furniture_bench_dataset" + _X, 0.1), ("cmu_franka_exploration_dataset" + _X, 5.0),
        ("austin_sailor_dataset" + _X, 1.0), ("austin_sirius_dataset" + _X, 1.0), ("berkeley_rpt" + _X, 1.0),
        ("kaist_nonprehensile" + _X, 3.0), ("stanford_robocook" + _X, 1.0),
        ("iamlab_cmu_pickup_insert" + _X, 1.0), ("utaustin_mutex", 1.0), ("cmu_play_fusion", 1.0),
    ],  # fmt: skip
    "oxe_magic_soup": _RTX + _SOUP_COMMON + [("language_table", 0.1)] + _SOUP_TAIL,
    "oxe_magic_soup_plus": _RTX + _SOUP_COMMON + [("language_table", 0.1)] + _SOUP_TAIL
    + [("bc_z", 0.2), ("fmb_dataset", 1.0), ("dobbe", 0.2), ("droid", 0.06)],
    # OpenVLA-7B's mixture: RT-1 at full weight, without language_table and droid
    "oxe_magic_soup_plus_minus": [("fractal20220817_data", 1.0)] + _RTX[1:] + _SOUP_COMMON + _SOUP_TAIL
    + [("bc_z", 0.2), ("fmb_dataset", 1.0), ("dobbe", 0.2)],
    **{n: [(n, 1.0)] for n in (
        "tdroid_carrot_in_bowl", "tdroid_pour_corn_in_pot", "tdroid_flip_pot_upright",
        "tdroid_move_object_onto_plate", "tdroid_knock_object_over", "tdroid_cover_object_with_towel",
        "droid_wipe", "libero_spatial_no_noops", "libero_object_no_noops", "libero_goal_no_noops",
        "libero_10_no_noops")},
}  # fmt: skip
