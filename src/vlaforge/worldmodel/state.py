"""`vlaforge worldmodel state RUN`: the robot state for a world model's environment, learned.

The world model draws the camera; a policy that also reads the robot state (Meta-World's: the hand's
position and the gripper) would otherwise see the first frame's state for the whole imagined episode,
telling it the arm never moved while the frames show it moving. `StatePredictor` predicts the state
after the model's stride N from the state and the N actions taken (an MLP on normalised inputs,
regressing the normalised change), trained on the world model's own training episodes; the environment
(`vlaforge.worldmodel.env`) applies it whenever it imagines a frame. It lives in ``RUN/state`` beside
the run's ``last/`` (``state.json`` with its settings and report, ``state.safetensors``).

The report compares, on the held-out episodes replayed open loop from their first state under their
recorded actions, the mean absolute error of the predicted states with that of keeping the first state.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from vlaforge.atomic import atomic_dir, write_json
from vlaforge.errors import InputError
from vlaforge.worldmodel.config import (
    INPUT_STD_FLOOR,
    STATE_CONFIG,
    STATE_DIR,
    STATE_WEIGHTS,
    WM_CONFIG,
    model_dir,
)
from vlaforge.worldmodel.data import SCENE_KEY, Episodes


class StatePredictor(nn.Module):
    """(state, the next N actions) -> the state N steps on, in robot units. The state may be the robot's
    followed by the scene's: its first `robot_dim` entries are the robot's."""

    def __init__(self, state_dim: int, action_dim: int, stride: int, width: int = 128):
        super().__init__()
        self.state_dim, self.action_dim, self.stride = state_dim, action_dim, stride
        self.robot_dim = state_dim
        self.net = nn.Sequential(
            nn.Linear(state_dim + stride * action_dim, width), nn.GELU(),
            nn.Linear(width, width), nn.GELU(),
            nn.Linear(width, state_dim),
        )  # fmt: skip
        for name, dim in (("state", state_dim), ("action", action_dim), ("delta", state_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    def normalised_change(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """state (B, D), actions (B, N, A), robot units -> the predicted change, normalised (B, D)."""
        s = (state - self.state_mean) / self.state_std
        a = ((actions - self.action_mean) / self.action_std).flatten(1)
        return self.net(torch.cat([s, a], dim=1))

    @torch.no_grad()
    def predict(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The state (B, D) after `actions` (B, N, A) from `state` (B, D), robot units."""
        return state + self.normalised_change(state, actions) * self.delta_std + self.delta_mean


class StateEnsemble(nn.Module):
    """Members of one `StatePredictor` shape trained from different seeds; predicts the mean of their
    predictions (one open-loop step at a time, so each step starts from the ensemble's state)."""

    def __init__(self, members: list[StatePredictor]):
        super().__init__()
        self.members = nn.ModuleList(members)
        m = members[0]
        self.state_dim, self.action_dim, self.stride = m.state_dim, m.action_dim, m.stride
        self.robot_dim = m.robot_dim

    @torch.no_grad()
    def predict(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.predict(state, actions) for m in self.members]).mean(0)


def transitions(eps: Episodes, episodes: list[int], stride: int) -> tuple[np.ndarray, ...]:
    """(state at t (P, D), the actions of t .. t + N - 1 (P, N, A), state at t + N (P, D)) for every t of
    the episodes with t + N inside."""
    s0, acts, s1 = [], [], []
    for e in episodes:
        a, b = eps.bounds[e]
        for t in range(a, b - stride):
            s0.append(eps.states[t])
            acts.append(eps.actions[t : t + stride])
            s1.append(eps.states[t + stride])
    if not s0:
        raise InputError(
            f"no episode is longer than the model's stride ({stride} steps): nothing to learn from"
        )
    return np.stack(s0).astype(np.float32), np.stack(acts).astype(np.float32), np.stack(s1).astype(np.float32)


