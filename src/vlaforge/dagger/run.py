"""`vlaforge dagger`: the rounds of a DAgger run (`vlaforge.dagger.config` says what a run is).

Round 0 evaluates `init`. Round r >= 1:
1. labels: the scripted expert's actions at the states the current policy visits in `episodes_per_round`
   roll-outs per task (`vlaforge.dagger.labels.scripted_round`), or the frames a person drove in the
   round's recorded dataset (`recorded_round`), written to ``round-r/data`` (LeRobot v3.0);
2. aggregate: ``round-r/mix.json``, a mixture of the base data and the labels of rounds 1..r, normalised
   with their pooled statistics (the rounds are parts of one dataset, not datasets of other robots);
3. fine-tune: the previous round's policy, whole (``TrainConfig.init_head``), for `steps_per_round` steps
   on the aggregate, under the `init` run's settings (head, chunk, batch, learning rate, ...);
4. evaluate: `vlaforge eval` on the same held-out episodes every round (`eval_seed`), training words.

``dagger.json`` holds the config, the plan (env, tasks, base data, seeds rule) and one record per
finished round (its policy, data and rates with Wilson 95% intervals), written atomically after each
round; a run started again with the same ``out`` continues after its last finished round (an unfinished
round's directory is cleared and the round runs again from its start, so its data are what an
uninterrupted run writes). ``curve.png`` plots the rates by round.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from vlaforge.atomic import atomic_write, write_json
from vlaforge.dagger.config import STATE_FILE, DaggerConfig
from vlaforge.envs.base import EnvSpec, episode_seed
from vlaforge.envs.registry import DEFAULT_ENV, get_env
from vlaforge.errors import InputError
from vlaforge.eval.stats import Rate

STATE_VERSION = 1


def _trainer_config(init: Path) -> dict[str, Any]:
    """The training config of checkpoint `init` (its trainer_state.json)."""
    path = init / "trainer_state.json"
    if not path.is_file():
        raise InputError(
            f"--init {init}: not a training checkpoint (no trainer_state.json); give a run's checkpoint, "
            "e.g. RUN/last, whose settings the rounds fine-tune with"
        )
    return dict(json.loads(path.read_text()).get("config") or {})


def _base_entries(base: str | None) -> list[dict[str, Any]]:
    """The base data as mixture entries (absolute paths)."""
    from vlaforge.data.mixture import is_mixture, parse_mixture

    if base is None or str(base).lower() == "none" or not str(base):
        return []
    if is_mixture(base):
        return [
            {
                "path": str(e.path.resolve()),
                "weight": e.weight,
                "name": e.key,
                **({"oxe": e.oxe} if e.oxe else {}),
            }
            for e in parse_mixture(base)
        ]
    path = Path(base)
    if not path.exists():
        raise InputError(
            f"--base {base}: no such dataset (give --base, or 'none' to train on the labels alone)"
        )
    return [{"path": str(path.resolve()), "name": f"base-{path.resolve().name}"}]


def base_frames(entries: list[dict[str, Any]]) -> float:
    """The base data's frames, each dataset's counted times its weight (what its share of draws scales with)."""
    from vlaforge.data.dataset import open_dataset

    return float(sum(float(e.get("weight", 1.0)) * open_dataset(e["path"]).num_frames for e in entries))


def mix_entries(plan: dict[str, Any], labelled: list[tuple[str, str]], share: float) -> list[dict[str, Any]]:
    """A round's mixture: the base entries, then each labelled dataset (`labelled`: name, path). With
    `share` > 0 the labelled datasets together are drawn that share of the time (a dataset is drawn in
    proportion to weight x frames, so they all get one weight: share x B / ((1 - share) x L), B the base's
    weighted frames, L the labels'); 0: every frame weighs the same, plain aggregation."""
    entries = [dict(e) for e in plan["base"]]
    weight = None
    if share and labelled and plan.get("base_frames"):
        total = sum(_frames(Path(path)) for _name, path in labelled)
        weight = share * float(plan["base_frames"]) / ((1.0 - share) * total)
    for name, path in labelled:
        entries.append({"path": str(path), "name": name, **({"weight": weight} if weight else {})})
    return entries


def _saved_dataset(init: Path, saved: dict[str, Any]) -> str | None:
    """The `init` run's dataset. A relative path was relative to the directory training ran in; when it
    is not found from here, that directory is recovered from where the run is and its recorded ``out``
    (``train --dataset data --out runs/a`` in /p: the run is /p/runs/a, so the data are /p/data)."""
    dataset, out = saved.get("dataset"), saved.get("out")
    if not dataset or not out or "," in dataset or Path(dataset).is_absolute() or Path(dataset).exists():
        return dataset
    tail = Path(out).parts
    for run in (init, *init.parents):
        if tail and run.parts[-len(tail) :] == tail:
            there = Path(*run.parts[: -len(tail)]) / dataset
            return str(there) if there.exists() else dataset
    return dataset


def make_plan(cfg: DaggerConfig) -> dict[str, Any]:
    """What the rounds run on: env, tasks, seeds, base data, the fine-tuning settings (all JSON)."""
    from vlaforge.eval.checks import trained_env
    from vlaforge.policy_files import read_policy_dir

    init = Path(cfg.init).resolve()
    saved = _trainer_config(init)
    files = read_policy_dir(init, need_weights=False)
    spec = get_env(cfg.env or trained_env(str(init)) or DEFAULT_ENV)
    trained = sorted(files.training_seeds())
    tasks = spec.resolve_tasks(
        cfg.tasks if cfg.tasks is not None else ([t for t in spec.tasks if t in trained] or None)
    )
    max_steps = int(cfg.max_steps or spec.max_steps)
    base = cfg.base if cfg.base is not None else _saved_dataset(init, saved)
    plan = {
        "env": spec.name,
        "tasks": tasks,
        "max_steps": max_steps,
        "base": _base_entries(base),
        "train": saved,
        "seed_rule": "roll-out i of task t in round r: episode_seed(rollout_seed, t, (r - 1) * "
        "episodes_per_round + i); evaluation episode i of task t: episode_seed(eval_seed, t, i)",
    }
    if cfg.expert == "scripted":
        _check_disjoint(cfg, spec, tasks)
        plan["expert_variant"] = _expert_variant(cfg, spec)
    if cfg.label_share:
        plan["base_frames"] = base_frames(plan["base"])
    return plan


def _expert_variant(cfg: DaggerConfig, spec: EnvSpec) -> str | None:
    """The scripted expert variant the rounds label with (None: the env has only one expert)."""
    if cfg.expert_variant is None:
        return spec.expert_variants[0] if spec.expert_variants else None
    if cfg.expert_variant not in spec.expert_variants:
        offered = list(spec.expert_variants) or "one expert and no variants"
        raise InputError(f"--expert-variant {cfg.expert_variant!r}: the {spec.name} env offers {offered}")
    return cfg.expert_variant


def _check_disjoint(cfg: DaggerConfig, spec: EnvSpec, tasks: list[str]) -> None:
    """Refuses roll-out seeds that are evaluation seeds (the rounds would train on the held-out scenes)."""
    evals = {(t, episode_seed(cfg.eval_seed, t, i)) for t in tasks for i in range(cfg.eval_episodes)}
    rolls = {
        (t, episode_seed(cfg.rollout_seed, t, cfg.rollout_index(r, i)))
        for t in tasks
        for r in range(1, cfg.rounds + 1)
        for i in range(cfg.episodes_per_round)
    }
    clash = sorted(evals & rolls)
    if clash:
        raise InputError(
            f"roll-out and evaluation episodes share {len(clash)} seeds (e.g. {clash[0]}); choose another "
            "--rollout-seed"
        )


def train_config(cfg: DaggerConfig, plan: dict[str, Any], r: int, policy: str, mix: Path, image_size: int):
    """The fine-tuning of round `r`: the whole previous policy, the `init` run's settings."""
    from vlaforge.train.config import TrainConfig

    saved = dict(plan["train"])
    for key in ("recipe", "resume", "schedule", "warmup_steps", "threads", "init", "preset", "quantize"):
        saved.pop(key, None)  # a fine-tune of its own: `cfg.schedule` with TrainConfig's warm-up for it
    changes = {
        "dataset": str(mix),
        "out": str(mix.parent / "train"),
        "init": str(policy),
        "init_head": True,
        "balance": "frames",  # the aggregate is a mixture, drawn by its weights (every frame alike)
        "steps": cfg.steps_per_round,
        "schedule": cfg.schedule,
        "save_every": None,
        "seed": cfg.seed + r,
        "device": cfg.device,
        "image_size": image_size,
    }
    if cfg.batch_size is not None:
        changes["batch_size"] = cfg.batch_size
    if cfg.lr is not None:
        changes["lr"] = cfg.lr
    return TrainConfig.from_dict({**saved, **changes})


def _evaluate(cfg: DaggerConfig, plan: dict[str, Any], policy: str, out: Path) -> dict[str, Any]:
    from vlaforge.eval.run import EvalConfig, evaluate

    result = evaluate(
        EvalConfig(
            policy=str(policy),
            env=plan["env"],
            tasks=",".join(plan["tasks"]),
            episodes=cfg.eval_episodes,
            out=out,
            workers=cfg.workers,
            max_steps=plan["max_steps"],
            instructions="train",
            videos=0,
            seed=cfg.eval_seed,
            device=cfg.device,
            overwrite=True,
        )
    )
    aggregates = result.info["aggregates"]
    return {"overall": aggregates["overall"], "per_task": aggregates["per_task"], "eval": str(out)}


def _device(name: str) -> str:
    from vlaforge.devices import resolve_device

    return resolve_device(name)


def run_round(cfg: DaggerConfig, plan: dict[str, Any], state: dict[str, Any], r: int) -> dict[str, Any]:
    """Round `r` >= 1 (labels, aggregate, fine-tune, evaluate); returns its record."""
    from vlaforge.dagger.labels import recorded_round, scripted_round
    from vlaforge.policy_files import read_policy_dir
    from vlaforge.train.loop import train

    start = time.time()
    rdir = Path(cfg.out).resolve() / f"round-{r}"  # absolute: mix.json names paths relative to itself
    if rdir.exists():  # an interrupted round: start it again from nothing
        shutil.rmtree(rdir)
    rdir.mkdir(parents=True)
    policy = state["rounds"][-1]["policy"]
    files = read_policy_dir(policy, need_weights=False)
    spec = get_env(plan["env"])
    data = rdir / "data"
    info = {"dagger": {"round": r, "expert": cfg.expert, "policy": str(policy)}}
    if plan.get("expert_variant"):
        info["dagger"]["expert_variant"] = plan["expert_variant"]
    record: dict[str, Any] = {"round": r, "data": str(data)}
    if cfg.expert == "scripted":
        episodes = scripted_round(
            policy, data, spec, plan["tasks"], cfg.episodes_per_round, cfg.rollout_seed,
            cfg.rollout_index(r, 0), plan["max_steps"], cfg.tail, _device(cfg.device), info, cfg.takeover,
            cfg.beta_for(r), plan=cfg.labels == "plan", expert_variant=plan.get("expert_variant"),
        )  # fmt: skip
        wins = sum(e["success"] for e in episodes)
        record["rollouts"] = Rate.of(wins, len(episodes)).to_dict()  # the policy's own, on training seeds
        if cfg.takeover:
            record["takeovers"] = sum(e["takeover"] is not None for e in episodes)
            record["expert_successes"] = sum(e["expert_success"] for e in episodes)
        if cfg.beta:
            record["beta"] = cfg.beta_for(r)
            record["expert_steps"] = sum(e["expert_steps"] for e in episodes)
        record["frames_added"] = sum(e["frames"] for e in episodes)
        episodes = [e for e in episodes if e["episode_index"] is not None]
    else:
        episodes = recorded_round(cfg.recorded_for(r), data, files.embodiment, info)
        record["recorded"] = cfg.recorded_for(r)
        record["frames_added"] = _frames(data)
    record["episodes_added"] = len(episodes)
    if not episodes:  # finished by the policy, or take-overs the expert did not finish: no new labels
        record["data"] = None
    labelled = [
        (f"dagger-round-{q['round']}", q["data"]) for q in [*state["rounds"][1:], record] if q.get("data")
    ]
    entries = mix_entries(plan, labelled, cfg.label_share)
    mix = write_json(rdir / "mix.json", {"statistics": "pooled", "datasets": entries})
    record["frames_labelled_total"] = (
        sum(q.get("frames_added", 0) for q in state["rounds"][1:]) + record["frames_added"]
    )
    tcfg = train_config(cfg, plan, r, policy, mix, int(files.embodiment.image_size))
    train(tcfg)
    record["policy"] = str((Path(tcfg.out) / "last").resolve())
    record["rates"] = _evaluate(cfg, plan, record["policy"], rdir / "eval")
    record["wall_s"] = round(time.time() - start, 1)
    return record


def _frames(data: Path) -> int:
    return int(json.loads((data / "meta" / "info.json").read_text())["total_frames"])


def load_state(cfg: DaggerConfig) -> dict[str, Any] | None:
    """The run's dagger.json (None when `out` holds no run); refuses one started with other settings."""
    path = Path(cfg.out) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e}); move it away to start the run again") from e
    cfg.check_continues(state.get("config") or {}, Path(cfg.out))
    return state


