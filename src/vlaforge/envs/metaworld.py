"""Meta-World v3: all 50 tasks behind one small interface.

Meta-World (Yu et al., "Meta-World: A Benchmark and Evaluation for Multi-Task and Meta Reinforcement
Learning", CoRL 2019) is a Sawyer arm on a table with 50 manipulation tasks, 4-D actions (xyz delta of
the end effector + gripper effort, all in [-1, 1]) and a scripted expert per task. This module gives
each task an instruction in words, groups the tasks by difficulty, and wraps one task's environment as
`MetaWorldEnv` which speaks vlaforge's `Observation`.

Design choices:

- **Seeding.** Meta-World draws a task's object and goal positions ("rand vec") at reset, either from
  the global numpy generator or, with `seeded_rand_vec`, from the env's own `np_random`. We give the
  env a fresh `np.random.default_rng(seed)` at every `reset(seed)`, so an episode's initial state is a
  pure function of the seed (it also survives Meta-World's rejection loops that redraw positions until
  objects are far enough apart), independent of what ran before in the process.
- **Goal visible to the expert.** The env is built fully observable (the goal position fills the last
  3 entries of Meta-World's 39-D observation) because the scripted experts read it; the policy only
  sees the images, the first 4 entries (hand xyz + gripper opening) and the instruction.
- **Rendering.** One `mujoco.Renderer` per env, shared by its cameras, with shadows and reflections
  off (about 8x faster through OSMesa on a CPU) and no multisampling (2.6x more). Fixed cameras
  mounted upside down (`corner`, `corner2`, `corner3`, `corner4`: their image-up axis points at the
  floor) are turned right side up by a 180-degree rotation, the inverse of the camera's roll (a
  vertical flip alone would mirror the scene). `step(action, render=False)` skips the cameras for
  steps whose images nobody looks at (inside an open-loop chunk), and `observe()` renders the current
  state when they are needed. The GL backend is chosen by `configure_rendering()` when an env is first
  made, not when this module is imported.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import sys
import warnings
import weakref
from collections.abc import Sequence

import numpy as np

from vlaforge.errors import InputError
from vlaforge.types import Embodiment, Observation, as_list

# The MT50 order of Meta-World v3 (metaworld.env_dict.ALL_V3_ENVIRONMENTS).
ALL_TASKS: list[str] = [
    "assembly-v3",
    "basketball-v3",
    "bin-picking-v3",
    "box-close-v3",
    "button-press-topdown-v3",
    "button-press-topdown-wall-v3",
    "button-press-v3",
    "button-press-wall-v3",
    "coffee-button-v3",
    "coffee-pull-v3",
    "coffee-push-v3",
    "dial-turn-v3",
    "disassemble-v3",
    "door-close-v3",
    "door-lock-v3",
    "door-open-v3",
    "door-unlock-v3",
    "hand-insert-v3",
    "drawer-close-v3",
    "drawer-open-v3",
    "faucet-open-v3",
    "faucet-close-v3",
    "hammer-v3",
    "handle-press-side-v3",
    "handle-press-v3",
    "handle-pull-side-v3",
    "handle-pull-v3",
    "lever-pull-v3",
    "pick-place-wall-v3",
    "pick-out-of-hole-v3",
    "pick-place-v3",
    "plate-slide-v3",
    "plate-slide-side-v3",
    "plate-slide-back-v3",
    "plate-slide-back-side-v3",
    "peg-insert-side-v3",
    "peg-unplug-side-v3",
    "soccer-v3",
    "stick-push-v3",
    "stick-pull-v3",
    "push-v3",
    "push-wall-v3",
    "push-back-v3",
    "reach-v3",
    "reach-wall-v3",
    "shelf-place-v3",
    "sweep-into-v3",
    "sweep-v3",
    "window-open-v3",
    "window-close-v3",
]

# Meta-World's MT10 set (metaworld.env_dict.MT10_V3), in its order.
MT10: list[str] = [
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
]

GROUPS = ("easy", "medium", "hard", "very_hard")

# Difficulty groups of Seo et al., "Masked World Models for Visual Control" (CoRL 2022), appendix,
# which sorts the 50 tasks by how hard they are for an RL agent: 28 easy, 11 medium, 6 hard, 5 very hard.
_GROUP_TASKS: dict[str, list[str]] = {
    "easy": [
        "button-press-v3",
        "button-press-topdown-v3",
        "button-press-topdown-wall-v3",
        "button-press-wall-v3",
        "coffee-button-v3",
        "dial-turn-v3",
        "door-close-v3",
        "door-lock-v3",
        "door-open-v3",
        "door-unlock-v3",
        "drawer-close-v3",
        "drawer-open-v3",
        "faucet-close-v3",
        "faucet-open-v3",
        "handle-press-v3",
        "handle-press-side-v3",
        "handle-pull-v3",
        "handle-pull-side-v3",
        "lever-pull-v3",
        "plate-slide-v3",
        "plate-slide-back-v3",
        "plate-slide-back-side-v3",
        "plate-slide-side-v3",
        "reach-v3",
        "reach-wall-v3",
        "window-close-v3",
        "window-open-v3",
        "peg-unplug-side-v3",
    ],
    "medium": [
        "basketball-v3",
        "bin-picking-v3",
        "box-close-v3",
        "coffee-pull-v3",
        "coffee-push-v3",
        "hammer-v3",
        "peg-insert-side-v3",
        "push-wall-v3",
        "soccer-v3",
        "sweep-v3",
        "sweep-into-v3",
    ],
    "hard": [
        "assembly-v3",
        "hand-insert-v3",
        "pick-out-of-hole-v3",
        "pick-place-v3",
        "push-v3",
        "push-back-v3",
    ],
    "very_hard": [
        "shelf-place-v3",
        "disassemble-v3",
        "stick-pull-v3",
        "stick-push-v3",
        "pick-place-wall-v3",
    ],
}
DIFFICULTY: dict[str, str] = {task: group for group, tasks in _GROUP_TASKS.items() for task in tasks}

# task -> (train instruction, held-out paraphrases). Written for vlaforge; the paraphrases are never
# used in training and serve to test whether a policy follows words rather than a task id.
_TEXT: dict[str, tuple[str, tuple[str, ...]]] = {
    "assembly-v3": (
        "put the ring onto the peg",
        (
            "slide the round nut down over the peg",
            "fit the ring on the peg",
            "assemble the nut onto the post",
        ),
    ),
    "basketball-v3": (
        "put the ball into the basket",
        ("dunk the ball in the hoop", "score the ball through the hoop", "drop the ball into the net"),
    ),
    "bin-picking-v3": (
        "move the block from one bin to the other",
        (
            "carry the cube over into the second bin",
            "transfer the block between the bins",
            "pick the cube out of its bin and drop it in the other one",
        ),
    ),
    "box-close-v3": (
        "put the lid on the box",
        ("close the box with its cover", "place the cover on top of the box", "shut the box using the lid"),
    ),
    "button-press-topdown-v3": (
        "press the button from above",
        ("push the button down from the top", "press down on the button", "hit the button from overhead"),
    ),
    "button-press-topdown-wall-v3": (
        "press the button from above behind the wall",
        (
            "reach past the wall and push the button down",
            "push the button down from the top, past the wall",
            "get around the wall and press down on the button",
        ),
    ),
    "button-press-v3": (
        "press the button",
        ("push the button in", "hit the button from the front", "push the button forward"),
    ),
    "button-press-wall-v3": (
        "press the button behind the wall",
        (
            "reach around the wall and push the button",
            "push the button that is past the wall",
            "get past the wall and press the button in",
        ),
    ),
    "coffee-button-v3": (
        "press the button on the coffee machine",
        ("start the coffee machine", "push the coffee maker's button", "switch on the espresso machine"),
    ),
    "coffee-pull-v3": (
        "pull the mug away from the coffee machine",
        (
            "take the cup out from under the coffee maker",
            "drag the mug back from the machine",
            "slide the cup out of the coffee machine",
        ),
    ),
    "coffee-push-v3": (
        "push the mug under the coffee machine",
        (
            "slide the cup beneath the coffee maker",
            "move the mug into the coffee machine",
            "put the cup under the spout of the machine",
        ),
    ),
    "dial-turn-v3": (
        "turn the dial",
        ("rotate the knob", "twist the dial around", "spin the knob half a turn"),
    ),
    "disassemble-v3": (
        "take the ring off the peg",
        (
            "lift the nut up and off the post",
            "remove the ring from the peg",
            "pull the round nut off the peg",
        ),
    ),
    "door-close-v3": (
        "close the door",
        ("shut the door", "swing the door closed", "push the door shut"),
    ),
    "door-lock-v3": (
        "lock the door",
        ("turn the lock to lock the door", "rotate the door's latch down to lock it", "secure the door lock"),
    ),
    "door-open-v3": (
        "open the door",
        ("swing the door open", "pull the door open by its handle", "get the door open"),
    ),
    "door-unlock-v3": (
        "unlock the door",
        ("turn the lock to unlock the door", "rotate the door's latch to release it", "undo the door lock"),
    ),
    "hand-insert-v3": (
        "put the block into the hole",
        (
            "push the cube into the opening",
            "insert the block in the hole",
            "place the cube down into the hole",
        ),
    ),
    "drawer-close-v3": (
        "close the drawer",
        ("push the drawer shut", "slide the drawer closed", "shut the drawer"),
    ),
    "drawer-open-v3": (
        "open the drawer",
        ("pull the drawer out", "slide the drawer open", "pull the drawer open by its handle"),
    ),
    "faucet-open-v3": (
        "turn the faucet on",
        ("open the tap", "rotate the faucet handle to open it", "turn on the tap"),
    ),
    "faucet-close-v3": (
        "turn the faucet off",
        ("close the tap", "rotate the faucet handle to close it", "shut off the tap"),
    ),
    "hammer-v3": (
        "hammer the nail into the wall",
        (
            "drive the nail in with the hammer",
            "use the hammer to knock the nail in",
            "pound the nail with the hammer",
        ),
    ),
    "handle-press-side-v3": (
        "press the handle down from the side",
        (
            "push the side handle down",
            "press down on the handle from the side",
            "lower the handle from its side",
        ),
    ),
    "handle-press-v3": (
        "press the handle down",
        ("push the handle down", "press down on the handle", "lower the handle"),
    ),
    "handle-pull-side-v3": (
        "pull the handle up from the side",
        ("lift the side handle up", "raise the handle from its side", "pull up on the handle from the side"),
    ),
    "handle-pull-v3": (
        "pull the handle up",
        ("lift the handle", "raise the handle up", "pull up on the handle"),
    ),
    "lever-pull-v3": (
        "pull the lever up",
        ("lift the lever", "raise the lever arm", "swing the lever upward"),
    ),
    "pick-place-wall-v3": (
        "pick up the puck and place it at the goal behind the wall",
        (
            "lift the puck over the wall and put it on the target",
            "carry the puck past the wall to the goal",
            "move the puck across the wall to the target spot",
        ),
    ),
    "pick-out-of-hole-v3": (
        "pick the puck out of the hole",
        ("lift the puck up out of the hole", "take the puck out of the hole", "raise the puck from the hole"),
    ),
    "pick-place-v3": (
        "pick up the puck and place it at the goal",
        (
            "move the puck to the target",
            "carry the puck to the goal spot",
            "grab the puck and put it on the target",
        ),
    ),
    "plate-slide-v3": (
        "slide the plate into the goal",
        (
            "push the plate into the net",
            "slide the dish into the goal",
            "move the plate forward into the goal",
        ),
    ),
    "plate-slide-side-v3": (
        "slide the plate sideways into the goal",
        (
            "push the plate into the net from the side",
            "slide the dish sideways into the goal",
            "move the plate across into the goal",
        ),
    ),
    "plate-slide-back-v3": (
        "slide the plate back out of the goal",
        (
            "pull the plate out of the net",
            "drag the dish back from the goal",
            "bring the plate back out of the goal",
        ),
    ),
    "plate-slide-back-side-v3": (
        "slide the plate sideways out of the goal",
        (
            "pull the plate out of the net from the side",
            "drag the dish sideways out of the goal",
            "bring the plate back out of the goal sideways",
        ),
    ),
    "peg-insert-side-v3": (
        "insert the peg into the hole from the side",
        (
            "push the peg sideways into the hole",
            "put the peg in the hole side-on",
            "slide the peg into the opening",
        ),
    ),
    "peg-unplug-side-v3": (
        "unplug the peg from the side",
        ("pull the peg out sideways", "remove the plug from the socket", "take the peg out of its hole"),
    ),
    "soccer-v3": (
        "push the ball into the goal",
        ("score a goal with the ball", "kick the soccer ball into the net", "roll the ball into the goal"),
    ),
    "stick-push-v3": (
        "push the bottle with the stick",
        (
            "use the stick to shove the bottle forward",
            "grab the stick and push the container with it",
            "move the bottle by pushing it with the stick",
        ),
    ),
    "stick-pull-v3": (
        "pull the bottle with the stick",
        (
            "use the stick to drag the bottle",
            "grab the stick and pull the container with it",
            "hook the bottle with the stick and pull it",
        ),
    ),
    "push-v3": (
        "push the puck to the goal",
        (
            "slide the puck to the target",
            "shove the puck onto the goal",
            "move the puck to the target by pushing",
        ),
    ),
    "push-wall-v3": (
        "push the puck around the wall to the goal",
        (
            "slide the puck past the wall to the target",
            "push the puck to the goal, going around the wall",
            "move the puck beyond the wall onto the target",
        ),
    ),
    "push-back-v3": (
        "pull the puck back to the goal",
        (
            "drag the puck back onto the target",
            "slide the puck backwards to the goal",
            "bring the puck back to the target",
        ),
    ),
    "reach-v3": (
        "reach the goal",
        ("move the gripper to the target", "touch the target point", "bring the hand to the goal position"),
    ),
    "reach-wall-v3": (
        "reach the goal behind the wall",
        (
            "move the gripper over the wall to the target",
            "get the hand past the wall to the goal",
            "touch the target on the far side of the wall",
        ),
    ),
    "shelf-place-v3": (
        "put the block on the shelf",
        ("place the cube onto the shelf", "lift the block up onto the shelf", "set the cube on the shelf"),
    ),
    "sweep-into-v3": (
        "sweep the block into the hole",
        ("push the cube into the hole", "slide the block into the opening", "brush the cube into the hole"),
    ),
    "sweep-v3": (
        "sweep the block off the table",
        (
            "push the cube off the edge of the table",
            "slide the block off the table",
            "clear the cube off the table",
        ),
    ),
    "window-open-v3": (
        "open the window",
        ("slide the window open", "push the window open", "move the window pane to open it"),
    ),
    "window-close-v3": (
        "close the window",
        ("slide the window shut", "push the window closed", "move the window pane to close it"),
    ),
}
INSTRUCTIONS: dict[str, str] = {task: text[0] for task, text in _TEXT.items()}
HELDOUT_INSTRUCTIONS: dict[str, list[str]] = {task: list(text[1]) for task, text in _TEXT.items()}

# Meta-World's expert classes are named Sawyer<Task in CamelCase>V3Policy, except this one.
_EXPERT_EXCEPTIONS = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}

# Meta-World steps MuJoCo `frame_skip` (5) times per action with a timestep of 2.5 ms (all 50 tasks
# share the Sawyer base scene): 80 actions a second. `_check_control_hz` verifies it against the env.
_FRAME_SKIP = 5
_TIMESTEP = 0.0025
CONTROL_HZ: float = 1.0 / (_FRAME_SKIP * _TIMESTEP)

_STATE_DIM = 4  # hand xyz + gripper opening: the first 4 entries of Meta-World's observation


DEFAULT_GL = "osmesa"  # headless CPU rendering (Debian package libosmesa6)


def configure_rendering(backend: str | None = None) -> str:
    """Chooses MuJoCo's OpenGL backend; call it before `mujoco` is first imported in the process.

    MuJoCo reads `MUJOCO_GL` once, when `mujoco` is imported, and PyOpenGL reads `PYOPENGL_PLATFORM`
    when it is imported; neither can be changed afterwards. So this sets them explicitly, at the
    moment rendering is first needed, instead of at import time: `MetaWorldEnv` and `make_expert` call
    it before importing Meta-World (which imports mujoco), the rollout and collection workers call it
    in their initializers, and the `vlaforge` command calls it at start-up.

    Args:
        backend: "osmesa" (CPU), "egl" (GPU, headless) or "glfw" (a window). None keeps a backend the
            user already chose in `MUJOCO_GL`, else uses OSMesa.

    Returns:
        The backend in effect. A user's `PYOPENGL_PLATFORM` is kept; otherwise it follows the backend.
        When mujoco was already imported with another backend, a `RuntimeWarning` says so (the earlier
        choice stays in effect).
    """
    gl = backend or os.environ.get("MUJOCO_GL") or DEFAULT_GL
    previous = os.environ.get("MUJOCO_GL")
    os.environ["MUJOCO_GL"] = gl
    os.environ.setdefault("PYOPENGL_PLATFORM", gl)
    if "mujoco" in sys.modules and previous != gl:
        warnings.warn(
            f"mujoco was imported before configure_rendering({gl!r}) and keeps its backend "
            f"{previous or 'default'!r}; call configure_rendering before importing mujoco or metaworld",
            RuntimeWarning,
            stacklevel=2,
        )
    return gl


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """Turns a task spec into a list of Meta-World v3 task names.

    Args:
        spec: "mt10", "mt50" (or "all"), a difficulty group ("easy", "medium", "hard", "very_hard"), a
            task name ("reach-v3"; the "-v3" may be left out), or a comma list / list of any of these.

    Returns:
        The tasks in order, without duplicates.

    Raises:
        ValueError: for an unknown name, with the closest known names.
    """
    out: list[str] = []
    for item in as_list(spec):
        key = item.strip().lower()
        if key == "mt10":
            names = MT10
        elif key in ("mt50", "all"):
            names = ALL_TASKS
        elif key in _GROUP_TASKS:
            names = _GROUP_TASKS[key]
        elif key in DIFFICULTY:
            names = [key]
        elif f"{key}-v3" in DIFFICULTY:
            names = [f"{key}-v3"]
        else:
            vocabulary = ["mt10", "mt50", *GROUPS, *ALL_TASKS]
            close = difflib.get_close_matches(key, vocabulary, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise InputError(
                f"unknown Meta-World task {item!r}{hint} Use mt10, mt50, a group {list(GROUPS)} "
                f"or v3 task names such as 'reach-v3'."
            )
        out.extend(n for n in names if n not in out)
    if not out:
        raise InputError(f"no tasks in {spec!r}; use mt10, mt50, a group {list(GROUPS)} or task names")
    return out


def _check_task(task: str) -> str:
    return resolve_tasks(task)[0] if task not in DIFFICULTY else task


def instruction(task: str, split: str = "train", index: int = 0) -> str:
    """The instruction for a task.

    Args:
        task: a v3 task name.
        split: "train" (the instruction used for training data) or "heldout" (paraphrases kept out of
            training, for testing instruction following).
        index: which held-out paraphrase (taken modulo their number); ignored for "train".
    """
    task = _check_task(task)
    if split == "train":
        return INSTRUCTIONS[task]
    if split == "heldout":
        options = HELDOUT_INSTRUCTIONS[task]
        return options[index % len(options)]
    raise InputError(f"unknown instruction split {split!r}; use 'train' or 'heldout'")


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


def episode_seed(seed: int, task: str, index: int) -> int:
    """A stable 31-bit seed for episode `index` of `task` under the run seed `seed`.

    Uses sha256 of the three values, so it is the same in every process and Python version (Python's
    `hash()` of a string is salted per process).
    """
    digest = hashlib.sha256(f"vlaforge/{int(seed)}/{task}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def expert_class_name(task: str) -> str:
    """The name of the scripted expert class of `task` in `metaworld.policies`."""
    task = _check_task(task)
    if task in _EXPERT_EXCEPTIONS:
        return _EXPERT_EXCEPTIONS[task]
    camel = "".join(part.capitalize() for part in task.removesuffix("-v3").split("-"))
    return f"Sawyer{camel}V3Policy"


def make_expert(task: str):
    """A fresh instance of the task's scripted expert (`get_action(raw_obs_39) -> (4,)`)."""
    configure_rendering()  # importing metaworld imports mujoco, which fixes its GL backend
    import metaworld.policies as policies

    name = expert_class_name(task)
    cls = getattr(policies, name, None)
    if cls is None:
        raise InputError(f"metaworld.policies has no {name} for {task}; is metaworld >= 3.0 installed?")
    return cls()


