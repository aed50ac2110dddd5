"""robosuite's Lift behind vlaforge's `Env` protocol, with a scripted pick-and-lift expert.

robosuite (Zhu et al., "robosuite: A Modular Simulation Framework and Benchmark for Robot Learning",
2020; v1.5): a Franka Panda under operational-space control (`OSC_POSE`, deltas in the base frame,
1.0 = 5 cm) at 20 Hz; Lift succeeds when the cube is 4 cm above the table. vlaforge drives the
position and the gripper (4-D actions, orientation held) and renders its own cameras through the fast
MuJoCo renderer of `vlaforge.envs.rendering`, so robosuite's renderer is never made. Details in
docs/envs.md#robosuite.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence

import numpy as np

from vlaforge.envs.base import EnvSpec
from vlaforge.envs.rendering import camera_names_of, configure_rendering, free_renderer, make_renderer
from vlaforge.errors import InputError
from vlaforge.types import Embodiment, Observation, as_list

CONTROL_HZ = 20.0  # robosuite's default control_freq
POSITION_SCALE = 0.05  # metres per unit action: OSC_POSE's output_max for position (default_panda.json)

TASKS = ["lift"]
_ROBOSUITE_ENV = {"lift": "Lift"}
_TEXT: dict[str, tuple[str, tuple[str, ...]]] = {
    "lift": (
        "lift the red cube",
        ("pick up the red block", "raise the cube off the table", "grab the cube and lift it up"),
    ),
}
# Training phrasings (patterns, `vlaforge.envs.phrasing.expand`); never a held-out paraphrase above.
_PHRASINGS: dict[str, list[str]] = {
    "lift": [
        "[lift|raise|pick up] the [red cube|cube|red box]",
        "[grab|grasp] the red cube and [lift|raise] it",
    ],
}


def embodiment(cameras: str | Sequence[str] = ("agentview",), image_size: int = 64) -> Embodiment:
    """The Panda of robosuite as an `Embodiment`: delta-xyz (1.0 = 5 cm) + gripper (-1 open, 1 close)."""
    return Embodiment(
        action_dim=4,
        action_names=["delta_x", "delta_y", "delta_z", "gripper"],
        normalize_mask=[True, True, True, False],
        action_low=[-1.0] * 4,
        action_high=[1.0] * 4,
        control_hz=CONTROL_HZ,
        camera_names=as_list(cameras),
        image_size=int(image_size),
        state_dim=4,
        state_names=["ee_x", "ee_y", "ee_z", "gripper_opening"],
        robot_type="panda",
    )


class LiftExpert:
    """Pick and lift in four phases, from the cube's and the gripper's positions: hover above the cube,
    descend to it, close the gripper for `CLOSE_STEPS` steps, lift. Proportional steps toward each
    waypoint, saturated at the action limits."""

    HOVER = 0.08  # metres above the cube before descending
    LIFT = 0.15  # metres above the grasp point at the end
    CLOSE_STEPS = 12
    GAIN = 1.5

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.phase, self.closed_at, self.grasp = 0, 0, None

    def action(self, eef: np.ndarray, cube: np.ndarray, step: int) -> np.ndarray:
        """The action at step `step` of the episode, for gripper position `eef` and cube position `cube`."""
        if self.phase == 0:  # above the cube, gripper open
            target, grip = cube + [0.0, 0.0, self.HOVER], -1.0
            if np.linalg.norm((target - eef)[:2]) < 0.01 and abs(target[2] - eef[2]) < 0.02:
                self.phase = 1
        if self.phase == 1:  # down to the cube
            target, grip = cube + [0.0, 0.0, -0.005], -1.0
            if np.linalg.norm(target - eef) < 0.01:
                self.phase, self.closed_at, self.grasp = 2, step, cube.copy()
        if self.phase == 2:  # close on it
            target, grip = self.grasp + [0.0, 0.0, -0.005], 1.0
            if step - self.closed_at >= self.CLOSE_STEPS:
                self.phase = 3
        if self.phase == 3:
            target, grip = self.grasp + [0.0, 0.0, self.LIFT], 1.0
        delta = np.clip(self.GAIN * (target - eef) / POSITION_SCALE, -1.0, 1.0)
        return np.array([*delta, grip], dtype=np.float32)


class RobosuiteEnv:
    """One robosuite task with vlaforge observations (see `vlaforge.envs.base.Env`).

    Args:
        task: a task name (`TASKS`).
        cameras: camera names (a comma string or a list): agentview, frontview, birdview, sideview,
            robot0_eye_in_hand.
        image_size: side of the square images in pixels.
        max_steps: the episode is done (truncated) after this many steps.
        render: False skips rendering (observations then carry an empty `images` dict).
    """

    def __init__(
        self,
        task: str = "lift",
        cameras: str | Sequence[str] = ("agentview",),
        image_size: int = 64,
        max_steps: int = 200,
        render: bool = True,
    ) -> None:
        self.task = SPEC.check_task(task)
        self.cameras = as_list(cameras)
        if not self.cameras:
            raise InputError("RobosuiteEnv needs at least one camera (e.g. 'agentview')")
        if image_size <= 0 or max_steps <= 0:
            raise InputError(f"image_size ({image_size}) and max_steps ({max_steps}) must be > 0")
        self.image_size, self.max_steps = int(image_size), int(max_steps)
        self.render_images = bool(render)
        self.frames_rendered = 0
        self.embodiment = embodiment(self.cameras, self.image_size)
        self._env = _make(self.task)
        valid = camera_names_of(self._env.sim.model._model)
        unknown = [c for c in self.cameras if c not in valid]
        if unknown:
            raise InputError(f"unknown robosuite camera(s) {unknown}; valid cameras are {valid}")
        self._expert = LiftExpert()
        self._obs: dict | None = None
        self._steps = 0
        self._renderer = None
        self._close_renderer: weakref.finalize | None = None

    def _images(self, render: bool | None) -> dict[str, np.ndarray]:
        if not (self.render_images if render is None else render):
            return {}
        if self._renderer is None:
            self._renderer = make_renderer(self._env.sim.model._model, self.image_size)
            self._close_renderer = weakref.finalize(self, free_renderer, self._renderer)
        images = {}
        for name in self.cameras:
            self._renderer.update_scene(self._env.sim.data._data, camera=name)
            images[name] = self._renderer.render().copy()
            self.frames_rendered += 1
        return images

    def observe(self, render: bool | None = None) -> Observation:
        """The observation of the current state, without stepping."""
        if self._obs is None:
            raise RuntimeError(f"{self.task}: call reset(seed) first")
        fingers = self._obs["robot0_gripper_qpos"]
        state = np.array([*self._obs["robot0_eef_pos"], fingers[0] - fingers[1]], dtype=np.float32)
        return Observation(images=self._images(render), state=state, instruction=SPEC.instructions[self.task])

    def reset(self, seed: int, render: bool | None = None) -> Observation:
        """Starts an episode whose cube position and arm noise are a function of `seed` alone."""
        rng = np.random.default_rng(int(seed))
        self._env.rng = rng  # robosuite draws the robot's initial joint noise from env.rng...
        self._env.placement_initializer.rng = rng  # ...and the cube's placement from its sampler's
        self._obs = self._env.reset()
        self._steps = 0
        self._expert.reset()
        return self.observe(render)

    def step(self, action: np.ndarray, render: bool | None = None) -> tuple[Observation, float, bool, dict]:
        """Applies one action (clipped to [-1, 1]): dx, dy, dz (1.0 = 5 cm), gripper (-1 open, 1 close)."""
        if self._obs is None:
            raise RuntimeError(f"{self.task}: call reset(seed) before step()")
        if self._steps >= self.max_steps:
            raise RuntimeError(
                f"{self.task}: the episode ended at max_steps={self.max_steps}; call reset(seed)"
            )
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (4,):
            raise InputError(f"{self.task}: an action has 4 values (dx, dy, dz, gripper); got {action.shape}")
        action = np.clip(action, -1.0, 1.0)
        full = np.concatenate([action[:3], np.zeros(3), action[3:]])  # (7,): orientation deltas held at 0
        self._obs, reward, _done, info = self._env.step(full)
        self._steps += 1
        info = dict(info)
        info["success"] = bool(self._env._check_success())
        return self.observe(render), float(reward), self._steps >= self.max_steps, info

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state, float32 (4,) in [-1, 1]."""
        if self._obs is None:
            raise RuntimeError(f"{self.task}: call reset(seed) before expert_action()")
        return self._expert.action(self._obs["robot0_eef_pos"], self._obs["cube_pos"], self._steps)

    def close(self) -> None:
        if self._close_renderer is not None:
            self._close_renderer()
            self._close_renderer = None
        self._renderer = None
        self._env.close()

    def __enter__(self) -> RobosuiteEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _make(task: str):
    configure_rendering()  # before robosuite imports mujoco
    # robosuite logs its set-up (macros, controller files) at import and per env: keep its errors only.
    quiet = logging.getLogger("robosuite_logs")
    if not quiet.filters:
        quiet.addFilter(lambda record: record.levelno >= logging.ERROR)
    try:
        import robosuite
    except ImportError as e:
        raise InputError(
            f"--env robosuite needs robosuite ({e}); install it with `make setup` (robosuite==1.5.2 "
            "--no-deps, plus numba, termcolor and opencv-python-headless)"
        ) from e
    return robosuite.make(
        _ROBOSUITE_ENV[task],
        robots="Panda",
        has_renderer=False,
        has_offscreen_renderer=False,  # vlaforge renders its cameras itself
        use_camera_obs=False,
        control_freq=int(CONTROL_HZ),
        hard_reset=False,  # keep one model: a reset re-samples the scene in place
        ignore_done=True,  # the episode length is ours (max_steps)
        horizon=10**6,
        seed=0,  # the model's own draws (the cube's size) are the same in every process; reset reseeds
    )


SPEC = EnvSpec(
    name="robosuite",
    title="robosuite",
    make=RobosuiteEnv,
    embodiment=embodiment,
    tasks=TASKS,
    task_sets={},
    groups=("easy",),
    difficulty={"lift": "easy"},
    instructions={t: text[0] for t, text in _TEXT.items()},
    heldout_instructions={t: list(text[1]) for t, text in _TEXT.items()},
    phrasings=_PHRASINGS,
    default_tasks="lift",
    cameras=("agentview",),
    image_size=64,
    max_steps=200,
    control_hz=CONTROL_HZ,
    robot_type="panda",
    packages=("robosuite", "mujoco"),
    success="the cube 4 cm above the table at any step; the episode stops at the first success",
)
