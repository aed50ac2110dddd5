"""Wire observations -> a checked `Observation` for one checkpoint.

Robots name their inputs in several ways. An `ObservationSpec`, built from the checkpoint's embodiment,
maps the keys of a decoded message onto the checkpoint's cameras, state and instruction (nested maps are
flattened with "/", so `{"images": {"corner2": ...}}` is the key `images/corner2`):

| what            | keys accepted by default                                                          |
|-----------------|-----------------------------------------------------------------------------------|
| camera `c`      | `images/c`, `observation/images/c`, `observation.images.c` (LeRobot), `observation/c` |
| first camera    | also `image` (OpenVLA's `/act`), `observation/image` (openpi's LIBERO/DROID examples) |
| second camera   | also `wrist_image`, `observation/wrist_image`                                      |
| state           | `state`, `observation/state`, `observation.state`, `proprio`                       |
| instruction     | `instruction`, `prompt` (openpi), `task` (LeRobot), `language_instruction` (RLDS)  |

An explicit camera map (`vlaforge serve --camera-map observation/image=corner2,...`) replaces the camera
aliases with exactly the keys it names. Keys that map to nothing are ignored (robots send extra fields), but
a missing camera's error lists what the message held. Two keys naming one camera are refused.

Every observation is checked before it reaches the model: each camera a uint8 (H, W, 3) image of the
checkpoint's size (or any size up to the wire limits with `resize_images`; the policy resizes), the state
a finite vector of the checkpoint's state_dim, the instruction a non-empty string. Errors say which key,
what it held and what to send instead. Plain numpy: no torch here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlaforge.errors import InputError
from vlaforge.types import Embodiment, Observation

STATE_KEYS = ("state", "observation/state", "observation.state", "proprio")
INSTRUCTION_KEYS = ("instruction", "prompt", "task", "language_instruction")
MAX_INSTRUCTION_CHARS = 2000


def flatten(msg: Mapping[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """{"a": {"b": x}} -> {"a/b": x} (keys are strings: the decoders made sure)."""
    out: dict[str, Any] = {}
    for k, v in msg.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping) and depth < 8:
            out.update(flatten(v, key, depth + 1))
        else:
            out[key] = v
    return out


def default_camera_keys(cameras: list[str]) -> dict[str, str]:
    """Wire key -> camera for the aliases in the module docstring."""
    keys: dict[str, str] = {}
    for i, c in enumerate(cameras):
        for key in (f"images/{c}", f"observation/images/{c}", f"observation.images.{c}", f"observation/{c}"):
            keys.setdefault(key, c)
        if i == 0:
            keys.setdefault("image", c)
            keys.setdefault("observation/image", c)
        if i == 1:
            keys.setdefault("wrist_image", c)
            keys.setdefault("observation/wrist_image", c)
    return keys


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return type(value).__name__


@dataclass
class ObservationSpec:
    """What one checkpoint reads, and how wire keys map onto it.

    Attributes:
        cameras: the checkpoint's cameras, in order.
        image_size: the square side every camera image must have (unless `resize_images`).
        state_dim: the checkpoint's state size (0: none).
        needs_state: whether a state must be sent (the policy reads it).
        camera_keys: wire key -> camera.
        resize_images: accept any image size (the policy resizes to its own; aspect ratios are not kept).
        max_image_side: the largest side accepted with `resize_images`.
    """

    cameras: list[str]
    image_size: int
    state_dim: int
    needs_state: bool
    camera_keys: dict[str, str] = field(default_factory=dict)
    resize_images: bool = False
    max_image_side: int = 8192

    @classmethod
    def from_embodiment(
        cls,
        embodiment: Embodiment,
        *,
        needs_state: bool | None = None,
        camera_map: Mapping[str, str] | None = None,
        resize_images: bool = False,
        max_image_side: int = 8192,
    ) -> ObservationSpec:
        """The spec of a checkpoint.

        Args:
            embodiment: the checkpoint's embodiment.
            needs_state: whether the policy reads a state (default: when the embodiment has one).
            camera_map: explicit wire key -> camera; replaces the default camera aliases.
            resize_images: accept images of any size.
            max_image_side: the largest image side accepted with `resize_images`.

        Raises:
            InputError: a camera map naming a camera the checkpoint does not have, or leaving one out.
        """
        cameras = list(embodiment.camera_names)
        if camera_map:
            unknown = sorted({c for c in camera_map.values() if c not in cameras})
            if unknown:
                raise InputError(
                    f"--camera-map names camera(s) {unknown}; this checkpoint's cameras are {cameras}"
                )
            uncovered = [c for c in cameras if c not in camera_map.values()]
            if uncovered:
                raise InputError(
                    f"--camera-map gives no key for camera(s) {uncovered}; map a wire key to each of {cameras}"
                )
            keys = dict(camera_map)
        else:
            keys = default_camera_keys(cameras)
        return cls(
            cameras=cameras,
            image_size=int(embodiment.image_size),
            state_dim=int(embodiment.state_dim),
            needs_state=bool(embodiment.state_dim) if needs_state is None else bool(needs_state),
            camera_keys=keys,
            resize_images=resize_images,
            max_image_side=max_image_side,
        )

    def describe(self) -> dict[str, Any]:
        """The accepted keys, for the server's metadata (clients use it to name their inputs)."""
        per_camera = {c: [k for k, v in self.camera_keys.items() if v == c] for c in self.cameras}
        return {
            "cameras": per_camera,
            "state": list(STATE_KEYS) if self.state_dim else [],
            "instruction": list(INSTRUCTION_KEYS),
            "image": {"dtype": "uint8", "shape": ["H", "W", 3]}
            | ({"any_size": True} if self.resize_images else {"size": self.image_size}),
        }

    # ------------------------------------------------------------------ parsing
    def parse(self, msg: Any, extra_keys: tuple[str, ...] = ()) -> Observation:
        """A decoded message -> a checked Observation (images (H, W, 3) uint8, state float32 (S,) or None).

        Args:
            msg: the decoded message (a map).
            extra_keys: keys the caller handles itself (e.g. `unnorm_key`), left out of error listings.

        Raises:
            InputError: naming the key, what it held, and what to send.
        """
        if not isinstance(msg, Mapping):
            raise InputError(f"an observation must be a map of keys to values; got {_describe(msg)}")
        flat = flatten(msg)
        images: dict[str, np.ndarray] = {}
        source: dict[str, str] = {}
        for key, value in flat.items():
            camera = self.camera_keys.get(key)
            if camera is None:
                continue
            if camera in images:
                raise InputError(
                    f"keys {source[camera]!r} and {key!r} both name camera {camera!r}; send one of them"
                )
            images[camera] = self._image(key, value)
            source[camera] = key
        missing = [c for c in self.cameras if c not in images]
        if missing:
            want = {c: [k for k, v in self.camera_keys.items() if v == c][:3] for c in missing}
            got = sorted(k for k in flat if k not in extra_keys)[:12]
            raise InputError(
                f"the observation has no image for camera(s) {missing}; send it under one of {want} "
                f"(the message has keys {got})"
            )
        state = self._state(flat)
        instruction = self._instruction(flat)
        return Observation(images=images, state=state, instruction=instruction)

    def _image(self, key: str, value: Any) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise InputError(f"image {key!r} must be a uint8 array (H, W, 3); got {_describe(value)}")
        if value.dtype != np.uint8:
            raise InputError(f"image {key!r} must be uint8 (H, W, 3); got {_describe(value)}")
        if value.ndim == 3 and value.shape[0] == 3 and value.shape[-1] != 3:
            raise InputError(
                f"image {key!r} has shape {list(value.shape)}, channels first; send (H, W, 3) "
                f"(e.g. np.transpose(img, (1, 2, 0)))"
            )
        if value.ndim != 3 or value.shape[-1] != 3:
            raise InputError(f"image {key!r} must be one RGB image (H, W, 3); got {_describe(value)}")
        h, w = value.shape[:2]
        if self.resize_images:
            if not (1 <= h <= self.max_image_side and 1 <= w <= self.max_image_side):
                raise InputError(f"image {key!r} is {h}x{w}; sides must be in [1, {self.max_image_side}]")
        elif (h, w) != (self.image_size, self.image_size):
            raise InputError(
                f"image {key!r} is {h}x{w}; this checkpoint reads {self.image_size}x{self.image_size} "
                f"images (resize on the robot, or start the server with --resize-images)"
            )
        return value

    def _state(self, flat: Mapping[str, Any]) -> np.ndarray | None:
        present = [k for k in STATE_KEYS if k in flat]
        if len(present) > 1:
            raise InputError(f"keys {present} all name the state; send one of them")
        if not present or not self.state_dim:
            if self.needs_state:
                raise InputError(
                    f"this checkpoint needs a state of {self.state_dim} values; send it under one of "
                    f"{list(STATE_KEYS)}"
                )
            return None
        key, value = present[0], flat[present[0]]
        if isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            value = np.asarray(value, dtype=np.float64)
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf":
            raise InputError(
                f"state {key!r} must be a numeric array ({self.state_dim},); got {_describe(value)}"
            )
        if value.shape != (self.state_dim,):
            raise InputError(
                f"state {key!r} has shape {list(value.shape)}; this checkpoint expects ({self.state_dim},)"
            )
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf, refused below
            state = value.astype(np.float32)
        if not np.isfinite(state).all():
            bad = np.flatnonzero(~np.isfinite(state)).tolist()
            raise InputError(
                f"state {key!r} has non-finite values at {bad[:8]} (after conversion to float32); send "
                f"finite numbers"
            )
        return state

    def _instruction(self, flat: Mapping[str, Any]) -> str:
        present = [k for k in INSTRUCTION_KEYS if k in flat]
        if len(present) > 1:
            raise InputError(f"keys {present} all name the instruction; send one of them")
        if not present:
            raise InputError(
                f"the observation has no instruction; send it as a string under one of {list(INSTRUCTION_KEYS)}"
            )
        key, value = present[0], flat[present[0]]
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if not isinstance(value, str):
            raise InputError(f"instruction {key!r} must be a string; got {_describe(value)}")
        if not value.strip():
            raise InputError(f"instruction {key!r} is empty; say what the robot should do")
        if len(value) > MAX_INSTRUCTION_CHARS:
            raise InputError(
                f"instruction {key!r} has {len(value)} characters; at most {MAX_INSTRUCTION_CHARS} are accepted"
            )
        return value


__all__ = ["INSTRUCTION_KEYS", "STATE_KEYS", "ObservationSpec", "default_camera_keys", "flatten"]