def open_loop_error(
    model: StatePredictor, eps: Episodes, episodes: list[int], dims: slice = slice(None)
) -> dict[str, float]:
    """Mean absolute state error (over the entries `dims`) of the held-out episodes replayed open loop (a
    prediction every N steps from the first state under the recorded actions), against keeping the first
    state."""
    n, pred_err, frozen_err, end_pred, end_frozen = model.stride, [], [], [], []
    for e in episodes:
        a, b = eps.bounds[e]
        if b - a <= n:
            continue
        state = torch.from_numpy(eps.states[a : a + 1].astype(np.float32))
        first = eps.states[a, dims]
        for t in range(a + n, b, n):
            state = model.predict(state, torch.from_numpy(eps.actions[t - n : t][None].astype(np.float32)))
            pred_err.append(float(np.abs(state[0].numpy()[dims] - eps.states[t, dims]).mean()))
            frozen_err.append(float(np.abs(first - eps.states[t, dims]).mean()))
        end_pred.append(pred_err[-1])
        end_frozen.append(frozen_err[-1])
    if not pred_err:
        return {"episodes": 0}
    return {
        "episodes": len(end_pred),
        "error_mean": round(float(np.mean(pred_err)), 5),
        "error_mean_first_state_kept": round(float(np.mean(frozen_err)), 5),
        "error_end": round(float(np.mean(end_pred)), 5),
        "error_end_first_state_kept": round(float(np.mean(end_frozen)), 5),
    }


