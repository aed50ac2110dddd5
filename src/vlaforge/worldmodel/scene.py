"""Success judged from the scene's state, for a world model that predicts it.

A judge of 32-pixel frames misses successes a few pixels show (an opened window), so the rates a world
model gives the policies measure the judge. Where the recordings carry the scene's state
(`observation.environment_state`: Meta-World's object and goal poses, from which the simulator's own
success test is computed), `vlaforge worldmodel state` learns it beside the robot state, and `SceneJudge`
reads success from the robot state, the scene now and its change since the episode's first frame, and the
task: an MLP trained on the recordings' training frames with the simulator's labels (balanced batches,
successes are rare), calibrated by Platt scaling on the held-out episodes (`vlaforge.worldmodel.judge`).

Its report reads it twice on the held-out episodes: on their real states, and on the states the predictor
gives when it replays each episode open loop from its first state under the recorded actions (a
prediction every stride, the states the world model's environment will judge), per task the hit rate on
successful frames, the false alarms and the episodes it would end before the simulator's success.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from vlaforge.errors import InputError
from vlaforge.worldmodel.config import INPUT_STD_FLOOR, STATE_CONFIG
from vlaforge.worldmodel.data import Episodes, task_key
from vlaforge.worldmodel.judge import balanced_accuracy, call_rates, ece, fit_platt, tally_calls

SCENE_JUDGE_WEIGHTS = "scene_judge.safetensors"
SCENE_STARTS = "scene_starts.safetensors"


class SceneJudge(nn.Module):
    """(robot state, scene, scene at the episode's start, task) -> the logit of success."""

    def __init__(self, robot_dim: int, scene_dim: int, tasks: list[str], width: int = 64):
        super().__init__()
        self.robot_dim, self.scene_dim, self.tasks = robot_dim, scene_dim, list(tasks)
        n_in = robot_dim + 2 * scene_dim
        self.net = nn.Sequential(
            nn.Linear(n_in + len(self.tasks), width), nn.GELU(),
            nn.Linear(width, width), nn.GELU(),
            nn.Linear(width, 1),
        )  # fmt: skip
        self.register_buffer("in_mean", torch.zeros(n_in))
        self.register_buffer("in_std", torch.ones(n_in))
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("bias", torch.zeros(()))

    def task_index(self, task: str) -> int:
        if task not in self.tasks:
            raise InputError(f"the scene judge knows the tasks {self.tasks}, not {task!r}")
        return self.tasks.index(task)

    @staticmethod
    def inputs(robot: np.ndarray, scene: np.ndarray, scene0: np.ndarray) -> np.ndarray:
        """The unnormalised features (B, R + 2E): robot state, scene, scene's change since the start."""
        return np.concatenate([robot, scene, scene - scene0], axis=1).astype(np.float32)

    def logits(self, x: torch.Tensor, task_idx: torch.Tensor) -> torch.Tensor:
        """x (B, R + 2E) from `inputs`, task_idx (B,) -> uncalibrated logits (B,)."""
        onehot = F.one_hot(task_idx, len(self.tasks)).float()
        return self.net(torch.cat([(x - self.in_mean) / self.in_std, onehot], dim=1))[:, 0]

    @torch.no_grad()
    def prob(
        self, robot: np.ndarray, scene: np.ndarray, scene0: np.ndarray, task_idx: np.ndarray
    ) -> np.ndarray:
        """The calibrated probability of success (B,) for the rows of (B, R), (B, E), (B, E) and (B,) tasks."""
        x = torch.from_numpy(self.inputs(robot, scene, scene0))
        z = self.logits(x, torch.as_tensor(np.asarray(task_idx), dtype=torch.long))
        return torch.sigmoid(z / self.temperature + self.bias).numpy()


def predicted_states(predictor, eps: Episodes, e: int) -> tuple[np.ndarray, np.ndarray]:
    """Episode `e` replayed open loop by `predictor` (a `StatePredictor` of robot + scene state) from its
    first real state under its recorded actions: the predicted states (K, D) every stride, and the frames
    (K,) of the episode they stand for."""
    a, b = eps.bounds[e]
    n = predictor.stride
    state = torch.from_numpy(np.concatenate([eps.states[a], eps.scene[a]])[None].astype(np.float32))
    preds, ts = [], list(range(n, b - a, n))
    for t in ts:
        state = predictor.predict(
            state, torch.from_numpy(eps.actions[a + t - n : a + t][None].astype(np.float32))
        )
        preds.append(state[0].numpy())
    d = eps.states.shape[1] + eps.scene.shape[1]
    return (np.stack(preds) if preds else np.zeros((0, d), np.float32)), np.array(ts, np.int64)


def _rows(eps: Episodes, episodes: list[int], tasks: list[str], predictor=None) -> tuple[np.ndarray, ...]:
    """Every frame of `episodes` (or, with `predictor`, every predicted frame of their open-loop replays):
    features (P, R + 2E), task index (P,), label (P,)."""
    xs, ts, ys, r = [], [], [], eps.states.shape[1]
    for e in episodes:
        a, b = eps.bounds[e]
        if predictor is None:
            robot, scene, labels = eps.states[a:b], eps.scene[a:b], eps.success[a:b]
        else:
            pred, at = predicted_states(predictor, eps, e)
            robot, scene, labels = pred[:, :r], pred[:, r:], eps.success[a:b][at]
        xs.append(SceneJudge.inputs(robot, scene, np.repeat(eps.scene[a : a + 1], len(scene), 0)))
        ts.append(np.full(len(scene), tasks.index(task_key(eps, e)), np.int64))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ts), np.concatenate(ys)


