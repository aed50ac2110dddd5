"""One Meta-World v3 task as a vlaforge `Env`, and Meta-World's `EnvSpec`.

Meta-World (Yu et al., "Meta-World: A Benchmark and Evaluation for Multi-Task and Meta Reinforcement
Learning", CoRL 2019): a Sawyer arm on a table, 50 tasks, 4-D actions (xyz delta of the end effector +
gripper effort, in [-1, 1]). Seeding, the visible goal and rendering are explained in
docs/envs.md#meta-world.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from vlaforge.envs.base import EnvSnapshot, EnvSpec
from vlaforge.envs.metaworld.experts import EXPERT_VARIANTS, make_expert
from vlaforge.envs.metaworld.phrasings import PHRASINGS
from vlaforge.envs.metaworld.published import ANCHORS
from vlaforge.envs.metaworld.render import Cameras
from vlaforge.envs.metaworld.tasks import (
    ALL_TASKS,
    DIFFICULTY,
    GROUP_TASKS,
    GROUPS,
    HELDOUT_INSTRUCTIONS,
    INSTRUCTIONS,
    MT10,
)
from vlaforge.envs.rendering import camera_names_of, configure_rendering
from vlaforge.errors import InputError
from vlaforge.types import Embodiment, Observation, as_list

# Meta-World steps MuJoCo `frame_skip` (5) times per action with a timestep of 2.5 ms (all 50 tasks
# share the Sawyer base scene): 80 actions a second. `_check_control_hz` verifies it against the env.
_FRAME_SKIP = 5
_TIMESTEP = 0.0025
CONTROL_HZ: float = 1.0 / (_FRAME_SKIP * _TIMESTEP)

_STATE_DIM = 4  # hand xyz + gripper opening: the first 4 entries of Meta-World's observation

# The scene around the robot as Meta-World's observation reports it (entries 4:18, two objects' position
# and quaternion, zeros for a task with one object; 36:39, the goal position, shown because the experts
# read it): what its success tests are computed from. Recorded as LeRobot's `observation.environment_state`
# (`vlaforge eval --record`), where a world model learns to predict it.
ENVIRONMENT_STATE_NAMES = [
    *(f"{obj}_{k}" for obj in ("obj1", "obj2") for k in ("x", "y", "z", "qw", "qx", "qy", "qz")),
    "goal_x", "goal_y", "goal_z",
]  # fmt: skip

# LeRobot's Meta-World env (lerobot/envs/metaworld.py, the env its MT50 evaluations and SmolVLA's run in)
# moves the corner2 camera closer to the table, to this position in the world frame (metres), keeping its
# orientation; `corner2_lerobot` is that view, so a policy that learned from frames rendered there sees
# here what it saw there. It replaces corner2 in the env's model, so the two cannot be rendered by one env.
LEROBOT_CORNER2_POS = (0.75, 0.075, 0.7)
MOVED_CAMERAS = {"corner2_lerobot": ("corner2", LEROBOT_CORNER2_POS)}


def embodiment(cameras: str | Sequence[str] = ("corner2",), image_size: int = 128) -> Embodiment:
    """The Sawyer arm of Meta-World as an `Embodiment` (4-D delta-xyz + gripper actions in [-1, 1])."""
    return Embodiment(
        action_dim=4,
        action_names=["delta_x", "delta_y", "delta_z", "gripper"],
        normalize_mask=[True, True, True, False],
        action_low=[-1.0] * 4,
        action_high=[1.0] * 4,
        control_hz=CONTROL_HZ,
        camera_names=as_list(cameras),
        image_size=int(image_size),
        state_dim=_STATE_DIM,
        state_names=["ee_x", "ee_y", "ee_z", "gripper_opening"],
        robot_type="sawyer",
    )


class MetaWorldEnv:
    """One Meta-World v3 task with vlaforge observations.

    Args:
        task: a v3 task name (see `ALL_TASKS`).
        cameras: camera names (a comma string or a list): corner, corner2, corner3, corner4, topview,
            behindGripper, gripperPOV, and corner2_lerobot (corner2 where LeRobot's env places it).
        image_size: side of the square images in pixels.
        max_steps: the episode is done (truncated) after this many steps.
        render: False skips rendering (observations then carry an empty `images` dict), for fast expert
            rollouts.
        expert: what `expert_action` runs: ``script`` (Meta-World's scripted policy) or ``recovering``
            (the script, plus a way out of the states it cannot leave: `RecoveringExpert`).

    Attributes:
        embodiment: the `Embodiment` of this env (cameras and image size included).
        render_images: whether observations carry images by default; may be switched between steps
            (collection first checks an expert's episode without images, then replays it with them).
            `reset`, `step` and `observe` take a `render` argument that overrides it for one call.
        frames_rendered: camera images rendered since the env was made (one per camera per rendered
            observation); rendering is most of a step's cost, so this is what evaluation keeps low.
    """

    def __init__(
        self,
        task: str,
        cameras: str | Sequence[str] = ("corner2",),
        image_size: int = 128,
        max_steps: int = 500,
        render: bool = True,
        expert: str = "script",
    ) -> None:
        configure_rendering()  # before metaworld imports mujoco
        from metaworld.env_dict import ENV_CLS_MAP

        self.task = SPEC.check_task(task)
        self.cameras = as_list(cameras)
        if not self.cameras:
            raise InputError("MetaWorldEnv needs at least one camera (e.g. 'corner2')")
        if image_size <= 0 or max_steps <= 0:
            raise InputError(f"image_size ({image_size}) and max_steps ({max_steps}) must be > 0")
        self.image_size = int(image_size)
        self.max_steps = int(max_steps)
        self.render_images = bool(render)  # may be switched at any time
        self.embodiment = embodiment(self.cameras, self.image_size)

        env = ENV_CLS_MAP[self.task]()
        env._partially_observable = False  # the experts read the goal position
        env.__dict__.pop("sawyer_observation_space", None)  # cached with the goal hidden; rebuild
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True  # draw positions from env.np_random, which reset(seed) sets
        env.max_path_length = self.max_steps
        self._env = env
        self._expert = make_expert(self.task, expert)
        self._raw_obs: np.ndarray | None = None
        self._steps = 0
        _check_control_hz(env)

        valid = camera_names_of(env.model)
        unknown = [c for c in self.cameras if c not in valid and c not in MOVED_CAMERAS]
        if unknown:
            raise InputError(
                f"unknown Meta-World camera(s) {unknown}; valid cameras are {valid + list(MOVED_CAMERAS)}"
            )
        for name, (base, pos) in MOVED_CAMERAS.items():
            if name in self.cameras:
                if base in self.cameras:
                    raise InputError(
                        f"cameras {base} and {name} are one MuJoCo camera in two places; an env renders one "
                        "of them (record the other in a second collection)"
                    )
                env.model.cam_pos[valid.index(base)] = pos  # a fixed camera of the world body: its position
        cam_ids = [
            valid.index(MOVED_CAMERAS[c][0]) if c in MOVED_CAMERAS else valid.index(c) for c in self.cameras
        ]
        self._cameras = Cameras(self, env.model, env.data, self.cameras, cam_ids, self.image_size)

    # -- images ---------------------------------------------------------------------------------------

    @property
    def frames_rendered(self) -> int:
        return self._cameras.frames_rendered

    def render_raw(self, camera: str) -> np.ndarray:
        """The camera's image exactly as MuJoCo renders it (no orientation fix), uint8 (S, S, 3)."""
        return self._cameras.raw(camera)

    def observe(self, render: bool | None = None) -> Observation:
        """The observation of the current state, without stepping.

        Rendering reads the simulation state and never changes it, so an episode stepped with
        `render=False` and observed only where images are needed follows exactly the same trajectory
        as one rendered at every step (`tests/eval/test_rollout.py` checks it).

        Args:
            render: whether to render the cameras; None follows `render_images`.
        """
        if self._raw_obs is None:
            raise RuntimeError(f"{self.task}: call reset(seed) first")
        state = self._raw_obs[:_STATE_DIM].astype(np.float32)
        render = self.render_images if render is None else render
        images = self._cameras.images() if render else {}
        return Observation(images=images, state=state, instruction=INSTRUCTIONS[self.task])

    # -- episode --------------------------------------------------------------------------------------

    def reset(self, seed: int, render: bool | None = None) -> Observation:
        """Starts an episode whose object and goal positions are a function of `seed` alone.

        Args:
            seed: the episode's seed.
            render: whether the returned observation carries images; None follows `render_images`.
        """
        import mujoco  # after configure_rendering (__init__), like the renderer's import

        self._env.np_random = np.random.default_rng(int(seed))
        raw, _ = self._env.reset()
        # Meta-World's reset_model places goal sites and static bodies (reach's goal marker, the hole of
        # peg-insert-side, ...) in the model after its last mj_forward, so the world positions the
        # renderer reads would still be the previous draw's until the first step: the first frame showed
        # another scene's goal. Recomputing the kinematics from the state fixes the frame and leaves the
        # trajectory alone (mj_step recomputes the same quantities before it integrates).
        mujoco.mj_kinematics(self._env.model, self._env.data)
        self._raw_obs = raw
        self._steps = 0
        return self.observe(render)

    def step(self, action: np.ndarray, render: bool | None = None) -> tuple[Observation, float, bool, dict]:
        """Applies one action (clipped to [-1, 1]).

        Args:
            action: (4,) dx, dy, dz, gripper.
            render: whether the returned observation carries images; None follows `render_images`.
                An open-loop rollout passes False for the steps after which nobody looks at the images.

        Returns:
            (observation, reward, done, info): done is True once `max_steps` steps were taken;
            info["success"] is a bool (Meta-World's success test at this step).
        """
        if self._raw_obs is None:
            raise RuntimeError(f"{self.task}: call reset(seed) before step()")
        if self._steps >= self.max_steps:
            raise RuntimeError(
                f"{self.task}: the episode ended at max_steps={self.max_steps}; call reset(seed)"
            )
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (4,):
            raise InputError(
                f"{self.task}: an action has 4 values (dx, dy, dz, gripper); got shape {action.shape}"
            )
        action = np.clip(action, -1.0, 1.0)
        raw, reward, _terminated, truncated, info = self._env.step(action)
        self._raw_obs = raw
        self._steps += 1
        info = dict(info)
        info["success"] = bool(info.get("success", 0.0))
        done = bool(truncated) or self._steps >= self.max_steps
        return self.observe(render), float(reward), done, info

    def environment_state(self) -> np.ndarray:
        """The scene's state now (`ENVIRONMENT_STATE_NAMES`), float32 (17,).

        Read from the simulation rather than from the last observation: the one `reset` returns was
        computed before the kinematics were brought up to the new scene (see `reset`), so its object
        positions can be the previous episode's."""
        if self._raw_obs is None:
            raise RuntimeError(f"{self.task}: call reset(seed) before environment_state()")
        objects = self._env._get_curr_obs_combined_no_goal()[4:18]
        return np.concatenate([objects, self._env._target_pos]).astype(np.float32)

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state, float32 (4,) in [-1, 1]."""
        if self._raw_obs is None:
            raise RuntimeError(f"{self.task}: call reset(seed) before expert_action()")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experts warn when their gains exceed the action range
            action = self._expert.get_action(self._raw_obs)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    def snapshot(self) -> EnvSnapshot:
        """The episode's state as it is now, for `restore`: MuJoCo's integration state (positions,
        velocities, controls, mocap targets, the solver's warm start: all `mj_step` reads) and the Python
        side that shapes the next observation (Meta-World's previous frame and step count). Stepping on from
        a restored snapshot gives bit for bit what stepping on from the original would have
        (`tests/envs/test_snapshot.py`), so an expert can be run ahead in the same env and the episode
        continued as if it had not been."""
        import mujoco

        if self._raw_obs is None:
            raise RuntimeError(f"{self.task}: call reset(seed) before snapshot()")
        env, what = self._env, mujoco.mjtState.mjSTATE_INTEGRATION
        physics = np.empty(mujoco.mj_stateSize(env.model, what), np.float64)
        mujoco.mj_getState(env.model, env.data, physics, what)
        python = {
            "raw_obs": self._raw_obs.copy(),
            "steps": self._steps,
            "curr_path_length": env.curr_path_length,
            "prev_obs": np.array(env._prev_obs, copy=True),
            "last_stable_obs": None if env._last_stable_obs is None else env._last_stable_obs.copy(),
            "sim_exception": env._did_see_sim_exception,
        }
        return EnvSnapshot(self.task, physics, python)

    def restore(self, snapshot: EnvSnapshot) -> None:
        """Puts the episode back where `snapshot` (of this env's task) found it."""
        import mujoco

        if snapshot.task != self.task:
            raise ValueError(f"a snapshot of {snapshot.task} cannot be restored into {self.task}")
        env, py = self._env, snapshot.python
        mujoco.mj_setState(env.model, env.data, snapshot.physics, mujoco.mjtState.mjSTATE_INTEGRATION)
        # The positions the renderer reads. Not mj_forward: with it the continued episode drifted from the
        # uninterrupted one within a few steps (~1e-12), which tests/envs/test_snapshot.py catches.
        mujoco.mj_kinematics(env.model, env.data)
        self._raw_obs = py["raw_obs"].copy()
        self._steps = py["steps"]
        env.curr_path_length = py["curr_path_length"]
        env._prev_obs = py["prev_obs"].copy()
        env._last_stable_obs = None if py["last_stable_obs"] is None else py["last_stable_obs"].copy()
        env._did_see_sim_exception = py["sim_exception"]

    @property
    def raw_observation(self) -> np.ndarray:
        """Meta-World's full 39-D observation of the current step (hand, objects, previous frame, goal)."""
        if self._raw_obs is None:
            raise RuntimeError(f"{self.task}: call reset(seed) first")
        return self._raw_obs

    def close(self) -> None:
        self._cameras.close()
        self._env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_control_hz(env) -> None:
    rate = 1.0 / (env.frame_skip * env.model.opt.timestep)
    if abs(rate - CONTROL_HZ) > 1e-6:
        raise RuntimeError(
            f"this Meta-World steps at {rate:.3f} Hz but vlaforge assumes {CONTROL_HZ:.3f} Hz "
            f"(frame_skip {env.frame_skip}, timestep {env.model.opt.timestep}); check the metaworld version"
        )


SPEC = EnvSpec(
    name="metaworld",
    title="Meta-World",
    make=MetaWorldEnv,
    embodiment=embodiment,
    tasks=ALL_TASKS,
    task_sets={"mt10": MT10, "mt50": ALL_TASKS, **GROUP_TASKS},
    groups=GROUPS,
    difficulty=DIFFICULTY,
    instructions=INSTRUCTIONS,
    heldout_instructions=HELDOUT_INSTRUCTIONS,
    phrasings=PHRASINGS,
    default_tasks="mt10",
    cameras=("corner2",),
    image_size=128,
    max_steps=500,  # Meta-World's max_path_length
    control_hz=CONTROL_HZ,
    robot_type="sawyer",
    packages=("metaworld", "mujoco"),
    task_suffix="-v3",
    extra={
        "subset": "mt10",
        "published": ANCHORS,  # for bench/mt50_report.py
        "environment_state_names": ENVIRONMENT_STATE_NAMES,
    },  # fmt: skip
    expert_variants=EXPERT_VARIANTS,
)
