"""Open X-Embodiment standardisation as data: OpenVLA's per-dataset table, its transforms, its mixtures.

OpenVLA trains on Open X-Embodiment (OXE) datasets in their RLDS form, each brought to one 7-D end-effector
action (dx, dy, dz, droll, dpitch, dyaw, gripper; gripper 1 = open, 0 = closed) by a per-dataset Python
function. Here those functions are rows of one table (`DATASETS`): for each dataset, its cameras by role,
its state and action encodings, its control rate, and the standardisation written as a few declarative
ops from a small vocabulary, so a row can be read, printed, tested and compared without running anything.
`standardize` applies a row to one episode; `MIXTURES` holds OpenVLA's named mixtures and their weights.

Sources (facts only; the structures and words are ours):

- openvla/openvla @ c8f03f4, prismatic/vla/datasets/rlds/oxe/: configs.py (camera, depth and state keys,
  StateEncoding / ActionEncoding), transforms.py (one function per dataset, cited per row), mixtures.py
  (OXE_NAMED_MIXTURES), materialize.py (duplicates in a mixture are skipped, only EEF_POS / EEF_R6 datasets
  are loaded, all but the gripper normalised), utils/data_utils.py (the gripper rules), utils/droid_utils.py.
  prismatic/conf/vla.py: OpenVLA-7B ("prism-dinosiglip-224px+mx-oxe-magic-soup-plus") trained on
  "oxe_magic_soup_plus_minus".
- Control rates: huggingface/lerobot @ 66a3862, lerobot/common/datasets/push_dataset_to_hub/openx/configs.yaml
  (`fps`, per OXE dataset); T-DROID from the comments in OpenVLA's configs.py; LIBERO from the default
  `control_freq` of Lifelong-Robot-Learning/LIBERO libero/libero/envs/env_wrapper.py. None where no source
  gives one (stanford_mask_vit, rh20t, droid_wipe).

Design choices:

- A standardisation is an action spec and a state spec, each a comma-separated list of parts concatenated
  along the last axis, plus episode ops. A part is a step feature (flat RLDS key without ``steps/``),
  optionally sliced on its last axis, then ops in order: ``action/gripper_closedness_action|rel2abs``,
  ``action[-1:]|clip(0,1)|invert``, or a constant run ``zeros(3)`` / ``ones(1)``. Part ops (`PART_OPS`):
  ``clip(lo,hi)``, ``invert`` (1 - g), ``binarize`` (OpenVLA's continuous-to-0/1 gripper rule),
  ``rel2abs`` (relative gripper commands to an absolute state), ``quat2euler`` (x, y, z, w quaternion to
  roll, pitch, yaw as tensorflow-graphics computes it), ``unzip_f32`` (zlib-compressed float32 bytes, kuka's
  state; first, and before the slice). Episode ops (`EPISODE_OPS`): ``skip_first`` (Bridge's first step
  has an all-zero action), ``relabel(KEY)`` (Bridge: the six movement dims become the next step's state
  minus this one's; the last step is dropped), ``drop_still`` (DROID: steps with no movement are dropped).
- The state follows OpenVLA's layout: its parts in configs.py order, a one-dim zero for each missing key
  (`zeros(1)`), so most datasets give 8 dims. OpenVLA-7B does not read the state; it is kept for policies
  that do and so that datasets of a mixture agree on it.
- The gripper convention of a row (`OXEDataset.gripper`) is read off its ops rather than stored twice:
  ``rel2abs`` means relative commands, ``binarize`` a continuous signal with 1 = open, ``invert`` 1 = closed,
  a constant no gripper action, otherwise 1 = open as stored.
- `standardize` returns OpenVLA's exact selection of steps and their indices, which training on RLDS
  serves (`vlaforge.data.rlds_dataset`); with ``keep_all`` every step is kept: ``skip_first`` and
  ``drop_still`` drop nothing and ``relabel`` gives the last step zero movement (conversions keep all).
- Not here: normalisation statistics. Each dataset's are computed from its own data and kept apart under its
  name (`vlaforge.data.mixture`), which becomes the checkpoint's unnorm_key, as in OpenVLA's
  dataset_statistics.json. Nor DROID's random swap of its two exterior cameras (a training augmentation).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vlaforge.errors import InputError

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

# ---------------------------------------------------------------------------------------------------------
# The op vocabulary
# ---------------------------------------------------------------------------------------------------------


def clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Values clipped to [lo, hi]."""
    return np.clip(x, lo, hi)


