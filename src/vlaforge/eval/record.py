"""`vlaforge eval --record DIR`: the evaluation's own rollouts saved as a LeRobot v3.0 dataset.

A world model has to see the policy fail as well as succeed, so evaluation rollouts are worth keeping.
`RecordingEnv` wraps a task's env inside the rollout worker, renders every step and keeps the episode's
trace; the worker saves each trace as one safetensors file; `write_recording` turns them into a dataset
with `LeRobotWriter`, in job order.

Frame layout (as `vlaforge collect` writes, plus the last observation): an episode of T steps has T + 1
frames; frame t holds the observation before action t, `action` t and `next.success` t (success after
that action). After a success the policy acts on for `--record-tail` steps (the evaluation's outcome and
`steps` still end at the success; `tail_steps` per episode counts the extra ones). The last frame is the
final observation: its action is zeros and its `next.success` repeats the last step's. `observation.success` is the
success of the scene shown in the frame (frame 0: False; frame t: `next.success` t - 1), the label a
success judge learns from. meta/info.json's "vlaforge" entry holds the policy, its weights' sha256 and
each episode's task, seed and outcome. An env that reports the scene's state (`environment_state()`,
e.g. Meta-World's object and goal poses) adds it as `observation.environment_state`, named by its spec's
``extra["environment_state_names"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.atomic import atomic_write
from vlaforge.envs.base import Env, EnvSpec
from vlaforge.types import Embodiment, Observation


class RecordingEnv:
    """An `Env` that renders every step and keeps the episode's frames, states, actions and success flags
    (and the scene's state, when the env reports it)."""

    def __init__(self, env: Env):
        self.env = env
        self._scene = getattr(env, "environment_state", None)
        self.task = env.task
        self.embodiment = env.embodiment
        self.render_images = True
        self.clear()

    @property
    def frames_rendered(self) -> int:
        return self.env.frames_rendered

    def clear(self) -> None:
        self.images: dict[str, list[np.ndarray]] = {c: [] for c in self.embodiment.camera_names}
        self.states: list[np.ndarray] = []
        self.scene: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.success: list[bool] = []

    def _keep(self, obs: Observation) -> None:
        for c in self.images:
            self.images[c].append(np.asarray(obs.images[c], np.uint8))
        state = obs.state if obs.state is not None else np.zeros(self.embodiment.state_dim, np.float32)
        self.states.append(np.asarray(state, np.float32))
        if self._scene is not None:
            self.scene.append(np.asarray(self._scene(), np.float32))

    def reset(self, seed: int, render: bool | None = None) -> Observation:
        self.clear()
        obs = self.env.reset(seed, render=True)
        self._keep(obs)
        return obs

    def step(self, action: np.ndarray, render: bool | None = None) -> tuple[Observation, float, bool, dict]:
        obs, reward, done, info = self.env.step(action, render=True)
        self.actions.append(np.asarray(action, np.float32))
        self.success.append(bool(info.get("success")))
        self._keep(obs)
        return obs, reward, done, info

    def observe(self, render: bool | None = None) -> Observation:
        return self.env.observe(render=True)

    def expert_action(self) -> np.ndarray:
        return self.env.expert_action()

    def close(self) -> None:
        self.env.close()

    def trace(self) -> dict[str, np.ndarray]:
        """The episode as dataset columns (see the module docstring for the layout)."""
        n = len(self.actions)
        actions = np.zeros((n + 1, self.embodiment.action_dim), np.float32)
        if n:
            actions[:n] = np.stack(self.actions)
        nxt = np.array([*self.success, self.success[-1] if n else False], bool)
        seen = np.array([False, *self.success], bool)
        out = {f"observation.images.{c}": np.stack(v) for c, v in self.images.items()}
        out.update({"observation.state": np.stack(self.states), "action": actions})
        if self.scene:
            out["observation.environment_state"] = np.stack(self.scene)
        out.update({"next.success": nxt, "observation.success": seen})
        return out

    def save(self, path: str | Path) -> Path:
        """Writes `trace()` to `path` (safetensors, atomically)."""
        from safetensors.numpy import save_file

        arrays = {
            k: np.ascontiguousarray(v.astype(np.uint8) if v.dtype == bool else v)
            for k, v in self.trace().items()
        }
        with atomic_write(path) as tmp:
            save_file(arrays, str(tmp))
        return Path(path)


def trace_path(record_dir: str | Path, task: str, episode: int) -> Path:
    """Where the worker saves the trace of (task, episode)."""
    return Path(record_dir) / f"{task}__{int(episode):05d}.safetensors"


def features(emb: Embodiment, scene_names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The dataset's features for a policy's embodiment (its cameras at its image size), with the scene's
    state when `scene_names` name its entries."""
    size = int(emb.image_size)
    out: dict[str, dict[str, Any]] = {
        f"observation.images.{c}": {"dtype": "video", "shape": [size, size, 3], "names": None}
        for c in emb.camera_names
    }
    out["observation.state"] = {"dtype": "float32", "shape": [emb.state_dim], "names": list(emb.state_names)}
    if scene_names:
        out["observation.environment_state"] = {
            "dtype": "float32", "shape": [len(scene_names)], "names": list(scene_names),
        }  # fmt: skip
    out["action"] = {"dtype": "float32", "shape": [emb.action_dim], "names": list(emb.action_names)}
    out["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    out["observation.success"] = {"dtype": "bool", "shape": [1], "names": None}
    return out


def write_recording(
    out: str | Path,
    record_dir: str | Path,
    records: list[dict],
    env: EnvSpec,
    emb: Embodiment,
    policy: str,
    checkpoint: dict | None,
    overwrite: bool = False,
) -> Path:
    """Writes the saved traces of `records` (the evaluation's episodes, in order) as a LeRobot v3.0 dataset.

    Args:
        out: the dataset directory.
        record_dir: where the workers saved the traces (`trace_path`).
        records: the evaluation's episode records (task, episode, seed, instruction, success, steps).
        env: the environment evaluated in.
        emb: the policy's embodiment (cameras, image size, state and action dims).
        policy: the evaluated policy (checkpoint path or baseline name).
        checkpoint: the evaluation's checkpoint entry (path, model_sha256), None for a baseline.
        overwrite: replace an existing `out`.
    """
    from safetensors.numpy import load_file

    from vlaforge.data.lerobot_writer import LeRobotWriter

    episodes = [
        {
            **{k: r[k] for k in ("task", "episode", "seed", "instruction", "success", "steps")},
            "tail_steps": int(r.get("tail_steps", 0)),
        }
        for r in records
    ]
    info = {
        "embodiment": emb.to_dict(),
        "env": env.name,
        "source": "vlaforge eval --record",
        "policy": str(policy),
        "model_sha256": (checkpoint or {}).get("model_sha256"),
        "episodes": episodes,
    }
    first = (
        load_file(str(trace_path(record_dir, records[0]["task"], records[0]["episode"]))) if records else {}
    )
    scene = first.get("observation.environment_state")
    names = None
    if scene is not None:
        names = list(
            env.extra.get("environment_state_names") or [f"scene_{i}" for i in range(scene.shape[1])]
        )
        if len(names) != scene.shape[1]:
            raise RuntimeError(f"{env.name}: {len(names)} scene-state names for {scene.shape[1]} values")
    with LeRobotWriter(
        out, fps=env.control_hz, features=features(emb, names), robot_type=env.robot_type,
        overwrite=overwrite, extra_info={"vlaforge": info},
    ) as writer:  # fmt: skip
        for r in records:
            arrays = load_file(str(trace_path(record_dir, r["task"], r["episode"])))
            frames = {k: (v.astype(bool) if "success" in k else v) for k, v in arrays.items()}
            writer.add_episode(r["instruction"], frames)
    return Path(out)
