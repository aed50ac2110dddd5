"""What an RL run is: `RLConfig` (every flag of `vlaforge rl`, validated), torch-free so `--help` is fast."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from vlaforge.config import JsonConfig, changed_settings
from vlaforge.errors import InputError

RUN_CONFIG = "rl_config.json"
# Fields a resumed run may change; everything else must match the run's saved config.
RESUMABLE_CHANGES = (
    "iterations", "resume", "device", "out", "save_every", "eval_episodes", "eval_workers", "workers",
    "video_every",
)  # fmt: skip


@dataclass
class RLConfig(JsonConfig):
    """One reinforcement-learning run after imitation (``vlaforge rl`` passes each flag here).

    Attributes:
        init: the policy to improve: a checkpoint directory (e.g. ``RUN/last``) with a ``chunk`` or ``flow``
            head.
        out: run directory (``rl_config.json``, ``metrics.jsonl``, ``checkpoints/``, ``last``, ``policy``,
            ``curve.png``, ``videos/``, ``eval_before/``, ``eval_after/``).
        env: the environment (``vlaforge.envs.registry``); None: the one the policy was trained in (else the
            registry's default).
        tasks: the tasks to train on: a task set, group, task name or comma list (None: the env's default).
        algo: ``ppo`` (clipped objective, GAE with a learned critic), ``grpo`` (no critic; advantages are
            episode returns normalised within a group of episodes that start from the same scene) or ``sac``
            (DSRL's off-policy learner: soft actor-critic on the flow head's starting noise, with a replay
            buffer; needs ``--flow-rl latent``, `vlaforge.rl.sac`) or ``filtered`` (the policy imitates its own
            successful episodes with its own training loss: reward-weighted regression on the success flag,
            `vlaforge.rl.filtered`; it explores as ``--flow-rl`` samples, Flow-SDE or the chunk head's
            Gaussian).
        iterations: rollout + update rounds (a resumed run continues up to this).
        envs: episodes per iteration, run side by side (one batched forward pass per step group).
        workers: simulation worker processes, each stepping its share of the episodes (0: every env in this
            process); the episodes are the same either way.
        group_size: GRPO: episodes per initial scene (``envs`` must be a multiple of it); PPO: 1 (every
            episode its own scene) unless set.
        max_steps: episode length in env steps (the episode also ends at the first success).
        execute_steps: actions executed from each predicted chunk before re-planning (None: the head's
            chunk); the RL decision is one executed chunk.
        gamma: discount per decision (per executed chunk).
        gae_lambda: GAE's lambda.
        clip: PPO's ratio clip epsilon.
        epochs: passes over each iteration's data in the update (``filtered``: ``ceil(epochs * new /
            minibatch)`` gradient steps per iteration, for the decisions its new successes added).
        minibatch: decisions per gradient step (0: all of them at once; ``filtered``: 64).
        target_kl: stop an iteration's update early once a minibatch's approximate KL (old vs new policy)
            exceeds 1.5 x this (0: never), the guard most PPO implementations use against a collapse.
        lr: learning rate of the policy and its log-std.
        critic_lr: learning rate of the critic.
        value_coef: weight of the value loss.
        entropy_coef: weight of the entropy bonus (of the chunk head's Gaussian).
        init_log_std: initial log standard deviation of the exploration noise, in normalised action units
            (chunk head: the learned state-independent log-std; flow head: log of the SDE's noise level;
            unused by Flow-Noise, whose stds a network learns; ``latent``: the noise policy's log-std
            when the run adds one). None: -1, or 0 for ``latent`` (its start is then exactly N(0, I), the
            policy's own sampler).
        flow_rl: how a flow head explores and gets its chunk's log-likelihood: piRL's two variants,
            ``sde`` (Flow-SDE: the ODE turned into an SDE with the noise level above) and ``noise``
            (Flow-Noise: a learned noise network adds a bounded Gaussian to every Euler step), or
            ``latent`` (DSRL: the flow expert stays frozen and RL trains a state-dependent Gaussian over
            the integration's starting noise, saved with the policy as the head's noise policy; the
            chunk's log-likelihood is that Gaussian's over the noise drawn).
        max_grad_norm: global gradient-norm clip (<= 0: off).
        train_backbone: also update the vision/LLM backbone (False: only the head, log-std and critic).
        seed: seeds the model's exploration noise, the minibatch order and the training scenes.
        train_seed: base of the training scenes: episode k of task t starts from
            ``episode_seed(train_seed, t, k)``, and any such seed that is also one of the evaluation's held-out
            seeds (``eval_seed``, ``eval_episodes``) is skipped, so training never sees an evaluation scene.
        eval_seed: the held-out evaluation's base seed (``vlaforge eval --seed``).
        eval_episodes: episodes per task of the before/after evaluation by ``vlaforge eval`` (0: none).
        eval_workers: worker processes of that evaluation.
        save_every: checkpoint every N iterations (and always at the end).
        video_every: every N iterations (and after the last), one episode per task of the current policy,
            acting as evaluation runs it, from the first held-out scene (``eval_seed``), written to
            ``videos/iter-XXXXXX_<task>.mp4`` with its outcome in ``videos/index.jsonl`` (0: no videos).
        reward: ``success``: 1 at the first success and 0 otherwise, the simulator's own flag (the episode ends
            at success either way); ``dense``: the simulator's shaped reward summed over each executed chunk,
            divided by ``max_steps`` (Meta-World's is in [0, 10] per step), plus the success flag: easier to
            learn from and easier to game, an option for experiments only.
        utd: ``sac``: gradient steps per new transition (update-to-data ratio; DSRL: 5, from 20 steps per 4
            envs' step), taken after each iteration's rollouts once the buffer holds ``batch_size``.
        batch_size: ``sac``: transitions per gradient step (DSRL: 256).
        tau: ``sac``: Polyak rate of the target critics (DSRL: 0.005).
        noise_bound: ``sac``: the noise policy's draws are squashed to (-b, b) by b tanh (DSRL: 1.5); saved
            with the policy (the head's ``noise_bound``).
        target_entropy: ``sac``: the entropy of the noise policy (nats per decision, over the whole (H, D)
            noise) the temperature is tuned towards (DSRL: 0).
        init_alpha: ``sac``: the temperature's start (stable-baselines3's automatic temperature, which DSRL
            uses, starts at 1: the actor stays spread while the critics learn, until the temperature falls).
        buffer_size: ``sac``: transitions the replay buffer holds (the oldest are overwritten); ``filtered``:
            decisions of successful episodes kept (the oldest dropped first); saved with each checkpoint
            for an exact resume.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        resume: continue from ``out/last`` exactly (policy, critic, log-std, optimiser, RNG, iteration).
    """

    init: str = ""
    out: str = "runs/rl"
    env: str | None = None
    tasks: str | None = None
    algo: Literal["ppo", "grpo", "sac", "filtered"] = "ppo"
    iterations: int = 100
    envs: int = 16
    workers: int = 0
    group_size: int = 1
    max_steps: int = 100
    execute_steps: int | None = None
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    epochs: int = 4
    minibatch: int = 0
    target_kl: float = 0.0
    lr: float = 1e-4
    critic_lr: float = 1e-3
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    init_log_std: float | None = None
    flow_rl: Literal["sde", "noise", "latent"] = "sde"
    max_grad_norm: float = 1.0
    train_backbone: bool = False
    seed: int = 0
    train_seed: int = 7000
    eval_seed: int = 1000
    eval_episodes: int = 0
    eval_workers: int = 0
    save_every: int = 10
    video_every: int = 50
    reward: Literal["success", "dense"] = "success"
    utd: float = 1.0
    batch_size: int = 256
    tau: float = 0.005
    noise_bound: float = 1.5
    target_entropy: float = 0.0
    init_alpha: float = 1.0
    buffer_size: int = 200_000
    device: str = "auto"
    resume: bool = False

    def __post_init__(self) -> None:
        if not self.init and not self.resume:
            raise InputError("--init is required: the policy directory to improve (e.g. RUN/last)")
        if self.algo not in ("ppo", "grpo", "sac", "filtered"):
            raise InputError(f"--algo must be ppo, grpo, sac or filtered, got {self.algo!r}")
        if self.algo == "filtered":
            if self.flow_rl == "latent":
                raise InputError(
                    "--algo filtered trains the policy on its own successes; --flow-rl latent freezes the "
                    "policy. Use --flow-rl sde (the default) or noise"
                )
            if self.reward != "success":
                raise InputError("--algo filtered keeps the episodes that succeed; drop --reward dense")
            if self.buffer_size < 1:
                raise InputError(f"--buffer-size must be >= 1, got {self.buffer_size}")
        if self.algo == "sac":
            if self.flow_rl != "latent":
                raise InputError(
                    "--algo sac learns the flow head's starting noise (DSRL); add --flow-rl latent (a policy "
                    "with a flow head)"
                )
            if self.reward != "success":
                raise InputError(
                    "--algo sac learns from the success flag alone (its Q is a discounted chance of success, in "
                    "[0, 1]); drop --reward dense"
                )
            if self.utd <= 0 or self.batch_size < 1 or self.buffer_size < self.batch_size:
                raise InputError(
                    f"--utd must be > 0, --batch-size >= 1 and --buffer-size >= --batch-size; got {self.utd}, "
                    f"{self.batch_size}, {self.buffer_size}"
                )
            if not 0.0 < self.tau <= 1.0 or self.noise_bound <= 0 or self.init_alpha <= 0:
                raise InputError(
                    f"--tau must be in (0, 1], --noise-bound and --init-alpha > 0; got {self.tau}, "
                    f"{self.noise_bound}, {self.init_alpha}"
                )
        if self.flow_rl not in ("sde", "noise", "latent"):
            raise InputError(f"--flow-rl must be sde, noise or latent, got {self.flow_rl!r}")
        if self.init_log_std is None:
            self.init_log_std = default_log_std(self.flow_rl)
        if self.flow_rl == "latent" and self.train_backbone:
            raise InputError(
                "--flow-rl latent trains only the noise the frozen policy starts from; drop --train-backbone "
                "(or use --flow-rl sde to train the policy itself)"
            )
        positive = {"iterations": self.iterations, "envs": self.envs, "group_size": self.group_size}
        positive.update(max_steps=self.max_steps, epochs=self.epochs, save_every=self.save_every)
        for name, value in positive.items():
            if int(value) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.envs % self.group_size:
            raise InputError(f"--envs ({self.envs}) must be a multiple of --group-size ({self.group_size})")
        if self.algo == "grpo" and self.group_size < 2:
            raise InputError("--algo grpo needs --group-size >= 2 (episodes per initial scene)")
        if self.video_every < 0:
            raise InputError(f"--video-every must be >= 0 (0: no videos), got {self.video_every}")
        if self.execute_steps is not None and self.execute_steps < 1:
            raise InputError(f"--execute-steps must be >= 1, got {self.execute_steps}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.clip < 1.0:
            raise InputError(f"--clip must be in (0, 1), got {self.clip}")
        if self.lr <= 0 or self.critic_lr <= 0:
            raise InputError(f"--lr and --critic-lr must be > 0, got {self.lr}, {self.critic_lr}")
        if min(self.minibatch, self.eval_episodes, self.eval_workers, self.workers, self.target_kl) < 0:
            raise InputError(
                "--minibatch, --eval-episodes, --eval-workers, --workers and --target-kl must be >= 0"
            )
        if self.train_seed == self.eval_seed:
            raise InputError(
                f"--train-seed and --eval-seed are both {self.train_seed}: training scenes must differ from "
                "the held-out evaluation's"
            )


def default_log_std(flow_rl: str) -> float:
    """`RLConfig.init_log_std` when not given: the latent noise policy starts at the flow's own N(0, I)."""
    return 0.0 if flow_rl == "latent" else -1.0


def resumed_config(cfg: RLConfig, run: Path) -> RLConfig:
    """The settings a resumed run continues with: the saved ones, and of this call's only those it sets
    (a value other than the field's default), e.g. ``vlaforge rl --out RUN --iterations 200 --resume``.
    Setting anything but `RESUMABLE_CHANGES` to another value than the run's is refused: that is
    another run."""
    path = Path(run) / RUN_CONFIG
    if not path.is_file():
        raise InputError(f"--resume: {path} does not exist; is {run} an RL run directory?")
    saved = json.loads(path.read_text())
    defaults = {f.name: f.default for f in fields(RLConfig)}
    # A field left unset is filled from others in __post_init__: its filled value is a default too.
    defaults["init_log_std"] = default_log_std(cfg.flow_rl)
    given = {k: v for k, v in cfg.to_dict().items() if k in defaults and v != defaults[k]}
    changed = changed_settings(saved, given, (*RESUMABLE_CHANGES, "init"))
    if changed:
        raise InputError(
            f"--resume with changed settings ({'; '.join(changed)}); keep them or start a new --out"
        )
    kept = {k: v for k, v in saved.items() if k in defaults}
    kept.update({k: v for k, v in given.items() if k in RESUMABLE_CHANGES})
    return RLConfig(**{**kept, "out": str(run), "resume": True})


__all__ = ["RESUMABLE_CHANGES", "RUN_CONFIG", "RLConfig", "resumed_config"]
