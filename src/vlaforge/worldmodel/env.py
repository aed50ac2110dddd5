"""The world model as an environment (`--env worldmodel:RUN`): the same `Env` protocol as a simulator.

`reset(seed)` starts from the real first frame (and state) of one of the world model's held-out episodes
of the task: the one recorded at that very seed when there is one (`vlaforge worldmodel train --starts`,
the scenes of the simulator's evaluation at the same seeds), else episode seed mod their number.
`step(action)` imagines the next frame (a model trained with a stride N imagines after every N-th step and
shows the last frame in between), and success is the judge's calibrated probability >= 0.5 on that
frame. The robot state is the episode's first state throughout, unless the run has a state predictor
(``vlaforge worldmodel state RUN``, in ``RUN/state``): then it moves with every imagined frame. RUN is a
`vlaforge worldmodel train` run holding its judge in ``RUN/judge`` (``vlaforge worldmodel judge --out
RUN/judge``). When the state predictor also learnt the scene's state (datasets recording
`observation.environment_state`), the scene moves with it too and success is its scene judge's
(`vlaforge.worldmodel.scene`) on the predicted state instead of the frame judge's.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from vlaforge.envs.base import EnvSpec
from vlaforge.errors import InputError
from vlaforge.types import Embodiment, Observation
from vlaforge.worldmodel.config import WM_CONFIG, model_dir
from vlaforge.worldmodel.data import slug
from vlaforge.worldmodel.state import STATE_CONFIG, state_dir

PREFIX = "worldmodel:"
SUCCESS_THRESHOLD = 0.5


class WorldModelEnv:
    """One task of a world model (see the module docstring)."""

    def __init__(self, spec_root: Path, task: str, rows: list[int], instruction: str, emb: Embodiment,
                 max_steps: int, seeds: dict[int, int] | None = None) -> None:  # fmt: skip
        from safetensors.numpy import load_file

        from vlaforge.worldmodel.judge import load_judge
        from vlaforge.worldmodel.scene import load_scene
        from vlaforge.worldmodel.state import load_state_predictor
        from vlaforge.worldmodel.train import STARTS, load_worldmodel

        self.task, self.embodiment, self.max_steps = task, emb, max_steps
        self.render_images, self.frames_rendered = True, 0
        self.model = load_worldmodel(spec_root)
        self.state_model = load_state_predictor(spec_root, self.model.stride) if emb.state_dim else None
        scene = load_scene(state_dir(spec_root), self.state_model) if self.state_model is not None else None
        self.scene_starts, self.scene_judge = scene if scene is not None else (None, None)
        if self.scene_judge is not None:
            self.task_index = self.scene_judge.task_index(task)
        else:
            self.judge, self.judge_meta = load_judge(judge_dir(spec_root))
        starts = load_file(str(spec_root / STARTS))
        self.first_frames, self.first_states = starts["frames"], starts.get("states")
        self.rows, self.instruction = rows, instruction
        self.seeds = seeds or {}  # episode seed -> row of the held-out episode recorded at it
        self.camera = emb.camera_names[0]

    def _obs(self) -> Observation:
        state = self._state if self.embodiment.state_dim else None
        return Observation(images={self.camera: self._frame}, state=state, instruction=self.instruction)

    def reset(self, seed: int, render: bool | None = None) -> Observation:
        row = self.seeds.get(int(seed), self.rows[int(seed) % len(self.rows)])
        from vlaforge.worldmodel.model import Imagination

        self.im = Imagination(self.model, torch.Generator().manual_seed(int(seed)))
        self._frame = self.first_frames[row]
        self.im.start(torch.from_numpy(self._frame[None]))
        dim = self.embodiment.state_dim
        have = self.first_states is not None and self.first_states.shape[1] == dim
        self._state = self.first_states[row] if have else np.zeros(dim, np.float32)
        if self.scene_starts is not None:
            self._scene = self._scene0 = self.scene_starts[row]
        if self.scene_judge is not None:
            self._p = self._scene_prob()
        self._pending: list[np.ndarray] = []  # the actions since the last imagined frame
        self.steps, self.frames_rendered = 0, self.frames_rendered + 1
        return self._obs()

    def step(self, action: np.ndarray, render: bool | None = None) -> tuple[Observation, float, bool, dict]:
        a = torch.as_tensor(np.asarray(action, np.float32)[None])
        self._frame = self.im.step(a)[0].cpu().numpy()
        self._pending.append(np.asarray(action, np.float32))
        if len(self._pending) == self.model.stride:  # a frame was imagined: the state moves with it
            if self.state_model is not None:
                full = (
                    self._state if self.scene_starts is None else np.concatenate([self._state, self._scene])
                )
                s = torch.from_numpy(np.asarray(full, np.float32)[None])
                acts = torch.from_numpy(np.stack(self._pending)[None])
                full = self.state_model.predict(s, acts)[0].numpy()
                self._state = full[: self.state_model.robot_dim]
                if self.scene_starts is not None:
                    self._scene = full[self.state_model.robot_dim :]
                if self.scene_judge is not None:
                    self._p = self._scene_prob()
            self._pending = []
        self.steps += 1
        self.frames_rendered += 1
        p = self._p if self.scene_judge is not None else self.success_prob(self._frame)
        success = p >= SUCCESS_THRESHOLD
        return (
            self._obs(),
            float(success),
            bool(success or self.steps >= self.max_steps),
            {"success": success, "success_prob": p},
        )

    def _scene_prob(self) -> float:
        """The scene judge's probability of success for the current (predicted) robot and scene state."""
        one = lambda x: np.asarray(x, np.float32)[None]  # noqa: E731
        return float(
            self.scene_judge.prob(
                one(self._state), one(self._scene), one(self._scene0), np.array([self.task_index])
            )[0]
        )

    def success_prob(self, frame: np.ndarray) -> float:
        x = torch.from_numpy(frame[None])
        size = int(self.judge_meta["image_size"])
        if x.shape[1] != size:
            x = F.interpolate(
                x.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear", antialias=True
            )
            x = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return float(self.judge.prob(x)[0])

    def observe(self, render: bool | None = None) -> Observation:
        return self._obs()

    def expert_action(self) -> np.ndarray:
        raise InputError("a world model has no scripted expert; evaluate a policy in it instead")

    def close(self) -> None:
        pass


