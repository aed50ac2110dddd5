"""Small synthetic LeRobot v3.0 datasets, written with the real writer (real mp4s), for tests and benches.

The task is learnable from the state alone, so the tiny preset learns it in a few hundred steps: the
state is a 3-D position plus a "near the goal" flag; each episode starts at a random position and
reaches towards its task's goal (one goal per task, `GOALS`), moving half the clipped step each frame;
the action is that step (clipped to +-0.2, scaled to +-1) and a gripper command that closes (to
`gripper_max`) once the position is within 0.25 of the goal and is open (`gripper_min`) before; with
`binary_gripper=False` it closes gradually instead, in proportion to the closeness
`clip(1 - distance / 0.5, 0, 1)`, which the state's fourth dim then holds. Images
are smooth moving colour gradients (codec-friendly, unlike noise), different per episode.

Two flavours of metadata:

- vlaforge-style (default): ``meta/info.json`` carries ``"vlaforge": {"embodiment": ..., "env":
  "synthetic"}`` with every action dim normalised, as `vlaforge collect` stores its embodiment.
- LeRobot-style (``lerobot_style=True``): no "vlaforge" key, as a dataset written by LeRobot itself;
  readers then derive the embodiment from the features and statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlaforge.data.lerobot_writer import LeRobotWriter
from vlaforge.errors import InputError
from vlaforge.types import Embodiment

CAMERA = "corner2"
TASKS = ["reach the red goal", "reach the blue goal", "reach the green goal", "reach the white goal"]
GOALS = np.array(  # one goal per task, inside the [-0.8, 0.8]^3 start box
    [[0.6, -0.4, 0.3], [-0.5, 0.5, -0.2], [0.2, 0.6, 0.5], [-0.4, -0.6, -0.5]], dtype=np.float32
)
STATE_NAMES = ["x", "y", "z", "grip"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
_MAX_STEP = 0.2  # per-frame reach step is clipped to this, then scaled to [-1, 1]
_NEAR = 0.25  # distance under which the gripper closes


@dataclass
class SynthConfig:
    """A synthetic dataset to write (`write_synthetic`).

    Attributes:
        out: directory of the dataset to create.
        episodes: number of episodes; episode e performs task ``e % tasks``.
        length: frames per episode.
        image_size: side of the square camera images (one camera, "corner2").
        tasks: number of distinct tasks (instructions and goals), 1 to 4.
        seed: seeds the start positions.
        lerobot_style: write without vlaforge's ``info.json`` metadata (no stored embodiment), as a
            dataset written by LeRobot itself.
        gripper_min: gripper command while open, in robot units.
        gripper_max: gripper command once closed (e.g. 0 and 100 for a gripper in percent).
        binary_gripper: the gripper snaps shut near the goal (True) or closes gradually (False).
        fps: frames per second.
        video_gop: keyframe interval of the mp4s in frames; None leaves the encoder's default.
        overwrite: replace an existing ``out``.
    """

    out: str
    episodes: int = 4
    length: int = 30
    image_size: int = 64
    tasks: int = 2
    seed: int = 0
    lerobot_style: bool = False
    gripper_min: float = -1.0
    gripper_max: float = 1.0
    binary_gripper: bool = True
    fps: float = 10.0
    video_gop: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.out = str(self.out)
        problems = []
        for name in ("episodes", "length", "image_size"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        if not 1 <= self.tasks <= len(TASKS):
            problems.append(f"tasks={self.tasks} (1 to {len(TASKS)})")
        if not self.gripper_max > self.gripper_min:
            problems.append(f"gripper range [{self.gripper_min}, {self.gripper_max}] (max must be > min)")
        if not self.fps > 0:
            problems.append(f"fps={self.fps} (must be > 0)")
        if self.video_gop is not None and self.video_gop < 1:
            problems.append(f"video_gop={self.video_gop} (must be >= 1, or None)")
        if problems:
            raise InputError("invalid synthetic dataset config: " + "; ".join(problems))


def synthetic_images(length: int, size: int, seed: int) -> np.ndarray:
    """uint8 (T, size, size, 3): smooth moving colour gradients, different for each `seed`."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = np.arange(length, dtype=np.float32)[:, None, None]
    r = 128 + 90 * np.sin(xx / size * 3.0 + t * 0.2 + seed)
    g = 128 + 90 * np.cos(yy / size * 2.5 - t * 0.1 + seed)
    b = 60 + 150 * (xx + yy) / (2 * size) + 0 * t
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def synthetic_episode(task: int, length: int, rng: np.random.Generator, cfg: SynthConfig) -> dict:
    """(state float32 (T, 4), action float32 (T, 4)) of one reach towards `GOALS[task]`."""
    pos = rng.uniform(-0.8, 0.8, size=3).astype(np.float32)
    states, actions = [], []
    for _ in range(length):
        delta = np.clip(GOALS[task] - pos, -_MAX_STEP, _MAX_STEP)
        dist = float(np.linalg.norm(GOALS[task] - pos))
        near = float(dist < _NEAR) if cfg.binary_gripper else float(np.clip(1 - dist / (2 * _NEAR), 0, 1))
        grip = cfg.gripper_min + near * (cfg.gripper_max - cfg.gripper_min)
        states.append(np.r_[pos, near].astype(np.float32))
        actions.append(np.r_[delta / _MAX_STEP, grip].astype(np.float32))
        pos = pos + 0.5 * delta
    return {"observation.state": np.stack(states), "action": np.stack(actions)}


def write_synthetic(cfg: SynthConfig) -> Path:
    """Writes the synthetic dataset `cfg` describes and returns its directory.

    Raises:
        InputError: for an invalid config, or when ``cfg.out`` exists and ``overwrite`` is False.
    """
    size = int(cfg.image_size)
    features = {
        f"observation.images.{CAMERA}": {
            "dtype": "video",
            "shape": [size, size, 3],
            "names": ["height", "width", "channels"],
        },
        "observation.state": {"dtype": "float32", "shape": [4], "names": STATE_NAMES},
        "action": {"dtype": "float32", "shape": [4], "names": ACTION_NAMES},
    }
    rng = np.random.default_rng(cfg.seed)
    raw = []
    for e in range(cfg.episodes):
        task = e % cfg.tasks
        frames = synthetic_episode(task, cfg.length, rng, cfg)
        frames[f"observation.images.{CAMERA}"] = synthetic_images(cfg.length, size, seed=e)
        raw.append((TASKS[task], frames))
    extra = None
    if not cfg.lerobot_style:
        actions = np.concatenate([f["action"] for _, f in raw])  # (N, 4)
        emb = Embodiment(
            action_dim=4,
            action_names=ACTION_NAMES,
            normalize_mask=[True] * 4,
            action_low=actions.min(0).tolist(),
            action_high=actions.max(0).tolist(),
            control_hz=cfg.fps,
            camera_names=[CAMERA],
            image_size=size,
            state_dim=4,
            state_names=STATE_NAMES,
            robot_type="synthetic",
        )
        extra = {"vlaforge": {"embodiment": emb.to_dict(), "env": "synthetic"}}
    with LeRobotWriter(
        cfg.out,
        fps=cfg.fps,
        features=features,
        robot_type="synthetic",
        overwrite=cfg.overwrite,
        extra_info=extra,
        video_gop=cfg.video_gop,
    ) as w:
        for task, frames in raw:
            w.add_episode(task, frames)
    return Path(cfg.out)