def fit_scene_judge(
    eps: Episodes,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    width: int = 64,
    seed: int = 0,
    predictor=None,
) -> tuple[SceneJudge, dict]:
    """A `SceneJudge` trained on the training episodes of `eps` (which must have `states` and `scene`) and
    calibrated on its held-out ones; returns it (eval mode) and its report on the held-out episodes.

    With `predictor` it learns from, is calibrated and reported on the states `predictor` gives in
    open-loop replays of the episodes (`predicted_states`), the states it will judge inside the world
    model, with the simulator's label of the frame each stands for (as a judge of imagined frames)."""  # fmt: skip
    tasks = sorted({task_key(eps, e) for e in range(len(eps.bounds))})
    x, t, y = _rows(eps, eps.train, tasks, predictor)
    if not y.any() or y.all():
        raise InputError(
            f"the training episodes have {int(y.sum())} successful and {int((~y).sum())} unsuccessful frames; "
            "a scene judge needs both (record failures and successes with `vlaforge eval --record`)"
        )
    torch.manual_seed(seed)
    judge = SceneJudge(eps.states.shape[1], eps.scene.shape[1], tasks, width)
    judge.in_mean.copy_(torch.from_numpy(x.mean(0)))
    judge.in_std.copy_(torch.from_numpy(np.maximum(x.std(0), INPUT_STD_FLOOR)))
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    opt = torch.optim.AdamW(judge.parameters(), lr=lr)
    x_t, t_t, y_t = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y.astype(np.float32))
    for step in tqdm(range(steps), desc="scene judge", unit="step"):
        rng = np.random.default_rng([seed, step])
        i = torch.from_numpy(
            np.concatenate([rng.choice(pos, batch_size // 2), rng.choice(neg, batch_size - batch_size // 2)])
        )
        loss = F.binary_cross_entropy_with_logits(judge.logits(x_t[i], t_t[i]), y_t[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    judge.eval()
    held = list(eps.heldout) or eps.train
    xh, th, yh = _rows(eps, held, tasks, predictor)
    with torch.no_grad():
        z = judge.logits(torch.from_numpy(xh), torch.from_numpy(th)).numpy()
    temp, bias = fit_platt(z, yh)
    judge.temperature.fill_(temp)
    judge.bias.fill_(bias)
    cal = np.exp(-np.logaddexp(0.0, -(z / temp + bias)))  # sigmoid, without overflow
    report = {
        "frames": int(len(yh)), "successful_frames": int(yh.sum()),
        "split": "held-out episodes" if eps.heldout else "training episodes (none held out)",
        "accuracy": round(float(((cal >= 0.5) == yh).mean()), 4),
        "balanced_accuracy": round(balanced_accuracy(cal, yh), 4),
        "temperature": round(temp, 4), "bias": round(bias, 4), "ece_calibrated": round(ece(cal, yh), 4),
        "tasks": tasks, "states": "real" if predictor is None else "predicted",
    }  # fmt: skip
    return judge, report


def on_predicted(judge: SceneJudge, predictor, eps: Episodes, episodes: list[int]) -> dict[str, dict]:
    """Per task, the judge on the states `predictor` (a `StatePredictor` of robot + scene state) gives each
    episode of `episodes` replayed open loop from its first state under its recorded actions, read at the
    predicted frames (every stride) against the simulator's label there: the hit rate on successful frames
    (tpr), the false alarms (fpr) and the episodes it calls a success in before the simulator does."""
    r_dim, out = judge.robot_dim, {}
    for e in episodes:
        a, b = eps.bounds[e]
        p, ts = predicted_states(predictor, eps, e)
        task = task_key(eps, e)
        if len(p):
            prob = judge.prob(p[:, :r_dim], p[:, r_dim:], np.repeat(eps.scene[a : a + 1], len(p), 0),
                              np.full(len(p), judge.task_index(task)))  # fmt: skip
        else:
            prob = np.zeros(0, np.float32)
        tally_calls(out, task, prob >= 0.5, eps.success[a:b][ts])
    return call_rates(out)


def load_scene(state_root: Path, predictor) -> tuple[np.ndarray, SceneJudge | None] | None:
    """The scene's first states (H, E) of the world model's held-out episodes and the `SceneJudge` (None
    when its training episodes had no success to learn from) in the state directory `state_root`
    (``RUN/state``), or None when its predictor learnt the robot state alone."""
    import json

    from safetensors.numpy import load_file as load_np
    from safetensors.torch import load_file

    cfg = json.loads((state_root / STATE_CONFIG).read_text())
    if not cfg.get("scene_dim"):
        return None
    starts = load_np(str(state_root / SCENE_STARTS))["scene"]
    j = cfg.get("scene_judge")
    if not j or not (state_root / SCENE_JUDGE_WEIGHTS).is_file():
        return starts, None
    judge = SceneJudge(predictor.robot_dim, int(cfg["scene_dim"]), list(j["tasks"]), int(j["width"]))
    judge.load_state_dict(load_file(str(state_root / SCENE_JUDGE_WEIGHTS)))
    return starts, judge.eval()