def run_dagger(cfg: DaggerConfig) -> dict[str, Any]:
    """Runs (or continues) a DAgger run; returns dagger.json's content.

    Raises:
        InputError: bad settings, an `init` that is not a training checkpoint, a run in `out` started
            with other settings, overlapping roll-out and evaluation seeds.
    """
    out = Path(cfg.out)
    state = load_state(cfg)
    if state is None:
        out.mkdir(parents=True, exist_ok=True)
        state = {"version": STATE_VERSION, "config": cfg.to_dict(), "plan": make_plan(cfg), "rounds": []}
    else:
        state["config"] = cfg.to_dict()
        if cfg.expert == "scripted":
            _check_disjoint(cfg, get_env(state["plan"]["env"]), state["plan"]["tasks"])
    plan = state["plan"]
    if not state["rounds"]:
        start = time.time()
        policy = str(Path(cfg.init).resolve())
        rates = _evaluate(cfg, plan, policy, out / "round-0" / "eval")
        state["rounds"].append({"round": 0, "policy": policy, "rates": rates, "frames_added": 0,
                                "frames_labelled_total": 0, "wall_s": round(time.time() - start, 1)})  # fmt: skip
        save_state(out, state)
    for r in range(len(state["rounds"]), cfg.rounds + 1):
        state["rounds"].append(run_round(cfg, plan, state, r))
        save_state(out, state)
        print(f"vlaforge dagger: round {r}: {Rate(**state['rounds'][-1]['rates']['overall']).fmt()}")
    return state


def save_state(out: Path, state: dict[str, Any]) -> None:
    """dagger.json and curve.png, atomically."""
    write_json(out / STATE_FILE, state)
    plot_curve(state, out / "curve.png")


def plot_curve(state: dict[str, Any], path: Path) -> Path:
    """The learning curve: the overall evaluation rate by round, with its Wilson 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = state["rounds"]
    x = [q["round"] for q in rounds]
    rate = [q["rates"]["overall"]["rate"] for q in rounds]
    low = [q["rates"]["overall"]["rate"] - q["rates"]["overall"]["ci_low"] for q in rounds]
    high = [q["rates"]["overall"]["ci_high"] - q["rates"]["overall"]["rate"] for q in rounds]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.errorbar(x, rate, yerr=[low, high], marker="o", capsize=4)
    ax.set_xticks(x)
    ax.set_xlabel("DAgger round (0: the initial policy)")
    ax.set_ylabel("success rate (Wilson 95%)")
    ax.set_ylim(0, 1)
    n = rounds[0]["rates"]["overall"]["n"]
    ax.set_title(f"{state['plan']['env']}: {len(state['plan']['tasks'])} tasks, {n} held-out episodes")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
