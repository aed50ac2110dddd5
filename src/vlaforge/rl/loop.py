"""`vlaforge rl`: improve a trained policy by acting in simulation (PPO, GRPO, SAC or success-filtered
self-imitation), resumable exactly.

An iteration collects `envs` episodes (`vlaforge.rl.rollout`), computes advantages (GAE on the critic's
values for PPO; group-normalised episode returns for GRPO, `vlaforge.rl.algos`), then runs `epochs` passes of
clipped policy-gradient updates. Every `save_every` iterations a checkpoint is written atomically:
``RUN/checkpoints/iter-XXXXXXX/`` holds the policy (``policy/``, loadable by every command), the RL tensors
(``rl_model.safetensors``: log-std, critic), the optimiser (``optimizer.safetensors``) and, written last,
``rl_state.json`` (iteration, the exploration generator's state, python / numpy / torch RNG states, the
config). ``RUN/last`` names the newest complete one. A resumed run continues bit for bit.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vlaforge import metrics_log
from vlaforge.atomic import StagedDir, atomic_write, write_json
from vlaforge.envs.registry import get_env
from vlaforge.errors import InputError
from vlaforge.rl.actor import ActorCritic
from vlaforge.rl.algos import gae, grpo_advantages, ppo_loss, value_loss
from vlaforge.rl.config import RUN_CONFIG, RLConfig, resumed_config
from vlaforge.rl.filtered import SuccessBuffer, filtered_update
from vlaforge.rl.logprob import gaussian_kl
from vlaforge.rl.rollout import Batch, EnvPool, WorkerPool, collect, eval_seed_set, training_scenes
from vlaforge.rl.sac import ReplayBuffer, SACModules, sac_losses, transitions
from vlaforge.train.checkpoint import (
    load_optimizer,
    optimizer_to_safetensors,
    point_last,
    rng_state,
    seed_everything,
    set_rng_state,
)

CKPT_DIR, LAST, STATE_FILE = "checkpoints", "last", "rl_state.json"
MODEL_FILE, OPTIMIZER_FILE, POLICY_DIR = "rl_model.safetensors", "optimizer.safetensors", "policy"
METRICS = metrics_log.FILE
# The KL estimate's own random stream (`kl_to_initial`), apart from the exploration generator.
KL_SEED_BASE = 0x4B4C
INIT_RECORD = "init.json"  # the checkpoint the run started from, resolved, and its weights' sha256


class RLRun:
    """The state of a run: actor (policy, log-std, critic), optimiser, exploration generator, iteration."""

    def __init__(self, cfg: RLConfig, policy: Any, device: str):
        self.cfg, self.device = cfg, device
        sac = cfg.algo == "sac"
        self.actor = ActorCritic(
            policy,
            cfg.init_log_std,
            cfg.train_backbone,
            cfg.flow_rl,
            noise_bound=cfg.noise_bound if sac else 0.0,
        ).to(device)
        self.actor.eval()  # no dropout: the log-probabilities of sampling and update are the same function
        self.buffer: ReplayBuffer | SuccessBuffer | None = None
        if cfg.algo == "filtered":
            self.buffer = SuccessBuffer(cfg.buffer_size)
        if sac:  # the Q-networks, their targets and the temperature live beside the policy
            head, width = self.actor.policy.head, policy.backbone.hidden_size
            if head.noise_bound <= 0:
                raise InputError(
                    "--algo sac: this policy already has a noise policy, unbounded (noise_bound 0, trained by "
                    "--algo ppo --flow-rl latent); SAC needs a bounded one: start from the policy it came from"
                )
            self.actor.sac = SACModules(2 * width, head.chunk_size * head.action_dim, cfg.init_alpha).to(
                device
            )
            self.buffer = ReplayBuffer(cfg.buffer_size, 2 * width, (head.chunk_size, head.action_dim))
        critic = [p for n, p in self.actor.named_parameters() if n.startswith("critic.")]
        own = ("critic.", "sac.")
        actor_params = [
            p for n, p in self.actor.named_parameters() if p.requires_grad and not n.startswith(own)
        ]
        groups = [{"params": actor_params, "lr": cfg.lr}]
        if cfg.algo == "ppo":
            groups.append({"params": critic, "lr": cfg.critic_lr})
        else:  # GRPO and filtered have no critic; SAC's are its Q-networks
            for p in critic:
                p.requires_grad_(False)
        if sac:
            groups.append({"params": list(self.actor.sac.q.parameters()), "lr": cfg.critic_lr})
            groups.append({"params": [self.actor.sac.log_alpha], "lr": cfg.lr})
        # The optimiser's parameters in its own order: the names its checkpoint is keyed by.
        ids = {id(p): n for n, p in self.actor.named_parameters()}
        self.names = [ids[id(p)] for g in groups for p in g["params"]]
        self.optimizer = torch.optim.Adam(groups)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.iteration = 0
        h = policy.head
        self.execute_steps = min(int(cfg.execute_steps or h.execute_steps), h.chunk_size)

    # ------------------------------------------------------------------ persistence
    def save(self, run: Path, keep: int = 2) -> Path:
        final = run / CKPT_DIR / f"iter-{self.iteration:07d}"
        if final.exists():
            shutil.rmtree(final)
        staged = StagedDir(final)
        try:
            self.actor.policy.save_pretrained(staged.path / POLICY_DIR)
            rl_tensors = {n: p.detach().cpu().contiguous().clone() for n, p in self.actor.named_parameters()
                          if not n.startswith("policy.")}  # fmt: skip
            save_file(rl_tensors, str(staged.path / MODEL_FILE))
            tensors, meta = optimizer_to_safetensors(self.optimizer, self.names)
            save_file(tensors, str(staged.path / OPTIMIZER_FILE), metadata=meta)
            if self.buffer is not None:  # SAC's replay buffer or filtered's successes
                tensors, meta = self.buffer.state()
                save_file(tensors, str(staged.path / self.buffer.file), metadata=meta)
            state = {
                "iteration": self.iteration,
                "generator": base64.b64encode(self.generator.get_state().numpy().tobytes()).decode("ascii"),
                "rng": rng_state(self.device),
                "config": self.cfg.to_dict(),
            }
            write_json(staged.path / STATE_FILE, state)
            staged.commit()
        except BaseException:
            staged.abort()
            raise
        point_last(run, final)
        done = sorted(p for p in (run / CKPT_DIR).iterdir() if (p / STATE_FILE).is_file())
        for old in done[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    @classmethod
    def load(cls, cfg: RLConfig, ckpt: Path, device: str) -> RLRun:
        from vlaforge.models.policy import Policy

        policy = Policy.from_pretrained(ckpt / POLICY_DIR)
        self = cls(cfg, policy, device)
        tensors = load_file(str(ckpt / MODEL_FILE))
        with torch.no_grad():
            for n, p in self.actor.named_parameters():
                if n in tensors:
                    p.copy_(tensors[n])
        load_optimizer(ckpt / OPTIMIZER_FILE, self.optimizer, self.names)
        if self.buffer is not None:
            from safetensors import safe_open

            path = str(ckpt / self.buffer.file)
            with safe_open(path, framework="pt") as f:
                meta = f.metadata()
            self.buffer.restore(load_file(path), meta)
        state = json.loads((ckpt / STATE_FILE).read_text())
        self.iteration = int(state["iteration"])
        raw = np.frombuffer(base64.b64decode(state["generator"]), dtype=np.uint8).copy()
        self.generator.set_state(torch.from_numpy(raw))
        set_rng_state(state["rng"], device)
        return self


def find_last(run: Path) -> Path | None:
    link = run / LAST
    if link.exists() and (link.resolve() / STATE_FILE).is_file():
        return link.resolve()
    done = sorted(p for p in (run / CKPT_DIR).glob("iter-*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


# ---------------------------------------------------------------------- the update


def _contexts(actor: ActorCritic, decisions: list) -> Any:
    cams = actor.policy.embodiment.camera_names
    images = {c: np.stack([d.images[c] for d in decisions]) for c in cams}
    states = None if decisions[0].state is None else np.stack([d.state for d in decisions])
    return actor.context(images, states, [d.instruction for d in decisions])


def _keep(decisions: list, H: int) -> torch.Tensor:
    executed = torch.tensor([d.executed for d in decisions])
    return torch.arange(H)[None] < executed[:, None]  # (M, H)


def advantages(cfg: RLConfig, batch: Batch, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per decision (M,): advantages and value targets (GRPO: the episode's group-relative advantage, and
    no targets)."""
    D = batch.decisions
    M = len(D)
    adv, ret = torch.zeros(M), torch.zeros(M)
    by_slot: dict[int, list[int]] = {}
    for i, d in enumerate(D):
        by_slot.setdefault(d.slot, []).append(i)
    if cfg.algo == "grpo":
        returns = torch.tensor([e["return"] for e in batch.episodes])
        groups = torch.tensor([e["group"] for e in batch.episodes])
        ep_adv = grpo_advantages(returns, groups)
        for slot, idx in by_slot.items():
            adv[idx] = ep_adv[slot]
        return adv, ret
    for idx in by_slot.values():
        r = torch.tensor([D[i].reward for i in idx])[:, None]
        done = torch.tensor([D[i].done for i in idx])[:, None]
        a, g = gae(r, values[idx][:, None], done, torch.zeros(1), cfg.gamma, cfg.gae_lambda)
        adv[idx], ret[idx] = a[:, 0], g[:, 0]
    return adv, ret


