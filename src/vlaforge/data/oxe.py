"""Open X-Embodiment standardisation: look up a dataset's row, apply it to an episode, select OpenVLA's steps.

OpenVLA trains on Open X-Embodiment (OXE) datasets in their RLDS form, each brought to one 7-D end-effector
action (dx, dy, dz, droll, dpitch, dyaw, gripper; gripper 1 = open) by a per-dataset function. Here those
functions are rows of a table (`vlaforge.data.oxe_table`) written in a small op vocabulary
(`vlaforge.data.oxe_ops`); this module applies a row to one episode (`standardize`) and selects the steps
OpenVLA trains on: Bridge without its first and last step, DROID without its still steps (openvla/openvla
@ c8f03f4: oxe/transforms.py, utils/data_utils.py relabel_bridge_actions, oxe/utils/droid_utils.py
zero_action_filter). The rules, their derivations and what is left out: docs/oxe.md.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlaforge.data.oxe_ops import (
    EPISODE_OPS,
    PART_OPS,
    Op,
    Part,
    binarize,
    clip,
    invert,
    parse_parts,
    quat2euler,
    rel2abs,
    unzip_f32,
)
from vlaforge.data.oxe_table import (
    ACTION_NAMES,
    DATASETS,
    EEF_NORMALIZE_MASK,
    GRIPPERS,
    MIXTURES,
    ROLES,
    OXEDataset,
)
from vlaforge.errors import InputError

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
    "ACTION_NAMES", "DATASETS", "EEF_NORMALIZE_MASK", "EPISODE_OPS", "GRIPPERS", "MIXTURES", "PART_OPS", "ROLES",
    "OXEDataset", "Op", "Part", "binarize", "clip", "find_dataset", "get_dataset", "get_mixture", "invert",
    "parse_parts", "quat2euler", "rel2abs", "standardize", "standardize_columns", "standardize_record",
    "still_steps", "unzip_f32",
]  # fmt: skip