def has_scene_judge(model: Path) -> bool:
    """Whether the world model in directory `model` judges success from its predicted scene state
    (`vlaforge worldmodel state` on datasets that record it) rather than from its frames."""
    from vlaforge.worldmodel.scene import SCENE_JUDGE_WEIGHTS

    d = state_dir(model)
    if not (d / STATE_CONFIG).is_file() or not (d / SCENE_JUDGE_WEIGHTS).is_file():
        return False
    cfg = json.loads((d / STATE_CONFIG).read_text())
    return bool(cfg.get("scene_dim") and cfg.get("scene_judge"))


def judge_dir(model: Path) -> Path:
    """Where the success judge of the world model in directory `model` lives: ``RUN/judge`` beside
    ``RUN/last``, or inside a model directory of its own."""
    return model.parent / "judge" if model.name == "last" else model / "judge"


@functools.lru_cache(maxsize=8)
def world_model_spec(path: str) -> EnvSpec:
    """The `EnvSpec` of the world model run at `path` (its ``last/`` or a model directory)."""
    root = model_dir(path)
    if not (root / WM_CONFIG).is_file():
        raise InputError(f"--env {PREFIX}{path}: no {WM_CONFIG}; give a `vlaforge worldmodel train` run")
    cfg = json.loads((root / WM_CONFIG).read_text())
    if not cfg.get("heldout"):
        raise InputError(
            f"{path}: the world model holds out no episodes to start from; train it with --heldout >= 1"
        )
    if not cfg.get("embodiment"):
        raise InputError(f"{path}: the world model records no embodiment (its datasets had none)")
    judge, scene_judged = judge_dir(root), has_scene_judge(root)
    if not scene_judged and not (judge / "judge.json").is_file():
        raise InputError(
            f"{path}: no success judge in {judge}; train one with `vlaforge worldmodel judge --out {judge}`"
        )
    rows: dict[str, list[int]] = {}
    seeds: dict[str, dict[int, int]] = {}
    words: dict[str, str] = {}
    for i, h in enumerate(cfg["heldout"]):
        task = h.get("task") or slug(h["instruction"])
        rows.setdefault(task, []).append(i)
        words.setdefault(task, h["instruction"])
        if h.get("seed") is not None:
            seeds.setdefault(task, {}).setdefault(int(h["seed"]), i)
    tasks = list(rows)
    base = Embodiment.from_dict(cfg["embodiment"])
    emb_of = lambda cameras=None, image_size=None: base  # noqa: E731 - the world model renders one view at one size
    max_steps = 100
    make = lambda task, cameras=None, image_size=None, max_steps=max_steps, render=False: WorldModelEnv(  # noqa: E731
        root, task, rows[task], words[task], base, int(max_steps), seeds.get(task)
    )
    return EnvSpec(
        name=f"{PREFIX}{path}", title=f"world model {Path(path).name}", make=make, embodiment=emb_of,
        tasks=tasks, task_sets={}, groups=("imagined",), difficulty=dict.fromkeys(tasks, "imagined"),
        instructions=words, heldout_instructions={t: [w] for t, w in words.items()}, default_tasks=",".join(tasks),
        cameras=tuple(base.camera_names), image_size=base.image_size, max_steps=max_steps,
        control_hz=float(cfg.get("fps") or base.control_hz), robot_type=base.robot_type,
        success=f"the scene judge's calibrated probability >= {SUCCESS_THRESHOLD} on the predicted state"
        if scene_judged else f"the success judge's calibrated probability >= {SUCCESS_THRESHOLD} on an imagined frame",
        extra={"imitates": cfg.get("env"), "start_seeds": {t: sorted(v) for t, v in seeds.items()},
               "frame_stride": int(cfg.get("stride", 1)),
               "state": "predicted" if (state_dir(root) / STATE_CONFIG).is_file() else "first frame's",
               "judge": "scene state" if scene_judged else "frames"},
    )  # fmt: skip