def update(run: RLRun, batch: Batch) -> dict[str, float]:
    cfg, actor = run.cfg, run.actor
    D = batch.decisions
    M, H = len(D), actor.policy.head.chunk_size
    keep = _keep(D, H).to(run.device)
    records = torch.stack([d.record for d in D]).to(run.device)
    mb = cfg.minibatch or M
    with torch.no_grad():
        olds, vals, ents = [], [], []
        for s in range(0, M, mb):
            lp, e, v = actor.evaluate(_contexts(actor, D[s : s + mb]), records[s : s + mb], keep[s : s + mb])
            olds.append(lp)
            vals.append(v)
            ents.append(e)
        logp_old, values = torch.cat(olds), torch.cat(vals).cpu()
    # Flow-Noise's entropy depends on the state (the chunk head's is in the metrics row already).
    extra = {"entropy": float(torch.cat(ents).mean())} if actor.flow_rl == "noise" else {}
    adv, ret = advantages(cfg, batch, values)
    if cfg.algo == "ppo" and M > 1 and adv.std() > 0:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    adv, ret = adv.to(run.device), ret.to(run.device)
    sums: dict[str, float] = {"policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0}
    steps = 0
    params = [p for p in actor.parameters() if p.requires_grad]
    stop = False
    for _ in range(cfg.epochs):
        order = torch.randperm(M, generator=run.generator)
        if stop:
            continue  # the generator draws every epoch's order, so a stop changes nothing else
        for s in range(0, M, mb):
            idx = order[s : s + mb]
            sel = [D[i] for i in idx.tolist()]
            idx_d = idx.to(run.device)
            logp, ent, v = actor.evaluate(_contexts(actor, sel), records[idx_d], keep[idx_d])
            pl, m = ppo_loss(logp, logp_old[idx_d], adv[idx_d], cfg.clip)
            loss = pl - cfg.entropy_coef * ent.mean()
            vl = value_loss(v, ret[idx_d]) if cfg.algo == "ppo" else torch.zeros(())
            loss = loss + cfg.value_coef * vl
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            run.optimizer.step()
            sums["policy_loss"] += pl.item()
            sums["value_loss"] += vl.item()
            sums["clip_fraction"] += m["clip_fraction"].item()
            sums["approx_kl"] += m["approx_kl"].item()
            steps += 1
            if cfg.target_kl > 0 and m["approx_kl"].item() > 1.5 * cfg.target_kl:
                stop = True
                break
    return {**{k: v / max(1, steps) for k, v in sums.items()}, "gradient_steps": steps, **extra}


@torch.no_grad()
def decision_features(actor: ActorCritic, decisions: list, minibatch: int = 64) -> torch.Tensor:
    """What SAC's networks read of each decision's observation (M, 2 d), float32 on the CPU: the LLM's last
    prefix hidden state (the noise policy's input) and the mean of its hidden states over the prefix."""
    out = []
    for s in range(0, len(decisions), minibatch):
        fwd = actor.forward_ctx(_contexts(actor, decisions[s : s + minibatch]))
        out.append(torch.cat([fwd.prefix.last_hidden.float(), fwd.features.float()], -1).cpu())
    return torch.cat(out)


def sac_update(run: RLRun, batch: Batch) -> dict[str, float]:
    """SAC's part of an iteration: the batch's transitions into the replay buffer, then `utd` gradient
    steps per new transition (none until the buffer holds a minibatch)."""
    cfg, actor, buffer = run.cfg, run.actor, run.buffer
    assert isinstance(buffer, ReplayBuffer)
    new = transitions(batch.decisions, decision_features(actor, batch.decisions))
    buffer.add(**new)
    n_new = len(new["reward"])
    steps = math.ceil(cfg.utd * n_new) if buffer.size >= cfg.batch_size else 0
    head, hidden = actor.policy.head, actor.policy.backbone.hidden_size
    sums: dict[str, float] = {}
    for _ in range(steps):
        sample = {k: v.to(run.device) for k, v in buffer.sample(cfg.batch_size, run.generator).items()}
        loss, stats = sac_losses(
            actor.sac, head, sample, hidden, cfg.gamma, cfg.target_entropy, run.generator
        )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        actor.sac.update_targets(cfg.tau)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
    out = {k: v / steps for k, v in sums.items()}
    return {**out, "gradient_steps": steps, "transitions": n_new, "buffer_size": buffer.size}


def _init_weights(init: str) -> tuple[Path, str]:
    from vlaforge.policy_files import read_policy_dir
    from vlaforge.weights_hash import weights_sha256

    resolved = Path(init).resolve()
    return resolved, weights_sha256([read_policy_dir(resolved).weights])


def pin_init(run: Path, init: str) -> None:
    """Records in `INIT_RECORD` which checkpoint the run starts from: ``--init`` resolved (``RUN/last`` is a
    link that moves when that training goes on) and its weights' sha256. A resume reads the initial policy
    (the KL reference, the env) from there, not from ``--init`` again."""
    resolved, sha = _init_weights(init)
    write_json(run / INIT_RECORD, {"given": str(init), "resolved": str(resolved), "weights_sha256": sha})


def pinned_init(run: Path, init: str) -> str:
    """The initial policy a resumed run continues with: the checkpoint `pin_init` recorded (a run without
    the record: `init` as saved).

    Raises:
        InputError: that checkpoint is gone or its weights changed since the run started.
    """
    path = run / INIT_RECORD
    if not path.is_file():
        return init
    rec = json.loads(path.read_text())
    resolved = Path(rec["resolved"])
    if not resolved.is_dir():
        raise InputError(
            f"--resume: the run started from {resolved} (--init {rec['given']}), which is gone; the KL "
            "reference and the env come from it. Restore it, or start a new --out"
        )
    _, sha = _init_weights(str(resolved))
    if sha != rec["weights_sha256"]:
        raise InputError(
            f"--resume: the weights of {resolved} changed since the run started (sha256 {sha[:12]} now, "
            f"{rec['weights_sha256'][:12]} then); the KL reference would not be the run's. Restore them, or "
            "start a new --out"
        )
    return str(resolved)


@torch.no_grad()
def kl_to_initial(run: RLRun, initial: Any, batch: Batch, limit: int = 64) -> float | None:
    """KL(current || initial) per decision, over (up to `limit` of) the iteration's observations, after
    the update. Chunk head: the Gaussians' closed form, summed over the executed rows. Flow-SDE: a
    Monte-Carlo estimate, the mean of log p(chain) - log p_initial(chain) over one chain per observation
    sampled from the current policy, drawn from a generator of its own seeded by (seed, iteration), so
    neither exploration nor a resumed run's numbers change. Latent (DSRL): the closed form between the
    current and the initial noise policies' Gaussians over the whole starting noise (the chunks are a
    fixed function of it, so this bounds their KL from above). None for Flow-Noise (its noise network is
    the run's, so the initial policy has none to score with)."""
    if initial is None:
        return None
    D = batch.decisions[:limit]
    ctx = _contexts(run.actor, D)
    if run.actor.flow_rl == "latent":
        prefix = run.actor.forward_ctx(ctx).prefix
        mu, ls = run.actor.policy.head.noise_distribution(prefix)
        mu0, ls0 = initial.noise_distribution(prefix)
        return float(gaussian_kl(mu, ls, mu0, ls0).mean())
    if run.actor.kind == "flow":
        generator = torch.Generator().manual_seed(KL_SEED_BASE + 1_000_003 * run.cfg.seed + run.iteration)
        keep = _keep(D, run.actor.policy.head.chunk_size).to(run.device)
        return float(run.actor.sde_kl_estimate(ctx, keep, initial, generator).mean())
    mu = run.actor.forward_ctx(ctx).mean
    if isinstance(initial, ActorCritic):  # the backbone trains: the initial policy is a whole copy
        mu0 = initial.forward_ctx(ctx).mean
    else:  # the backbone is frozen: only the initial head is kept, on the current backbone
        mu0 = run.actor.forward_ctx(ctx, head=initial).mean
    ls = run.actor.log_std.float()
    ls0 = torch.full_like(ls, run.cfg.init_log_std)
    return float(gaussian_kl(mu, ls, mu0, ls0, _keep(D, mu.shape[1]).to(mu.device)).mean())


# ---------------------------------------------------------------------- the run


def _resolve_device(name: str) -> str:
    from vlaforge.devices import resolve_device

    return resolve_device(name)


# Iterations pooled by the learning curve's running rate (an iteration's own rate, over 16 or so
# episodes, moves by tens of points from one to the next).
CURVE_WINDOW = 10


def task_counts(episodes: list[dict]) -> dict[str, list[int]]:
    """Per task, [successes, episodes] of an iteration's episodes (the `task_success` of its row)."""
    out: dict[str, list[int]] = {}
    for e in episodes:
        c = out.setdefault(e["task"], [0, 0])
        c[0] += int(bool(e["success"]))
        c[1] += 1
    return out


def running_success(rows: list[dict], window: int, task: str | None = None) -> list[float]:
    """The training success rate pooled over the episodes of each row's last `window` iterations (itself
    included): successes / episodes, so iterations with more episodes weigh more. With `task`, that task's
    episodes alone (the rows' `task_success`; an iteration without it counts no episode)."""
    if task is None:
        wins = [r["success_rate"] * r["episodes"] for r in rows]
        eps = [r["episodes"] for r in rows]
    else:
        counts = [r.get("task_success", {}).get(task, [0, 0]) for r in rows]
        wins, eps = [c[0] for c in counts], [c[1] for c in counts]
    out = []
    for i in range(len(rows)):
        lo = max(0, i + 1 - window)
        n = sum(eps[lo : i + 1])
        out.append(sum(wins[lo : i + 1]) / n if n else 0.0)
    return out


def plot_curve(run: Path) -> Path | None:
    """success rate vs environment steps (and wall time) from metrics.jsonl -> curve.png."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = run / METRICS
    if not path.is_file():
        return None
    rows = metrics_log.read(path)
    if not rows:
        return None
    tasks = sorted({t for r in rows for t in r.get("task_success", {})})
    panels = 3 if len(tasks) > 1 else 2
    fig = Figure(figsize=(4.5 * panels, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    smooth = running_success(rows, CURVE_WINDOW)
    for k, (key, label) in enumerate(
        (("total_env_steps", "environment steps"), ("total_seconds", "wall time (s)"))
    ):
        ax = fig.add_subplot(1, panels, k + 1)
        x = [r[key] for r in rows]
        ax.plot(x, [r["success_rate"] for r in rows], marker="o", ms=2, lw=0.5, alpha=0.35, label="iteration")
        ax.plot(x, smooth, lw=2, color="C1", label=f"last {CURVE_WINDOW} iterations' episodes")
        ax.legend(loc="upper left", fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("training success rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    if panels == 3:  # one line per task: which tasks the pooled rate's moves come from
        ax = fig.add_subplot(1, panels, 3)
        x = [r["total_env_steps"] for r in rows]
        for task in tasks:
            ax.plot(x, running_success(rows, CURVE_WINDOW, task), lw=1.5, label=task)
        ax.legend(loc="upper left", fontsize=6)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(f"per task, last {CURVE_WINDOW} iterations")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run / "curve.png"
    with atomic_write(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def _evaluate(cfg: RLConfig, policy_dir: Path, out: Path, tasks: list[str]) -> dict:
    from vlaforge.eval.run import EvalConfig, evaluate

    ecfg = EvalConfig(
        policy=str(policy_dir), env=cfg.env, tasks=tasks, episodes=cfg.eval_episodes, out=str(out),
        workers=cfg.eval_workers, videos=0, seed=cfg.eval_seed, device=cfg.device, overwrite=True,
        instructions="train",
    )  # fmt: skip
    result = evaluate(ecfg)
    print(result.table())
    agg = result.info["aggregates"]
    return {"per_task": agg["per_task"], "overall": agg["overall"]}


def write_videos(cfg: RLConfig, policy: Any, spec: Any, tasks: list[str], run: Path, iteration: int) -> None:
    """One episode per task of `policy` as evaluation runs it (its chunks open loop, noise from the
    episode's seed), from each task's first held-out scene, as ``videos/iter-XXXXXX_<task>.mp4``; the
    outcomes are appended to ``videos/index.jsonl``. The same scenes every time, so the videos compare."""
    from vlaforge.envs.base import episode_seed
    from vlaforge.eval.baselines import PolicyController
    from vlaforge.eval.rollout import Job, run_episode

    emb = policy.embodiment
    folder = run / "videos"
    folder.mkdir(exist_ok=True)
    was_training = policy.training
    policy.eval()
    controller = PolicyController(policy, cfg.execute_steps)
    try:
        for task in tasks:
            env = spec.make(task, cameras=tuple(emb.camera_names), image_size=emb.image_size,
                            max_steps=cfg.max_steps, render=False)  # fmt: skip
            try:
                seed = episode_seed(cfg.eval_seed, task, 0)
                path = folder / f"iter-{iteration:06d}_{task}.mp4"
                job = Job(task, 0, seed, spec.instructions[task], str(path))
                rec = run_episode(controller, env, job, cfg.max_steps, fps=float(spec.control_hz))
            finally:
                env.close()
            row = {"iteration": iteration, "task": task, "seed": seed, "success": rec["success"],
                   "steps": rec["steps"], "video": path.name}  # fmt: skip
            metrics_log.append(folder / "index.jsonl", row)
    finally:
        policy.train(was_training)


def run_rl(cfg: RLConfig) -> Path:
    """Runs (or resumes) an RL run; returns the run directory (its improved policy in ``RUN/policy``)."""
    from vlaforge.models.policy import Policy

    run = Path(cfg.out)
    ckpt = None
    if cfg.resume:
        cfg = resumed_config(cfg, run)
        cfg = dataclasses.replace(cfg, init=pinned_init(run, cfg.init))
        # None when it stopped before its first checkpoint: iteration 0 needs the settings only.
        ckpt = find_last(run)
    else:
        if (run / RUN_CONFIG).exists():
            raise InputError(
                f"{run} already holds an RL run; pass --resume to continue it or choose another --out"
            )
        run.mkdir(parents=True, exist_ok=True)
        pin_init(run, cfg.init)
        write_json(run / RUN_CONFIG, cfg.to_dict())
    device = _resolve_device(cfg.device)
    if ckpt is not None:
        state = RLRun.load(cfg, ckpt, device)
    else:
        seed_everything(cfg.seed)
        state = RLRun(cfg, Policy.from_pretrained(cfg.init), device)
    metrics_log.keep_only(run / METRICS, lambda r: r.get("iteration", 0) < state.iteration)
    if cfg.env is None:  # the policy's own env, as evaluation takes it
        from vlaforge.eval.checks import trained_env

        cfg = dataclasses.replace(cfg, env=trained_env(cfg.init))
    spec = get_env(cfg.env)
    tasks = spec.resolve_tasks(cfg.tasks)
    emb = state.actor.policy.embodiment
    initial = None  # the reference of kl_to_initial: the initial head (frozen backbone) or a whole copy
    if state.actor.kind == "chunk" or state.actor.flow_rl in ("sde", "latent"):
        if state.iteration == 0:
            initial = copy.deepcopy(state.actor if cfg.train_backbone else state.actor.policy.head)
        else:  # built without a draw from the global generator, which the resumed run's update reads on
            with torch.random.fork_rng(devices=[]):
                start = Policy.from_pretrained(cfg.init)
                if state.actor.flow_rl == "latent":  # the noise policy the run started with, as it added it
                    initial = ActorCritic(start, cfg.init_log_std, flow_rl="latent").policy.head
                else:
                    initial = ActorCritic(start, cfg.init_log_std) if cfg.train_backbone else start.head
            initial = initial.to(device)
        initial.eval()
        for p in initial.parameters():
            p.requires_grad_(False)
    if cfg.eval_episodes and state.iteration == 0 and not (run / "eval_before" / "eval_info.json").exists():
        _evaluate(cfg, Path(cfg.init), run / "eval_before", tasks)
    avoid = eval_seed_set(spec, tasks, cfg.eval_seed, cfg.eval_episodes)
    dense = cfg.reward == "dense"
    if cfg.workers:
        pool = WorkerPool(spec, tuple(emb.camera_names), emb.image_size, cfg.max_steps, dense, cfg.workers)
    else:
        pool = EnvPool(spec, tuple(emb.camera_names), emb.image_size, cfg.max_steps, dense)
    n_groups = cfg.envs // cfg.group_size
    prior = _prior_totals(run)
    try:
        bar = tqdm(total=cfg.iterations, initial=state.iteration, desc="rl", unit="it")
        while state.iteration < cfg.iterations:
            scenes = training_scenes(tasks, state.iteration, n_groups, cfg.train_seed, avoid)
            batch = collect(state.actor, pool, scenes, cfg.group_size, state.execute_steps, state.generator)
            t0 = time.perf_counter()
            step = {"sac": sac_update, "filtered": filtered_update}.get(cfg.algo, update)
            stats = step(state, batch)
            update_s = time.perf_counter() - t0
            kl = kl_to_initial(state, initial, batch)
            state.iteration += 1
            prior["env_steps"] += batch.env_steps
            prior["seconds"] += batch.seconds + update_s
            ls = state.actor.log_std.detach().float()
            row = {
                "iteration": state.iteration - 1,
                "success_rate": float(np.mean([e["success"] for e in batch.episodes])),
                "mean_return": float(np.mean([e["return"] for e in batch.episodes])),
                "episodes": len(batch.episodes),
                "task_success": task_counts(batch.episodes),
                "env_steps": batch.env_steps,
                "total_env_steps": prior["env_steps"],
                "total_seconds": round(prior["seconds"], 3),
                "decisions": len(batch.decisions),
                "frames_rendered": batch.frames_rendered,
                "envs_made": pool.envs_made(),
                "rollout_seconds": round(batch.seconds, 3),
                "forward_seconds": round(batch.forward_seconds, 3),
                "update_seconds": round(update_s, 3),
                "kl_to_initial": kl,
                "log_std": float(ls.mean()),
                "entropy": float((ls + 0.5 * (1 + np.log(2 * np.pi))).sum()) if ls.ndim else None,
                **stats,
            }
            metrics_log.append(run / METRICS, row)
            shown = {"success": f"{row['success_rate']:.2f}"}
            if kl is not None:  # none for Flow-Noise
                shown["kl"] = f"{kl:.3f}"
            bar.set_postfix(shown)
            bar.update(1)
            if cfg.video_every and (
                state.iteration % cfg.video_every == 0 or state.iteration == cfg.iterations
            ):
                with torch.no_grad():
                    write_videos(cfg, state.actor.policy, spec, tasks, run, state.iteration)
            if state.iteration % cfg.save_every == 0 or state.iteration == cfg.iterations:
                state.save(run)
        bar.close()
    finally:
        pool.close()
    plot_curve(run)
    last = find_last(run)
    if last is not None:
        final = run / POLICY_DIR
        state.actor.policy.save_pretrained(final)
        if cfg.eval_episodes:
            after = _evaluate(cfg, final, run / "eval_after", tasks)
            before_path = run / "eval_before" / "eval_info.json"
            if before_path.is_file():
                agg = json.loads(before_path.read_text())["aggregates"]
                before = {"per_task": agg["per_task"], "overall": agg["overall"]}
                write_json(run / "before_after.json", {"before": before, "after": after})
    return run


def _prior_totals(run: Path) -> dict[str, float]:
    path = run / METRICS
    if not path.is_file():
        return {"env_steps": 0, "seconds": 0.0}
    rows = metrics_log.read(path)
    if not rows:
        return {"env_steps": 0, "seconds": 0.0}
    return {"env_steps": rows[-1]["total_env_steps"], "seconds": rows[-1]["total_seconds"]}


__all__ = [
    "RLRun",
    "advantages",
    "find_last",
    "kl_to_initial",
    "plot_curve",
    "run_rl",
    "running_success",
    "task_counts",
    "update",
]