def camera_names_of(model) -> list[str]:
    import mujoco

    return [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]


class MetaWorldEnv:
    """One Meta-World v3 task with vlaforge observations.

    Args:
        task: a v3 task name (see `ALL_TASKS`).
        cameras: camera names (a comma string or a list): corner, corner2, corner3, corner4, topview,
            behindGripper, gripperPOV.
        image_size: side of the square images in pixels.
        max_steps: the episode is done (truncated) after this many steps.
        render: False skips rendering (observations then carry an empty `images` dict), for fast expert
            rollouts.

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
    ) -> None:
        configure_rendering()  # before metaworld imports mujoco
        from metaworld.env_dict import ENV_CLS_MAP

        self.task = _check_task(task)
        self.cameras = as_list(cameras)
        if not self.cameras:
            raise InputError("MetaWorldEnv needs at least one camera (e.g. 'corner2')")
        if image_size <= 0 or max_steps <= 0:
            raise InputError(f"image_size ({image_size}) and max_steps ({max_steps}) must be > 0")
        self.image_size = int(image_size)
        self.max_steps = int(max_steps)
        self.render_images = bool(render)  # may be switched at any time
        self.frames_rendered = 0
        self.embodiment = embodiment(self.cameras, self.image_size)

        env = ENV_CLS_MAP[self.task]()
        env._partially_observable = False  # the experts read the goal position
        env.__dict__.pop("sawyer_observation_space", None)  # cached with the goal hidden; rebuild
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True  # draw positions from env.np_random, which reset(seed) sets
        env.max_path_length = self.max_steps
        self._env = env
        self._expert = make_expert(self.task)
        self._raw_obs: np.ndarray | None = None
        self._steps = 0
        _check_control_hz(env)

        valid = camera_names_of(env.model)
        unknown = [c for c in self.cameras if c not in valid]
        if unknown:
            raise InputError(f"unknown Meta-World camera(s) {unknown}; valid cameras are {valid}")
        self._cam_ids = [valid.index(c) for c in self.cameras]
        self._renderer = None  # made on first use: an env that never renders needs no GL context
        self._close_renderer: weakref.finalize | None = None
        self._upside_down: dict[str, bool] = {}

    # -- images ---------------------------------------------------------------------------------------

    def _is_upside_down(self, cam_id: int) -> bool:
        """True for a fixed camera whose image-up axis (its local +y) points below the horizon."""
        import mujoco

        model, data = self._env.model, self._env.data
        if model.cam_mode[cam_id] != mujoco.mjtCamLight.mjCAMLIGHT_FIXED:
            return False
        up_world = data.cam_xmat[cam_id].reshape(3, 3)[:, 1]  # the camera's +y axis in world coordinates
        return bool(up_world[2] < 0)

    def _get_renderer(self):
        if self._renderer is None:
            import mujoco

            model = self._env.model
            vis = model.vis.global_
            vis.offwidth = max(int(vis.offwidth), self.image_size)  # the offscreen buffer bounds the size
            vis.offheight = max(int(vis.offheight), self.image_size)
            # No multisample anti-aliasing: 2.6x faster through OSMesa (8.5 vs 22 ms a 128 px frame) at the
            # cost of slightly jagged edges. Set everywhere so that images look the same on every machine.
            model.vis.quality.offsamples = 0
            self._renderer = mujoco.Renderer(model, self.image_size, self.image_size)
            # Shadows and reflections cost ~8x the render time through OSMesa and add little for a policy.
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            # Free the GL context when the env is collected or at exit (atexit runs before module teardown);
            # left to the renderer's own __del__, OSMesa's free function may already be gone at shutdown.
            self._close_renderer = weakref.finalize(self, _free_renderer, self._renderer)
        return self._renderer

    def render_raw(self, camera: str) -> np.ndarray:
        """The camera's image exactly as MuJoCo renders it (no orientation fix), uint8 (S, S, 3)."""
        renderer = self._get_renderer()
        renderer.update_scene(self._env.data, camera=camera)
        return renderer.render()

    def _images(self, render: bool | None) -> dict[str, np.ndarray]:
        if not (self.render_images if render is None else render):
            return {}
        images = {}
        for name, cam_id in zip(self.cameras, self._cam_ids):
            img = self.render_raw(name)
            if name not in self._upside_down:
                self._upside_down[name] = self._is_upside_down(cam_id)
            if self._upside_down[name]:
                img = img[::-1, ::-1]  # undo the camera's 180-degree roll
            images[name] = np.ascontiguousarray(img)
            self.frames_rendered += 1
        return images

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
        return Observation(images=self._images(render), state=state, instruction=INSTRUCTIONS[self.task])

    # -- episode --------------------------------------------------------------------------------------

    def reset(self, seed: int, render: bool | None = None) -> Observation:
        """Starts an episode whose object and goal positions are a function of `seed` alone.

        Args:
            seed: the episode's seed.
            render: whether the returned observation carries images; None follows `render_images`.
        """
        self._env.np_random = np.random.default_rng(int(seed))
        raw, _ = self._env.reset()
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

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state, float32 (4,) in [-1, 1]."""
        if self._raw_obs is None:
            raise RuntimeError(f"{self.task}: call reset(seed) before expert_action()")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experts warn when their gains exceed the action range
            action = self._expert.get_action(self._raw_obs)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    @property
    def raw_observation(self) -> np.ndarray:
        """Meta-World's full 39-D observation of the current step (hand, objects, previous frame, goal)."""
        if self._raw_obs is None:
            raise RuntimeError(f"{self.task}: call reset(seed) first")
        return self._raw_obs

    def close(self) -> None:
        if self._close_renderer is not None:
            self._close_renderer()  # runs renderer.close once, whichever comes first
            self._close_renderer = None
        self._renderer = None
        self._env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _free_renderer(renderer) -> None:
    """Closes a `mujoco.Renderer` without harming the other renderers of this process.

    `Renderer.close` frees its GL context first and its MuJoCo render context (textures, framebuffers)
    second, when some other context may be current: those GL deletions then hit the objects of whichever
    renderer drew last, whose images come out garbled from then on. Batched evaluation keeps several envs
    alive in one process, so the render context is freed here with its own GL context current.
    """
    gl, mjr = getattr(renderer, "_gl_context", None), getattr(renderer, "_mjr_context", None)
    if gl is not None and mjr is not None:
        gl.make_current()
        mjr.free()
        renderer._mjr_context = None
    renderer.close()


def _check_control_hz(env) -> None:
    rate = 1.0 / (env.frame_skip * env.model.opt.timestep)
    if abs(rate - CONTROL_HZ) > 1e-6:
        raise RuntimeError(
            f"this Meta-World steps at {rate:.3f} Hz but vlaforge assumes {CONTROL_HZ:.3f} Hz "
            f"(frame_skip {env.frame_skip}, timestep {env.model.opt.timestep}); check the metaworld version"
        )
