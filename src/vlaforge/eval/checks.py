"""What `vlaforge eval` evaluates, checked before any rollout: a baseline, a served policy or a checkpoint
directory, whether it fits the env (robot, cameras, image size), whether it was trained on the evaluation's
scenes or in another env, and which of a mixture's statistics un-normalise it. Nothing heavy is built here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlaforge.envs.base import EnvSpec
from vlaforge.envs.registry import ENVS, get_env
from vlaforge.errors import InputError
from vlaforge.eval.baselines import BASELINES
from vlaforge.eval.rollout import Job
from vlaforge.policy_files import PolicyFiles, read_policy_dir
from vlaforge.types import Embodiment, as_list
from vlaforge.weights_hash import sha256_file


def is_remote(policy: str) -> bool:
    """Whether `--policy` names a served policy (ws:// or wss://)."""
    return str(policy).startswith(("ws://", "wss://"))


def trained_env(policy: str) -> str | None:
    """The registered env a checkpoint directory was trained in (config.json `training_data.env`), or None
    (a baseline, a served policy, an unreadable directory that `evaluate` reports in full later, or data
    from elsewhere: synthetic, converted)."""
    if policy in BASELINES or is_remote(policy):
        return None
    try:
        files = read_policy_dir(policy, need_weights=False)
    except InputError:
        return None
    env = (files.training_data or {}).get("env")
    return env if env in ENVS else None


def training_seeds(policy: str) -> dict[str, set[int]]:
    """`PolicyFiles.training_seeds()` of a checkpoint directory; {} for a baseline, a served policy or an
    unreadable directory."""
    if policy in BASELINES or is_remote(policy):
        return {}
    try:
        return read_policy_dir(policy, need_weights=False).training_seeds()
    except InputError:
        return {}


def check_output(out: Path, overwrite: bool, policy: str = "") -> None:
    """Refuses to replace an earlier evaluation (or anything else) in `out` unless `overwrite`, and always
    an `out` that is (or holds) the checkpoint evaluated."""
    if policy and not is_remote(policy) and policy not in BASELINES:
        mine, there = Path(policy).resolve(), out.resolve()
        if there == mine or there in mine.parents:
            raise InputError(f"--out {out} would replace the checkpoint {policy}; choose another --out")
    if overwrite or not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if (out / "eval_info.json").is_file():
        raise InputError(f"{out} already holds an evaluation; use --overwrite to replace it")
    raise InputError(f"{out} exists and is not an empty directory; use --overwrite to replace it")


def check_checkpoint(
    files: PolicyFiles, task: str, spec: EnvSpec | None = None
) -> tuple[Embodiment, Embodiment]:
    """Refuses a checkpoint that does not fit the env, naming the mismatch, before any rollout.

    The environment is built (without rendering) with the checkpoint's own cameras and image size, so an
    unknown camera is caught here too.

    Args:
        files: the parsed checkpoint directory (`read_policy_dir`).
        task: a task to build the environment of.
        spec: the environment (None: the default env).

    Returns:
        (the policy's embodiment, the environment's embodiment).
    """
    return check_embodiment(files.embodiment, task, files.root, spec)


def check_embodiment(
    policy_emb: Embodiment, task: str, path: Any, spec: EnvSpec | None = None
) -> tuple[Embodiment, Embodiment]:
    """`check_checkpoint` for an embodiment from anywhere (`path` names it in the errors)."""
    spec = spec or get_env()
    try:
        env = spec.make(task, cameras=policy_emb.camera_names, image_size=policy_emb.image_size, render=False)
    except ValueError as e:
        raise InputError(f"the checkpoint {path} does not fit the {spec.title} environment: {e}") from e
    env_emb = env.embodiment
    env.close()
    try:
        policy_emb.check_fits(env_emb, what=f"{spec.title} environment")
    except ValueError as e:
        raise InputError(f"{path}: {e}. Evaluate it on the robot and cameras it was trained for.") from e
    return policy_emb, env_emb


def training_seed_overlap(jobs: list[Job], training_seeds: dict[str, set[int]]) -> list[Job]:
    """The jobs whose (task, seed) is the start of an episode the policy was trained on."""
    return [j for j in jobs if j.seed in training_seeds.get(j.task, ())]


def check_training_seeds(jobs: list[Job], files: PolicyFiles, cfg: Any) -> int:
    """Refuses, before any rollout, an evaluation that would replay scenes the policy was trained on.

    Args:
        jobs: the evaluation's episodes.
        files: the checkpoint; `files.training_seeds()` holds the (task, seed) of its training episodes.
        cfg: the `EvalConfig` (`allow_training_seeds` lets the overlap through).

    Returns:
        The number of evaluation episodes that start from a training scene (0 when none, or when the
        checkpoint does not record where it was trained).

    Raises:
        InputError: when some episodes overlap and `cfg.allow_training_seeds` is not set.
    """
    overlap = training_seed_overlap(jobs, files.training_seeds())
    if overlap and not cfg.allow_training_seeds:
        tasks = list(dict.fromkeys(j.task for j in overlap))
        dataset = (files.training_data or {}).get("dataset")
        raise InputError(
            f"{len(overlap)} of the {len(jobs)} evaluation episodes start from scenes {files.root} was "
            f"trained on (tasks: {', '.join(tasks)}; training data {dataset}): evaluating with --seed "
            f"{cfg.seed} replays training episodes. Choose another --seed (collection and evaluation seeds "
            f"must differ), or pass --allow-training-seeds to evaluate on them anyway (recorded in "
            f"eval_info.json)."
        )
    return len(overlap)


@dataclass
class PolicySide:
    """What is evaluated: its embodiment, where it comes from, and how many actions run per plan."""

    embodiment: Embodiment
    checkpoint: dict[str, Any] | None
    files: PolicyFiles | None
    execute_steps: int | None  # None: the policy's own, reported back by the workers
    chunk: int | None


def policy_side(cfg: Any, spec: EnvSpec, task: str) -> PolicySide:
    """Builds nothing heavy: reads the baseline, served policy or checkpoint of `cfg` (an `EvalConfig`)
    and checks it fits the env."""
    # ensemble re-plans every step; receding every replan_every steps; open loop runs execute_steps
    execute_steps = cfg.execute_steps if cfg.execution == "open-loop" else cfg.replan_every
    if cfg.unnorm_key is not None and (cfg.policy in BASELINES or is_remote(cfg.policy)):
        raise InputError(
            f"--unnorm-key {cfg.unnorm_key}: only a checkpoint directory trained on a mixture takes one, not "
            f"{cfg.policy} (a served policy un-normalises with the statistics its server was started with)"
        )
    if cfg.policy in BASELINES:
        emb = spec.embodiment(tuple(as_list(cfg.baseline_cameras)), cfg.baseline_image_size)
        return PolicySide(emb, None, None, 1, 1)  # one action per call
    if is_remote(cfg.policy):
        from vlaforge.eval.rollout import connect_remote

        remote = connect_remote(cfg.policy, as_list(cfg.baseline_cameras), cfg.baseline_image_size, spec.name)
        meta, chunk = remote.metadata, remote.chunk_size
        remote.close()
        emb, _ = check_embodiment(remote.embodiment, task, cfg.policy, spec)
        checkpoint = {
            "remote": cfg.policy,
            "path": cfg.policy,
            "resolved": f"{cfg.policy} (serving {meta.get('checkpoint') or 'an unnamed policy'})",
            "server": meta.get("server"),
            "checkpoint": meta.get("checkpoint"),
            "model_sha256": meta.get("model_sha256"),
        }
        if cfg.execute_steps is not None and chunk and cfg.execute_steps > chunk:
            raise InputError(
                f"--execute-steps {execute_steps} exceeds the chunk of {chunk} actions {cfg.policy} predicts"
            )
        return PolicySide(emb, checkpoint, None, execute_steps, chunk)
    path = Path(cfg.policy)
    files = read_policy_dir(path)  # also requires model.safetensors
    emb, _ = check_checkpoint(files, task, spec)
    check_unnorm_key(cfg.unnorm_key, files, path)
    checkpoint = {
        "path": str(path),
        "resolved": str(path.resolve()),
        "model_sha256": sha256_file(files.weights),
    }
    chunk = files.chunk_size
    if cfg.execute_steps is not None and cfg.execute_steps > chunk:
        raise InputError(
            f"--execute-steps {execute_steps} exceeds the chunk of {chunk} actions that {path} predicts; "
            f"use at most {chunk}"
        )
    return PolicySide(emb, checkpoint, files, execute_steps, chunk)


def stride_mismatch(cfg: Any, spec: EnvSpec, side: PolicySide) -> str | None:
    """A note when the env shows a new frame only every N steps (a world model trained with a stride) and
    the policy re-plans between them, so it acts on the frame it saw before (None when they fit)."""
    stride = int(spec.extra.get("frame_stride", 1))
    if stride <= 1 or cfg.policy in BASELINES:
        return None
    replan = 1 if cfg.execution == "ensemble" else side.execute_steps or side.chunk
    if replan and replan % stride == 0:
        return None
    return (
        f"{spec.name} shows a new frame every {stride} steps, but {cfg.policy} re-plans every "
        f"{replan or 'few'} step(s): between the frames it re-plans from the one it saw before. Use "
        f"--execution open-loop with --execute-steps a multiple of {stride}, or a world model trained "
        "with a --stride that divides the policy's steps"
    )


def check_unnorm_key(key: str | None, files: PolicyFiles, path: Path) -> None:
    """A checkpoint with several training datasets' statistics needs `key`, one of them; others none."""
    keys = sorted(files.dataset_stats)
    if key is None and len(keys) > 1:
        raise InputError(
            f"{path} was trained on a mixture of {len(keys)} datasets, each with its own statistics; choose "
            f"whose un-normalise its actions with --unnorm-key, one of {keys}"
        )
    if key is not None and key not in keys:
        have = (
            f"its datasets are {keys}"
            if keys
            else "it was trained on one dataset and has one set of statistics"
        )
        raise InputError(f"--unnorm-key {key}: not a training dataset of {path}; {have}")