def invert(x: np.ndarray) -> np.ndarray:
    """1 - x: a gripper stored as 1 = closed becomes 1 = open."""
    return 1.0 - x


def binarize(x: np.ndarray, lo: float = 0.05, hi: float = 0.95) -> np.ndarray:
    """OpenVLA's binarisation of a continuous gripper (data_utils.py), per column of (T, n).

    A value above `hi` is open (1), below `lo` closed (0); a value in between takes the state of the next
    step that is open or closed. Values in between that reach the episode's end keep the last raw value.
    """
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    t = np.arange(len(x))
    for c in range(x.shape[1] if len(x) else 0):
        col = x[:, c]
        decided = (col > hi) | (col < lo)
        nxt = np.minimum.accumulate(np.where(decided, t, len(col))[::-1])[::-1]  # next decided step, or T
        settled = (col[np.minimum(nxt, len(col) - 1)] > hi).astype(np.float32)
        out[:, c] = np.where(nxt < len(col), settled, col[-1])
    return out


def rel2abs(x: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Relative gripper commands (+1 close, -1 open, |x| <= threshold hold) to 1 = open / 0 = closed.

    Each step holds the last command given; before the first command the gripper is taken to be in the
    opposite state (it is assumed the first command changes something), and open when there is none.
    """
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    t = np.arange(len(x))
    for c in range(x.shape[1]):
        cmd = np.where(x[:, c] < -threshold, 1, np.where(x[:, c] > threshold, -1, 0))  # +1 open, -1 close
        given = np.flatnonzero(cmd)
        start = -cmd[given[0]] if len(given) else 1
        last = np.maximum.accumulate(np.where(cmd != 0, t, -1))
        state = np.where(last >= 0, cmd[np.maximum(last, 0)], start)
        out[:, c] = state / 2.0 + 0.5
    return out


def quat2euler(q: np.ndarray) -> np.ndarray:
    """(T, 4) quaternions (x, y, z, w) to (T, 3) roll, pitch, yaw, as tensorflow_graphics computes them.

    Angles about x, y, z with R = Rz(yaw) Ry(pitch) Rx(roll); at pitch = +-pi/2 (gimbal lock) yaw is 0.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 4:
        raise InputError(f"quat2euler needs 4 values (x, y, z, w) per step; got {q.shape[-1]}")
    x, y, z, w = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    c = lambda v: np.clip(v, -1.0, 1.0)  # noqa: E731
    r00, r10 = c(1 - 2 * (y * y + z * z)), c(2 * (x * y + w * z))
    r20, r21, r22 = c(2 * (x * z - w * y)), c(2 * (y * z + w * x)), c(1 - 2 * (x * x + y * y))
    r01, r02 = c(2 * (x * y - w * z)), c(2 * (x * z + w * y))
    pitch = -np.arcsin(r20)
    general = np.stack([np.arctan2(r21, r22), pitch, np.arctan2(r10, r00)], -1)
    s = np.where(r20 >= 0, 1.0, -1.0)
    gimbal = np.stack([np.arctan2(-s * r01, -s * r02), -s * np.pi / 2, np.zeros_like(x)], -1)
    return np.where((np.abs(np.abs(r20) - 1.0) < 1e-6)[:, None], gimbal, general).astype(np.float32)


def unzip_f32(x: Any) -> np.ndarray:
    """(T, n) float32 from T zlib-compressed byte strings of float32 values (kuka's state)."""
    rows = [np.frombuffer(zlib.decompress(bytes(b)), dtype=np.float32) for b in x]
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


# name -> (function, number of float arguments); the function takes (T, n) and returns (T, m)
PART_OPS: dict[str, tuple[Callable[..., np.ndarray], tuple[int, ...]]] = {
    "clip": (clip, (2,)),
    "invert": (invert, (0,)),
    "binarize": (binarize, (0, 2)),
    "rel2abs": (rel2abs, (0, 1)),
    "quat2euler": (quat2euler, (0,)),
    "unzip_f32": (unzip_f32, (0,)),
}
EPISODE_OPS = {"skip_first": 0, "relabel": 1, "drop_still": 0}  # name -> number of key arguments


@dataclasses.dataclass(frozen=True)
class Op:
    """One op: its name and arguments (numbers for part ops, a feature key for ``relabel``)."""

    name: str
    args: tuple[Any, ...] = ()

    def __str__(self) -> str:
        return self.name + (f"({','.join(f'{a:g}' if isinstance(a, float) else a for a in self.args)})"
                            if self.args else "")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Part:
    """A run of output dims: a step feature (sliced on its last axis) or a constant, then ops in order.

    Attributes:
        key: the step feature without ``steps/`` ("action/world_vector"); None for a constant run.
        index: a slice (start, stop) of the last axis, (i,) for one element, or None for all of it.
        width: a constant run's number of dims.
        value: a constant run's value.
        ops: part ops applied in order.
    """

    key: str | None
    index: tuple[int | None, ...] | None = None
    width: int = 0
    value: float = 0.0
    ops: tuple[Op, ...] = ()

    def __str__(self) -> str:
        if self.key is None:
            return f"{'ones' if self.value == 1 else 'zeros'}({self.width})"
        idx = ""
        if self.index is not None:
            idx = f"[{self.index[0]}]" if len(self.index) == 1 else \
                "[" + ":".join("" if i is None else str(i) for i in self.index) + "]"  # fmt: skip
        return self.key + idx + "".join(f"|{op}" for op in self.ops)


_PART_RE = re.compile(r"^(?P<key>[A-Za-z0-9_/]+)(?:\[(?P<idx>-?\d*(?::-?\d*)?)\])?(?P<ops>(?:\|[^|]+)*)$")
_CONST_RE = re.compile(r"^(?P<what>zeros|ones)\((?P<n>\d+)\)$")
_OP_RE = re.compile(r"^(?P<name>[a-z0-9_]+)(?:\((?P<args>[^()]*)\))?$")


def _parse_op(text: str, vocabulary: Mapping[str, Any], where: str) -> Op:
    m = _OP_RE.match(text.strip())
    if not m or m["name"] not in vocabulary:
        close = difflib.get_close_matches(text.strip(), list(vocabulary), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"{where}: unknown op {text.strip()!r}{hint} (ops: {', '.join(vocabulary)})")
    raw = [a.strip() for a in m["args"].split(",")] if m["args"] else []
    if vocabulary is EPISODE_OPS:
        if len(raw) != EPISODE_OPS[m["name"]]:
            raise InputError(f"{where}: {m['name']} takes {EPISODE_OPS[m['name']]} feature key(s)")
        return Op(m["name"], tuple(raw))
    if len(raw) not in PART_OPS[m["name"]][1]:
        raise InputError(f"{where}: {m['name']} takes {' or '.join(map(str, PART_OPS[m['name']][1]))} args")
    try:
        return Op(m["name"], tuple(float(a) for a in raw))
    except ValueError:
        raise InputError(f"{where}: {text.strip()!r} has a non-numeric argument") from None


def parse_parts(spec: str, where: str = "spec") -> tuple[Part, ...]:
    """Parses an action or state spec ("action[:6], action[-1:]|clip(0,1)|invert") into parts.

    Raises:
        InputError: a part or op that does not parse (naming `where` and the vocabulary).
    """
    parts = []
    for text in re.split(r",\s*(?![^()]*\))", spec.strip()):
        if m := _CONST_RE.match(text):
            parts.append(Part(None, width=int(m["n"]), value=1.0 if m["what"] == "ones" else 0.0))
            continue
        m = _PART_RE.match(text)
        if not m:
            raise InputError(f"{where}: cannot parse {text!r}; a part is KEY[a:b]|op|op, zeros(n) or ones(n)")
        index = None
        if m["idx"] is not None:
            bits = m["idx"].split(":")
            index = tuple(int(b) if b else None for b in bits)
            if len(bits) == 1 and index[0] is None:
                raise InputError(f"{where}: empty index in {text!r}")
        ops = tuple(_parse_op(o, PART_OPS, where) for o in m["ops"].split("|")[1:])
        if any(op.name == "unzip_f32" for op in ops[1:]):
            raise InputError(f"{where}: unzip_f32 reads the stored bytes, so it comes first ({text!r})")
        parts.append(Part(m["key"], index, ops=ops))
    return tuple(parts)


# ---------------------------------------------------------------------------------------------------------
# One dataset
# ---------------------------------------------------------------------------------------------------------


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
        episode=tuple(_parse_op(o, EPISODE_OPS, where) for o in episode.split(";") if o.strip()),
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

# ---------------------------------------------------------------------------------------------------------
# Look-ups
# ---------------------------------------------------------------------------------------------------------


def _unknown(kind: str, name: str, known: list[str]) -> InputError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"known: {', '.join(sorted(known))}"
    return InputError(f"unknown Open X-Embodiment {kind} {name!r}; {hint}")


def find_dataset(name: str, required: bool = True) -> OXEDataset | None:
    """The table row for `name`; None when there is none and not `required`.

    Raises:
        InputError: `required` and no row is named `name` (with the closest names).
    """
    row = DATASETS.get(name)
    if row is None and required:
        raise _unknown("dataset", name, list(DATASETS))
    return row


def get_dataset(name: str) -> OXEDataset:
    """The table row for `name` (raises `InputError` with a "did you mean" for an unknown name)."""
    row = find_dataset(name, required=True)
    assert row is not None
    return row


def get_mixture(name: str, as_trained: bool = True) -> list[tuple[str, float]]:
    """OpenVLA's named mixture `name` as (dataset, weight) pairs.

    Args:
        as_trained: as OpenVLA's materialize.py loads it: a repeated dataset keeps its first weight, and
            datasets without an end-effector action (berkeley_rpt in "rtx_franka") are left out. False: the
            list exactly as published (`MIXTURES`).

    Raises:
        InputError: an unknown mixture name (with the closest names).
    """
    if name not in MIXTURES:
        raise _unknown("mixture", name, list(MIXTURES))
    if not as_trained:
        return list(MIXTURES[name])
    out, seen = [], set()
    for ds, w in MIXTURES[name]:
        if ds not in seen and DATASETS[ds].action_encoding in ("eef_pos", "eef_r6"):
            out.append((ds, w))
        seen.add(ds)
    return out


# ---------------------------------------------------------------------------------------------------------
# Applying a row
# ---------------------------------------------------------------------------------------------------------


def _feature(row: OXEDataset, steps: Mapping[str, Any], key: str) -> Any:
    if key not in steps:
        raise InputError(
            f"Open X-Embodiment dataset {row.name!r}: the episode has no step feature {key!r}, which its "
            f"standardisation reads; it has {sorted(steps)}. Is this {row.name}'s RLDS release, or another "
            "dataset under that name? (name the right row with oxe=NAME, or none with oxe='')"
        )
    return steps[key]


def _part(row: OXEDataset, part: Part, steps: Mapping[str, Any], keep: np.ndarray) -> np.ndarray:
    """(T', n) float32 of one part over the steps `keep`."""
    if part.key is None:
        return np.full((len(keep), part.width), part.value, np.float32)
    raw = _feature(row, steps, part.key)
    if part.ops and part.ops[0].name == "unzip_f32":
        x, ops = unzip_f32([raw[i] for i in keep]), part.ops[1:]
    else:
        x, ops = np.asarray(raw)[keep], part.ops
    x = np.asarray(x).reshape(len(keep), -1)
    if part.index is not None:
        i = part.index
        x = x[:, i[0] : (i[0] + 1 or None)] if len(i) == 1 else x[:, i[0] : i[1]]
    x = x.astype(np.float32)
    for op in ops:
        x = PART_OPS[op.name][0](x, *op.args)
    return x


def _episode_length(row: OXEDataset, steps: Mapping[str, Any]) -> int:
    key = next(p.key for p in row.action if p.key)
    return len(_feature(row, steps, key))


def _texts(value: Any) -> list[str]:
    """Instruction strings from str/bytes per step, or zero-padded unicode code points (T, L)."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        return [
            "".join(chr(c) for c in row[: (list(row) + [0]).index(0)])
            for row in value.reshape(len(value), -1)
        ]
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value]


# DROID's action quantiles, dims x, y, z, roll, pitch, yaw: OpenVLA's still-step filter normalises with them
# (oxe/utils/droid_utils.py `zero_action_filter`, DROID_Q01 / DROID_Q99).
DROID_Q01 = (-0.7776297926902771, -0.5803514122962952, -0.5795090794563293,
             -0.6464047729969025, -0.7041108310222626, -0.8895104378461838)  # fmt: skip
DROID_Q99 = (0.7597932070493698, 0.5726242214441299, 0.7351000607013702,
             0.6705610305070877, 0.6464948207139969, 0.8897542208433151)  # fmt: skip
STILL_TOLERANCE = 1e-5  # in normalised units (droid_utils.py)


def still_steps(
    movement: np.ndarray, q01: Sequence[float] = DROID_Q01, q99: Sequence[float] = DROID_Q99
) -> np.ndarray:
    """bool (T,): steps whose movement (T, 6) OpenVLA's `zero_action_filter` drops.

    A step is still when every dim, normalised as OpenVLA normalises actions (`clip(2 (a - q01) / (q99 -
    q01 + 1e-8) - 1, -1, 1)`, in float32 as TensorFlow computes it), lies within `STILL_TOLERANCE` of the
    normalised zero: with DROID's quantiles, |a| <= about 5.8e-6 .. 8.9e-6 raw, per dim (docs/oxe.md).
    """
    a = np.asarray(movement, dtype=np.float32)
    lo, hi = np.asarray(q01, dtype=np.float32), np.asarray(q99, dtype=np.float32)
    scale = hi - lo + np.float32(1e-8)
    norm = np.clip(np.float32(2) * (a - lo) / scale - np.float32(1), -1, 1)
    zero = np.float32(2) * (np.float32(0) - lo) / scale - np.float32(1)
    return np.all(np.abs(norm - zero) <= np.float32(STILL_TOLERANCE), axis=-1)


def standardize(name: str, steps: Mapping[str, Any], keep_all: bool = False) -> dict[str, Any]:
    """Applies dataset `name`'s standardisation to one episode.

    Args:
        name: a row of `DATASETS`.
        steps: the episode's step features by flat RLDS key without ``steps/`` ("action",
            "action/world_vector", "observation/state", "language_instruction"): numeric arrays (T, ...), and
            lists or arrays of T strings / bytes.
        keep_all: keep every step (see the module docstring); False selects steps as OpenVLA does.

    Returns:
        {"action": float32 (T', D) (D = 7 for an end-effector row), "state": float32 (T', S) or None,
        "index": int64 (T',) the episode steps kept, in order, "instruction": list of T' str or None (no such
        feature), "images": {role: key} and "depth": {role: key} for the roles the dataset has}.

    Raises:
        InputError: an unknown name; a feature the row reads missing (naming the dataset and the key, listing
            the keys present); an action of the wrong width.
    """
    row = get_dataset(name)
    T = _episode_length(row, steps)
    keep = np.arange(T, dtype=np.int64)
    for op in row.episode:
        if op.name == "skip_first" and not keep_all:
            keep = keep[1:]
    action = np.concatenate([_part(row, p, steps, keep) for p in row.action], axis=1)
    state = np.concatenate([_part(row, p, steps, keep) for p in row.state], axis=1) if row.state else None
    for op in row.episode:
        if op.name == "relabel":  # movement = next state - this state; the last step has no next state
            s = np.asarray(_feature(row, steps, op.args[0]), np.float32).reshape(T, -1)[keep, :6]
            action[:-1, :6] = s[1:] - s[:-1]
            action[-1:, :6] = 0.0
            sel = np.arange(len(keep)) if keep_all else np.arange(len(keep) - 1)
        elif op.name == "drop_still" and not keep_all:
            sel = np.flatnonzero(~still_steps(action[:, :6]))
        else:
            continue
        keep, action = keep[sel], action[sel]
        state = state[sel] if state is not None else None
    if row.action_dim is not None and action.shape[1] != row.action_dim:
        widths = {p.key: np.asarray(steps[p.key]).reshape(T, -1).shape[1] for p in row.action if p.key}
        raise InputError(
            f"Open X-Embodiment dataset {row.name!r}: its standardisation made a {action.shape[1]}-dim "
            f"action, not {row.action_dim} (feature widths {widths}; spec {', '.join(map(str, row.action))})"
        )
    text = steps.get(row.instruction)
    texts = None if text is None else _texts(text)
    return {
        "action": np.ascontiguousarray(action, dtype=np.float32),
        "state": None if state is None else np.ascontiguousarray(state, dtype=np.float32),
        "index": keep,
        "instruction": None if texts is None else [texts[i] for i in keep],
        "images": {r: f"observation/{k}" for r, k in row.images.items() if k},
        "depth": {r: f"observation/{k}" for r, k in row.depth.items() if k},
    }


def standardize_record(
    name: str, values: Mapping[str, Any], source: str = "", keep_all: bool = False
) -> dict[str, Any]:
    """`standardize` of one decoded RLDS episode (what `vlaforge.data.rlds_dataset` calls).

    Args:
        values: `vlaforge.data.rlds.decode_episode`'s, keyed by the full flat keys ("steps/action",
            "episode_metadata/file_path").
        source: names the record in errors.
        keep_all: keep every step; False selects the steps OpenVLA trains on.
    """
    steps = {k[len("steps/") :]: v for k, v in values.items() if k.startswith("steps/")}
    try:
        return standardize(name, steps, keep_all=keep_all)
    except InputError as e:
        raise InputError(f"{source}: {e}" if source else str(e)) from None


def standardize_columns(
    name: str, values: Mapping[str, Any], source: str = ""
) -> tuple[np.ndarray, np.ndarray | None]:
    """(action float32 (T, D), state float32 (T, S) or None) of one decoded RLDS episode, every step kept."""
    out = standardize_record(name, values, source, keep_all=True)
    return out["action"], out["state"]


__all__ = [
    "ACTION_NAMES", "DATASETS", "EPISODE_OPS", "GRIPPERS", "MIXTURES", "PART_OPS", "OXEDataset", "Op", "Part",
    "binarize", "clip", "find_dataset", "get_dataset", "get_mixture", "invert", "parse_parts", "quat2euler",
    "rel2abs", "standardize", "standardize_columns", "standardize_record", "still_steps", "unzip_f32",
]  # fmt: skip
