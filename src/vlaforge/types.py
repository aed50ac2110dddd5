"""The few types every part of vlaforge speaks.

- `Observation`: what a policy sees at one step (camera images, joint state, an instruction).
- `Embodiment`: what a robot is (action dims and names, which dims are normalised, limits, control rate,
  cameras, state). Stored in every checkpoint; never inferred from command-line strings or globals.
- `NormStats`: per-feature statistics (min, max, mean, std, q01, q99, and for actions the normalisation
  mask). Travel with the checkpoint and are validated at load.

Everything here is plain numpy + JSON so that robot-side code can import it without torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.errors import InputError

STAT_KEYS = ("min", "max", "mean", "std", "q01", "q99")


@dataclass
class Observation:
    """One step of what a policy sees.

    Attributes:
        images: camera name -> uint8 image (H, W, 3), or (B, H, W, 3) in the batched form.
        state: float32 proprioceptive state (S,) or (B, S); None when the robot reports none.
        instruction: the task in words (a list of B strings in the batched form).
    """

    images: dict[str, np.ndarray]
    state: np.ndarray | None = None
    instruction: str | list[str] = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Observation:
        """Builds an Observation from `{"images": {...}, "state": ..., "instruction": ...}`."""
        if isinstance(d, Observation):
            return d
        if not isinstance(d, Mapping) or "images" not in d:
            raise InputError(
                "an observation needs an 'images' dict {camera: uint8 (H, W, 3)}; "
                f"got keys {sorted(d) if isinstance(d, Mapping) else type(d).__name__}"
            )
        images = {}
        for name, img in dict(d["images"]).items():
            arr = np.asarray(img)
            if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
                raise InputError(
                    f"image {name!r} must be uint8 (H, W, 3) or (B, H, W, 3); got {arr.dtype} {arr.shape}"
                )
            images[name] = arr
        state = d.get("state")
        if state is not None:
            state = np.asarray(state, dtype=np.float32)
        return cls(images=images, state=state, instruction=d.get("instruction", ""))


@dataclass
class Embodiment:
    """What the robot is: the action space, the cameras and the state.

    Attributes:
        action_dim: number of action dims D.
        action_names: one name per action dim.
        normalize_mask: per action dim, True when the dim is normalised (OpenVLA leaves grippers unmasked,
            so they pass through normalisation unchanged).
        action_low, action_high: per-dim limits in robot units; the action guard clips to them.
        control_hz: the rate at which actions are applied (a dataset's fps).
        camera_names: the cameras the policy reads, in order.
        image_size: the square side (pixels) the policy's cameras are rendered or resized to.
        state_dim: size of the proprioceptive state (0 when the policy takes none).
        state_names: one name per state dim.
        robot_type: a free-form label (e.g. "sawyer").
    """

    action_dim: int
    action_names: list[str]
    normalize_mask: list[bool]
    action_low: list[float]
    action_high: list[float]
    control_hz: float
    camera_names: list[str]
    image_size: int
    state_dim: int = 0
    state_names: list[str] = field(default_factory=list)
    robot_type: str = "unknown"

    def __post_init__(self) -> None:
        d = self.action_dim
        for name in ("action_names", "normalize_mask", "action_low", "action_high"):
            value = getattr(self, name)
            if len(value) != d:
                raise InputError(f"Embodiment.{name} has {len(value)} entries; action_dim is {d}")
        if len(self.state_names) not in (0, self.state_dim):
            raise InputError(
                f"Embodiment.state_names has {len(self.state_names)} entries; state_dim is {self.state_dim}"
            )
        if not self.camera_names:
            raise InputError("Embodiment.camera_names is empty: a VLA needs at least one camera")
        if self.image_size <= 0 or self.control_hz <= 0:
            raise InputError(
                f"Embodiment.image_size ({self.image_size}) and control_hz ({self.control_hz}) must be > 0"
            )
        self.action_names = list(self.action_names)
        self.normalize_mask = [bool(m) for m in self.normalize_mask]
        self.action_low = [float(x) for x in self.action_low]
        self.action_high = [float(x) for x in self.action_high]
        self.camera_names = list(self.camera_names)
        self.state_names = list(self.state_names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Embodiment:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise InputError(
                f"unknown embodiment keys {sorted(unknown)}; expected a subset of {sorted(known)}"
            )
        return cls(**dict(d))

    def check_fits(self, other: Embodiment, what: str = "environment") -> None:
        """Raises ValueError naming every mismatch between this (a policy's) embodiment and `other`."""
        problems = []
        if self.action_dim != other.action_dim:
            problems.append(f"action_dim {self.action_dim} != {other.action_dim}")
        if self.state_dim != other.state_dim:
            problems.append(f"state_dim {self.state_dim} != {other.state_dim}")
        missing = [c for c in self.camera_names if c not in other.camera_names]
        if missing:
            problems.append(f"cameras {missing} not provided (the {what} has {other.camera_names})")
        if self.image_size != other.image_size:
            problems.append(f"image_size {self.image_size} != {other.image_size}")
        if problems:
            raise InputError(f"the policy does not fit the {what}: " + "; ".join(problems))


@dataclass
class FeatureStats:
    """Statistics of one feature, each an array over the feature's dims."""

    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray | None = None  # actions only: True where the dim is normalised

    def __post_init__(self) -> None:
        for key in STAT_KEYS:
            setattr(self, key, np.asarray(getattr(self, key), dtype=np.float32).reshape(-1))
        if self.mask is not None:
            self.mask = np.asarray(self.mask, dtype=bool).reshape(-1)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def to_dict(self) -> dict[str, list]:
        out = {k: getattr(self, k).tolist() for k in STAT_KEYS}
        if self.mask is not None:
            out["mask"] = self.mask.tolist()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "stats") -> FeatureStats:
        missing = [k for k in STAT_KEYS if k not in d]
        if missing:
            raise InputError(f"{where}: missing statistics {missing} (need {list(STAT_KEYS)})")
        return cls(**{k: d[k] for k in STAT_KEYS}, mask=d.get("mask"))


@dataclass
class NormStats:
    """Per-feature statistics, keyed by feature name ("action", "observation.state")."""

    features: dict[str, FeatureStats]

    def __getitem__(self, key: str) -> FeatureStats:
        if key not in self.features:
            raise KeyError(f"no statistics for {key!r}; have {sorted(self.features)}")
        return self.features[key]

    def __contains__(self, key: str) -> bool:
        return key in self.features

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() for k, v in self.features.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "norm stats") -> NormStats:
        return cls({k: FeatureStats.from_dict(v, where=f"{where}[{k!r}]") for k, v in d.items()})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: norm stats file is missing; a policy must not load without it")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(data, where=str(path))

    def validate(self, embodiment: Embodiment, where: str = "norm stats") -> None:
        """Checks the stats fit the embodiment: keys present, right dims, finite values."""
        if "action" not in self.features:
            raise InputError(f"{where}: no 'action' statistics; have {sorted(self.features)}")
        expect = {"action": embodiment.action_dim}
        if embodiment.state_dim:
            expect["observation.state"] = embodiment.state_dim
        for key, dim in expect.items():
            if key not in self.features:
                raise InputError(f"{where}: no {key!r} statistics but the embodiment has {key} dim {dim}")
            fs = self.features[key]
            for stat in STAT_KEYS:
                arr = getattr(fs, stat)
                if arr.shape != (dim,):
                    raise InputError(
                        f"{where}: {key}.{stat} has shape {arr.shape}; the embodiment expects ({dim},)"
                    )
                if not np.all(np.isfinite(arr)):
                    raise InputError(f"{where}: {key}.{stat} has non-finite values {arr.tolist()}")
        mask = self.features["action"].mask
        if mask is not None and mask.tolist() != list(embodiment.normalize_mask):
            raise InputError(
                f"{where}: action mask {mask.tolist()} differs from the embodiment's "
                f"normalize_mask {embodiment.normalize_mask}"
            )


def as_list(x: str | Sequence[str]) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b']."""
    if isinstance(x, str):
        return [s.strip() for s in x.split(",") if s.strip()]
    return list(x)