def train_state(
    run: str,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    width: int = 128,
    seed: int = 0,
    scene: bool = True,
    judge_steps: int = 2000,
    rollout: int = 1,
    judge_on: str = "real",
    ensemble: int = 1,
    extra: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Trains the state predictor of the world model run `run` on its training episodes and writes it to
    ``RUN/state``; returns its report (`open_loop_error` on the held-out episodes).

    With `scene` and datasets that record the scene's state (`observation.environment_state`), the
    predictor learns the robot and the scene state together, and a `SceneJudge` (`judge_steps` steps) is
    trained beside it: the world model's environment then judges success from the predicted scene.
    `rollout`: see `fit_state`. `ensemble` K > 1: K predictors trained alike from seeds `seed` .. `seed` +
    K - 1 (their batches drawn from each seed), the mean of their predictions used (`StateEnsemble`).
    `extra`: more recorded datasets (`vlaforge eval --record`) whose episodes the predictor and the scene
    judge also train on, none held out (the frame model need not have seen them); the held-out episodes
    stay the model's. `judge_on`: the scene judge learns from the recordings' real states (``real``) or
    from the predictor's open-loop states of them (``predicted``; `fit_scene_judge`).
    """  # fmt: skip
    from vlaforge.worldmodel.data import load_episodes, training_episodes

    root = model_dir(run)
    cfg_path = root / WM_CONFIG
    if not cfg_path.is_file():
        raise InputError(f"{run}: no worldmodel.json; give a `vlaforge worldmodel train` run")
    if judge_on not in ("real", "predicted"):
        raise InputError(f"--judge-on must be real or predicted; got {judge_on!r}")
    if min(steps, batch_size, width, judge_steps, ensemble) < 1 or not lr > 0:
        raise InputError(
            f"steps, batch_size, width, judge_steps, ensemble must be >= 1 and lr > 0; got {steps}, "
            f"{batch_size}, {width}, {judge_steps}, {ensemble}, {lr}"
        )
    cfg = json.loads(cfg_path.read_text())
    if extra:
        _check_extra(cfg, extra)
        eps = load_episodes([*cfg["datasets"], *extra], cfg["camera"], cfg["image_size"],
                            int(cfg["heldout_per_dataset"]), cfg.get("starts") or [])  # fmt: skip
        added = set(map(str, extra))
        eps.heldout = [e for e in eps.heldout if eps.sources[e][0] not in added]  # extras: all trained on
    else:
        eps = training_episodes(cfg)
    if eps.states is None or eps.states.shape[1] == 0:
        raise InputError(f"{run}: its datasets record no robot state (observation.state); nothing to predict")
    if len(eps.heldout) != len(cfg.get("heldout") or []):
        raise InputError(
            f"{run}: its datasets now give {len(eps.heldout)} held-out episodes, the model was trained with "
            f"{len(cfg.get('heldout') or [])}; were they recorded again? train the world model again on them"
        )
    stride, robot_dim = int(cfg.get("stride", 1)), eps.states.shape[1]
    with_scene = bool(scene) and eps.scene is not None
    full = replace(eps, states=np.concatenate([eps.states, eps.scene], axis=1)) if with_scene else eps
    fits = [fit_state(full, stride, steps, batch_size, lr, width, seed + k, rollout) for k in range(ensemble)]
    transitions_seen, loss = fits[0][1], float(np.mean([f[2] for f in fits]))
    model = fits[0][0] if ensemble == 1 else StateEnsemble([f[0] for f in fits]).eval()
    held = list(eps.heldout)
    report = {"transitions": transitions_seen, "final_loss": round(loss, 6),
              **open_loop_error(model, full, held, slice(0, robot_dim))}  # fmt: skip
    arrays: dict[str, dict[str, Any]] = {STATE_WEIGHTS: model.state_dict()}  # members as members.K.*
    meta: dict[str, Any] = {}
    if with_scene:
        from vlaforge.worldmodel.scene import SCENE_JUDGE_WEIGHTS, SCENE_STARTS, fit_scene_judge, on_predicted

        report["scene"] = open_loop_error(model, full, held, slice(robot_dim, None))
        firsts = np.array([eps.bounds[e][0] for e in held], np.int64)
        arrays[SCENE_STARTS] = {"scene": torch.from_numpy(np.ascontiguousarray(eps.scene[firsts]))}
        meta = {"scene_dim": int(eps.scene.shape[1])}
        labels = np.concatenate([eps.success[slice(*eps.bounds[e])] for e in eps.train])
        if labels.any() and not labels.all():
            model.robot_dim = robot_dim
            on = model if judge_on == "predicted" else None
            judge, judge_report = fit_scene_judge(eps, judge_steps, seed=seed, predictor=on)
            judge_report["on_predicted_states"] = on_predicted(judge, model, eps, held)
            report["scene_judge"] = judge_report
            arrays[SCENE_JUDGE_WEIGHTS] = judge.state_dict()
            meta["scene_judge"] = {"tasks": judge.tasks, "width": judge.net[0].out_features}
        else:
            report["scene_judge"] = {
                "skipped": f"the training episodes have {int(labels.sum())} successful frames of {len(labels)}; "
                "a scene judge needs both kinds (success is judged from the frames)"
            }
            print(f"state: no scene judge: {report['scene_judge']['skipped']}")
    # RUN/state is replaced whole: no file of an earlier training (a scene judge, say) outlives it
    with atomic_dir(state_dir(root), overwrite=True) as tmp:
        for name, tensors in arrays.items():
            save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / name))
        write_json(tmp / STATE_CONFIG, {
            "format": "vlaforge-worldmodel-state/1", "state_dim": model.state_dim, "action_dim": model.action_dim,
            "robot_state_dim": robot_dim, "stride": stride, "width": width, "steps": steps,
            "batch_size": batch_size, "lr": lr, "seed": seed, "rollout": rollout, "judge_on": judge_on,
            "ensemble": ensemble, "extra_datasets": [str(d) for d in extra], **meta,
            "report": report,
        })  # fmt: skip
    return report


def _check_extra(cfg: dict, extra: list[str] | tuple[str, ...]) -> None:
    """Refuses extra datasets that are the world model's own (trained on or held out) or that lack the
    scene's state its datasets record (read from each dataset's ``meta/info.json`` features)."""
    known = {str(Path(d).resolve()) for d in [*cfg["datasets"], *(cfg.get("starts") or [])]}
    again = [d for d in extra if str(Path(d).resolve()) in known]
    if again:
        raise InputError(
            f"--dataset {','.join(again)}: already the world model's own data (trained on or held out); "
            "give recordings it was not trained from"
        )

    def records_scene(path: str) -> bool:
        info = Path(path) / "meta" / "info.json"
        if not info.is_file():
            raise InputError(f"--dataset {path}: no meta/info.json; give a LeRobot v3.0 dataset")
        return SCENE_KEY in json.loads(info.read_text()).get("features", {})

    lacking = [d for d in extra if not records_scene(d)]
    if lacking and all(records_scene(d) for d in cfg["datasets"]):
        raise InputError(
            f"--dataset {','.join(lacking)}: the world model's datasets record the scene's state ({SCENE_KEY}) "
            "and these do not; record them with `vlaforge eval --record`"
        )


def fit_state(
    eps: Episodes,
    stride: int,
    steps: int,
    batch_size: int,
    lr: float,
    width: int,
    seed: int,
    rollout: int = 1,
) -> tuple[StatePredictor, int, float]:
    """A `StatePredictor` fitted on the training episodes of `eps` (the batch of step s drawn from
    (seed, s)); returns it (in eval mode), the number of samples and the last loss.

    With `rollout` K > 1 each sample starts at a real state and unrolls K predictions (K * stride steps)
    under the recorded actions, each on the one before, and the loss is the mean over the K of the error
    against the real state there (in units of the one-stride change's spread): the predictor learns to
    correct its own drift, which open-loop use compounds (K = 1: one stride from the real state).
    """
    if rollout < 1:
        raise InputError(f"--rollout must be >= 1; got {rollout}")
    s0, acts, s1 = transitions(eps, eps.train, stride)
    torch.manual_seed(seed)
    model = StatePredictor(s0.shape[1], acts.shape[2], stride, width)
    delta = s1 - s0
    for name, x in (("state", s0), ("action", acts.reshape(-1, acts.shape[2])), ("delta", delta)):
        getattr(model, f"{name}_mean").copy_(torch.from_numpy(x.mean(0)))
        # An input constant in training (a one-object task's second object, a goal that never moved) is
        # floored at INPUT_STD_FLOOR, not divided by ~0: a held-out episode's other value would explode.
        floor = 1e-4 if name == "delta" else INPUT_STD_FLOOR
        getattr(model, f"{name}_std").copy_(torch.from_numpy(np.maximum(x.std(0), floor)))
    if rollout > 1:
        s0, acts, s1 = rollouts(eps, eps.train, stride, rollout)
    else:
        acts, s1 = acts[:, None], s1[:, None]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    s0_t, acts_t, s1_t = torch.from_numpy(s0), torch.from_numpy(acts), torch.from_numpy(s1)
    for step in tqdm(range(steps), desc="state", unit="step"):
        i = torch.from_numpy(np.random.default_rng([seed, step]).integers(0, len(s0), batch_size))
        state, loss = s0_t[i], 0.0
        for k in range(rollout):
            change = model.normalised_change(state, acts_t[i, k])
            target = (s1_t[i, k] - state - model.delta_mean) / model.delta_std
            loss = loss + nn.functional.mse_loss(change, target) / rollout
            state = state + change * model.delta_std + model.delta_mean
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval(), len(s0), float(loss.item())


def rollouts(eps: Episodes, episodes: list[int], stride: int, k: int) -> tuple[np.ndarray, ...]:
    """(state at t (P, D), the actions of t .. t + kN - 1 as (P, k, N, A), the states at t + N, ..., t + kN
    (P, k, D)) for every t of the episodes with t + kN inside."""
    s0, acts, s1 = [], [], []
    for e in episodes:
        a, b = eps.bounds[e]
        for t in range(a, b - k * stride):
            s0.append(eps.states[t])
            acts.append(eps.actions[t : t + k * stride].reshape(k, stride, -1))
            s1.append(eps.states[t + stride : t + k * stride + 1 : stride])
    if not s0:
        raise InputError(f"no episode is longer than {k} strides of {stride} steps: lower --rollout")
    return np.stack(s0).astype(np.float32), np.stack(acts).astype(np.float32), np.stack(s1).astype(np.float32)


def state_dir(model: Path) -> Path:
    """Where the state predictor of the world model in directory `model` lives: ``RUN/state`` beside
    ``RUN/last``, or inside a model directory of its own (as the judge)."""
    return model.parent / STATE_DIR if model.name == "last" else model / STATE_DIR


def load_state_predictor(model: Path, stride: int) -> StatePredictor | None:
    """The state predictor of the world model in directory `model` (whose stride is `stride`), or None when
    it has none.

    Raises:
        InputError: a predictor made for another stride (a model retrained beside it).
    """
    d = state_dir(model)
    if not (d / STATE_CONFIG).is_file():
        return None
    cfg = json.loads((d / STATE_CONFIG).read_text())
    if int(cfg["stride"]) != stride:
        raise InputError(
            f"{d}: the state predictor steps {cfg['stride']} actions at a time, the world model {stride}; "
            f"train it again with `vlaforge worldmodel state` on the model's run"
        )
    shape = (int(cfg["state_dim"]), int(cfg["action_dim"]), int(cfg["stride"]), int(cfg["width"]))
    k = int(cfg.get("ensemble", 1))  # predictors written before ensembles existed have one member
    sp = StatePredictor(*shape) if k == 1 else StateEnsemble([StatePredictor(*shape) for _ in range(k)])
    sp.load_state_dict(load_file(str(d / STATE_WEIGHTS)))
    sp.robot_dim = int(cfg.get("robot_state_dim", cfg["state_dim"]))  # the rest is the scene's state
    return sp.eval()
