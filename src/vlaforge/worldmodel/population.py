"""`vlaforge worldmodel agreement`: a population of policies evaluated in the simulator and in the world
model on the same tasks and seeds; per-(policy, task) success rates, their agreement
(`vlaforge.worldmodel.agreement`), a table and a scatter plot. Policies named in `heldout_family` (a family
kept out of the world model's training data) are marked in the table and the plot.

With `reference_seed`, every policy is also evaluated in the simulator on another set of scenes, and the
simulator's agreement with itself is reported beside the world model's: with a few episodes per
(policy, task) the rates carry binomial noise, so even a proxy as good as the simulator would not reach a
Pearson r of 1; that reference is the ceiling the episode count leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlaforge.atomic import atomic_write, write_json, write_text
from vlaforge.errors import InputError
from vlaforge.worldmodel.agreement import agreement, by_task, predicted_self_pearson

# Below this hit rate on the real successful frames, a task's imagined successes say more about the judge
# than about the world model (it would call nearly every imagined episode a failure).
BLIND_JUDGE_HIT_RATE = 0.1


@dataclass
class AgreementConfig:
    """The population and the two evaluators (``vlaforge worldmodel agreement``).

    Attributes:
        policies: comma list of policies (checkpoint directories or baselines), at least two.
        worldmodel: the world model's run (with its judge in ``RUN/judge``).
        out: output directory (``agreement.json``, ``agreement.md``, ``agreement.png``, ``evals/``).
        env: the simulator (None: each checkpoint's own).
        tasks: comma list of tasks (None: the world model's tasks).
        episodes: episodes per task in each evaluator.
        max_steps: episode length in both (None: the world model's default).
        seed: base seed of both evaluations.
        heldout_family: comma list of the policies whose family the world model never saw in training.
        workers: rollout workers of the simulator's evaluations.
        baseline_image_size: image side the baselines render (None: the world model's).
        reference_seed: another base seed (None: none): each policy is also evaluated in the simulator
            from there, and the simulator's agreement with itself (scenes of `seed` against these) is
            reported as ``simulator_vs_itself``, the ceiling sampling noise leaves at `episodes`.
        sim_evals: an earlier agreement's output directory whose simulator evaluations (and reference
            ones) are read instead of run again, e.g. to score a second judge or world model against the
            same simulator episodes; each must be of the same policy (its weights' sha256), tasks, episodes,
            seed and episode length, or the command stops before evaluating anything.
    """

    policies: str
    worldmodel: str
    out: str
    env: str | None = None
    tasks: str | None = None
    episodes: int = 10
    max_steps: int | None = None
    seed: int = 1000
    heldout_family: str | None = None
    workers: int = 0
    baseline_image_size: int | None = None
    reference_seed: int | None = None
    sim_evals: str | None = None

    def __post_init__(self) -> None:
        if len(self.names) < 2:
            raise InputError(f"--policies needs at least two policies; got {self.policies!r}")
        if self.episodes < 1:
            raise InputError(f"episodes must be >= 1; got {self.episodes}")
        if self.reference_seed is not None and self.reference_seed == self.seed:
            raise InputError(
                f"--reference-seed {self.reference_seed} equals --seed: the reference evaluation must start "
                "from other scenes (e.g. --reference-seed 2000)"
            )

    @property
    def names(self) -> list[str]:
        return [p.strip() for p in str(self.policies).split(",") if p.strip()]


def _rates(info: dict) -> dict[str, float]:
    return {t: float(v["rate"]) for t, v in info["aggregates"]["per_task"].items()}


def run_agreement(cfg: AgreementConfig) -> dict:
    """Evaluates every policy in both evaluators and writes the table and plot; returns the summary."""
    from vlaforge.envs.base import episode_seed
    from vlaforge.eval.run import EvalConfig, evaluate
    from vlaforge.worldmodel.env import PREFIX, world_model_spec

    wm = world_model_spec(cfg.worldmodel)
    tasks = cfg.tasks or ",".join(wm.tasks)
    # Episodes whose imagined run starts from the real scene of the simulator's episode (the world model
    # holds a start recorded at that seed); the others start from another held-out scene of the task.
    known = wm.extra.get("start_seeds") or {}
    pairs = [(t, episode_seed(cfg.seed, t, i)) for t in tasks.split(",") for i in range(cfg.episodes)]
    same_scene = sum(s in set(known.get(t, ())) for t, s in pairs)
    try:  # before the long part: the datasets are read from where the world model was trained
        judge_frames, judge_check = _judge_check(cfg.worldmodel)
    except InputError as e:
        judge_frames, judge_check = "real", {"unavailable": str(e)}
        print(f"agreement: the judge is not checked on held-out frames ({e})")
    for task in blind_tasks(judge_check):
        hit = judge_check[task]["tpr"]
        print(f"agreement: warning: the judge sees {hit:.0%} of {task}'s {judge_frames.replace('_', ' ')} successful frames; the "
              "world model's rates on it will measure the judge")  # fmt: skip
    size = cfg.baseline_image_size or wm.image_size
    max_steps = cfg.max_steps or wm.max_steps
    out = Path(cfg.out)
    held = {p.strip() for p in (cfg.heldout_family or "").split(",") if p.strip()}
    kinds = {
        "sim": cfg.seed,
        **({"sim-reference": cfg.reference_seed} if cfg.reference_seed is not None else {}),
    }
    earlier = {}  # read and checked before anything runs
    for k, policy in enumerate(cfg.names if cfg.sim_evals else ()):
        weights = _weights_sha256(policy)
        for kind, seed in kinds.items():
            now = {"policy": policy, "tasks": sorted(tasks.split(",")), "episodes": cfg.episodes, "seed": seed,
                   "max steps": max_steps, **({"weights": weights} if weights else {})}  # fmt: skip
            earlier[k, kind] = _earlier_sim(Path(cfg.sim_evals), k, kind, now)
    rows = []
    for k, policy in enumerate(cfg.names):
        common = dict(policy=policy, tasks=tasks, episodes=cfg.episodes, max_steps=max_steps,
                      videos=1, instructions="train", baseline_image_size=size, baseline_cameras=list(wm.cameras),
                      overwrite=True, allow_training_seeds=True)  # fmt: skip
        sim = {}
        for kind, seed in kinds.items():
            sim[kind] = (
                earlier.get((k, kind))
                or evaluate(
                    EvalConfig(
                        env=cfg.env,
                        out=out / "evals" / f"{k:02d}-{kind}",
                        workers=cfg.workers,
                        seed=seed,
                        **common,
                    )
                ).info
            )
        imag = evaluate(EvalConfig(env=f"{PREFIX}{cfg.worldmodel}", out=out / "evals" / f"{k:02d}-wm", workers=0,
                                   envs_per_worker=0, seed=cfg.seed, **common))  # fmt: skip
        rs, ri = _rates(sim["sim"]), _rates(imag.info)
        rr = _rates(sim["sim-reference"]) if "sim-reference" in sim else None
        for task in rs:
            rows.append({"policy": policy, "task": task, "sim": rs[task], "worldmodel": ri.get(task, 0.0),
                         "heldout_family": policy in held, **({"sim_reference": rr[task]} if rr else {})})  # fmt: skip
    per_task, mean_over_tasks = by_task(rows)
    summary = {
        "mean_over_tasks": mean_over_tasks,
        "per_task": per_task,
        "all": agreement([r["sim"] for r in rows], [r["worldmodel"] for r in rows]),
        "per_policy": agreement(*_per_policy(rows)),
        "rows": rows,
        "episodes_per_task": cfg.episodes,
        "same_start_scenes": {"matched": same_scene, "episodes": len(pairs)},
        "max_steps": max_steps,
        "worldmodel": cfg.worldmodel,
        "sim_evals": cfg.sim_evals,
    }
    summary["judge_frames"] = judge_frames
    summary[f"judge_on_{judge_frames}_frames"] = judge_check
    summary["judge_blind_tasks"] = blind_tasks(judge_check)
    if cfg.reference_seed is not None:
        ref_per_task, ref_mean = by_task(rows, proxy="sim_reference")
        summary["simulator_vs_itself"] = {
            "reference_seed": cfg.reference_seed,
            "mean_over_tasks": ref_mean,
            "per_task": ref_per_task,
            "all": agreement([r["sim"] for r in rows], [r["sim_reference"] for r in rows]),
            "predicted_pearson": _predicted(rows, cfg.episodes),
        }
    seen = [r for r in rows if not r["heldout_family"]]
    if held and len(seen) > 1:
        summary["seen_families"] = agreement([r["sim"] for r in seen], [r["worldmodel"] for r in seen])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "agreement.json", summary)
    write_text(out / "agreement.md", format_table(summary))
    plot(rows, summary["all"], out / "agreement.png")
    return summary


def _weights_sha256(policy: str) -> str | None:
    """The sha256 of a checkpoint's weights (what an evaluation records), None for a baseline."""
    from vlaforge.policy_files import read_policy_dir
    from vlaforge.weights_hash import sha256_file

    return sha256_file(read_policy_dir(Path(policy)).weights) if Path(policy).is_dir() else None


def _earlier_sim(root: Path, k: int, kind: str, now: dict) -> dict:
    """The eval_info.json of policy `k`'s simulator evaluation `kind` in an earlier agreement's `root`,
    checked to be the protocol `now` describes: the same policy (and weights' sha256 for a checkpoint),
    tasks, episodes, seed and episode length."""
    import json

    path = root / "evals" / f"{k:02d}-{kind}" / "eval_info.json"
    if not path.is_file():
        raise InputError(
            f"--sim-evals {root}: no {path.relative_to(root)}; give the --out of an earlier "
            "`vlaforge worldmodel agreement` over the same policies, in the same order"
            + (" and with the same --reference-seed" if kind != "sim" else "")
        )
    info = json.loads(path.read_text())
    p = info["protocol"]
    was = {"policy": info["policy"], "tasks": sorted(info["tasks"]), "episodes": p["episodes_per_task"],
           "seed": p["seed"], "max steps": p["max_steps"],
           "weights": (p.get("checkpoint") or {}).get("model_sha256")}  # fmt: skip
    differ = [f"{key} {was[key]} there, {now[key]} here" for key in now if was.get(key) != now[key]]
    if differ:
        raise InputError(f"--sim-evals: {path} is not this protocol's evaluation ({'; '.join(differ)})")
    return info


def blind_tasks(judge_check: dict) -> list[str]:
    """The tasks whose successful held-out frames (real, or imagined for a judge of imagined frames) the
    judge mostly misses (hit rate < `BLIND_JUDGE_HIT_RATE`)."""
    if "unavailable" in judge_check:
        return []
    return [t for t, j in judge_check.items() if j["tpr"] is not None and j["tpr"] < BLIND_JUDGE_HIT_RATE]


def _judge_check(worldmodel: str) -> tuple[str, dict[str, dict]]:
    """The judge on the world model's held-out episodes (where its episodes start): can it see a success
    where the simulator flagged one? (`vlaforge.worldmodel.judge.on_frames`) On their real frames, or,
    for a judge trained on the model's imagined frames, on the model's open-loop replays of them (the
    frames it will score), or, for a scene judge, on the states the state predictor gives in open-loop
    replays (`vlaforge.worldmodel.scene.on_predicted`); returns which ("real", "imagined" or
    "predicted_scene") and the per-task figures.

    Raises:
        InputError: the world model's datasets cannot be read (moved, or named relative to where a world
            model trained before they were stored as absolute paths).
    """
    import json

    from vlaforge.worldmodel.config import WM_CONFIG
    from vlaforge.worldmodel.data import training_episodes
    from vlaforge.worldmodel.env import judge_dir, model_dir
    from vlaforge.worldmodel.judge import load_judge, on_frames

    root = model_dir(worldmodel)
    from vlaforge.worldmodel.env import has_scene_judge

    if has_scene_judge(root):  # its check was made when it was trained, on the states it will judge
        from vlaforge.worldmodel.state import STATE_CONFIG, state_dir

        report = json.loads((state_dir(root) / STATE_CONFIG).read_text())["report"]
        return "predicted_scene", report["scene_judge"]["on_predicted_states"]
    judge, meta = load_judge(judge_dir(root))
    eps = training_episodes(json.loads((root / WM_CONFIG).read_text()))
    frames = meta.get("frames", "real")
    if frames == "imagined":
        from vlaforge.worldmodel.data import imagined_episodes
        from vlaforge.worldmodel.train import load_worldmodel

        eps = imagined_episodes(load_worldmodel(worldmodel), eps, episodes=eps.heldout)
    return frames, on_frames(judge, eps, eps.heldout)


def _predicted(rows: list[dict], episodes: int) -> dict:
    """Per task and as the mean over tasks, the simulator-against-itself Pearson r predicted at other episode
    counts (`vlaforge.worldmodel.agreement.predicted_self_pearson`); a task with one policy has none."""
    per = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        if len(mine) > 1:
            per[task] = predicted_self_pearson(
                [r["sim"] for r in mine], [r["sim_reference"] for r in mine], episodes
            )
    counts = next(iter(per.values()), {})
    mean = {
        n: round(float(sum(v[n] for v in per.values()) / len(per)), 4)
        for n in counts
        if all(v[n] is not None for v in per.values())
    }
    return {
        "model": "binomial rates around each policy's true rate",
        "per_task": per,
        "mean_over_tasks": mean,
    }


def _per_policy(rows: list[dict]) -> tuple[list[float], list[float]]:
    names = list(dict.fromkeys(r["policy"] for r in rows))
    sim = [
        sum(r["sim"] for r in rows if r["policy"] == n) / sum(r["policy"] == n for r in rows) for n in names
    ]
    wm = [
        sum(r["worldmodel"] for r in rows if r["policy"] == n) / sum(r["policy"] == n for r in rows)
        for n in names
    ]
    return sim, wm


def format_table(summary: dict) -> str:
    """Markdown: the metrics, then one row per (policy, task)."""
    lines = list(_METRICS_HEADER)
    if "mean_over_tasks" in summary:  # SimplerEnv's form: per task over the policies, then the mean
        m = summary["mean_over_tasks"]
        lines.append(_metrics_row(f"mean over {m['tasks']} tasks", m))
        lines += [_metrics_row(f"{task} ({a['n']})", a) for task, a in summary["per_task"].items()]
    for key in ("all", "per_policy", "seen_families"):
        if key in summary:
            lines.append(_metrics_row(f"{key} ({summary[key]['n']})", summary[key]))
    if "simulator_vs_itself" in summary:
        ref = summary["simulator_vs_itself"]
        lines += ["", f"The simulator against itself: the same policies from the scenes of seed {ref['reference_seed']} "
                      "(the ceiling sampling noise leaves at this number of episodes):", "",
                      *_METRICS_HEADER,
                      _metrics_row(f"mean over {ref['mean_over_tasks']['tasks']} tasks", ref["mean_over_tasks"])]  # fmt: skip
        lines += [_metrics_row(f"{task} ({a['n']})", a) for task, a in ref["per_task"].items()]
        lines.append(_metrics_row(f"all ({ref['all']['n']})", ref["all"]))
        predicted = ref.get("predicted_pearson", {}).get("mean_over_tasks")
        if predicted:
            at = ", ".join(f"{r:.2f} at {n}" for n, r in predicted.items())
            lines += ["", f"Predicted Pearson of the simulator against itself (mean over tasks; binomial model): {at} "
                          "episodes per (policy, task)."]  # fmt: skip
    if "same_start_scenes" in summary:
        m = summary["same_start_scenes"]
        lines += ["", f"{m['matched']} of {m['episodes']} imagined episodes per policy start from the real first "
                      "frame of the simulator's episode at the same seed."]  # fmt: skip
    kind = summary.get("judge_frames", "real")
    check = summary.get(f"judge_on_{kind}_frames")
    if check and "unavailable" not in check:
        what = {"real": "the real frames", "predicted_scene": "the predicted scene states"}.get(
            kind, "the world model's open-loop replays"
        )
        lines += ["", f"The judge on {what} of the world model's held-out episodes (where imagined episodes "
                      "start):", "", "| task | episodes | successful frames | hit rate | false alarms | "
                      "episodes it ends before the simulator's success |", "|---|---|---|---|---|---|"]  # fmt: skip
        for task, j in check.items():
            tpr = "-" if j["tpr"] is None else f"{j['tpr']:.2f}"
            fpr = "-" if j["fpr"] is None else f"{j['fpr']:.3f}"
            lines.append(
                f"| {task} | {j['episodes']} | {j['successes']} | {tpr} | {fpr} | {j['fires_before_success']} |"
            )
        for task in blind_tasks(check):
            lines += ["", f"Warning: on {task} the judge sees under {BLIND_JUDGE_HIT_RATE:.0%} of the {kind.replace('_', ' ')} successful "
                          "frames, so the world model's rates there measure the judge, not the imagined episodes; "
                          "a judge that sees this task's success (another camera or resolution, more recorded "
                          "successes) comes first."]  # fmt: skip
    ref = bool(summary["rows"]) and "sim_reference" in summary["rows"][0]
    lines += ["", "| policy | task | simulator | world model | held-out family |" + (" simulator, reference scenes |" if ref else ""),
              "|---|---|---|---|---|" + ("---|" if ref else "")]  # fmt: skip
    for r in summary["rows"]:
        mark = "yes" if r["heldout_family"] else ""
        extra = f" {r['sim_reference']:.2f} |" if ref else ""
        lines.append(
            f"| {r['policy']} | {r['task']} | {r['sim']:.2f} | {r['worldmodel']:.2f} | {mark} |{extra}"
        )
    return "\n".join(lines) + "\n"


_METRICS_HEADER = ("| pairs | Pearson | Spearman | MMRV | mean abs error |", "|---|---|---|---|---|")


def _metrics_row(name: str, a: dict) -> str:
    return (
        f"| {name} | {a['pearson']:.3f} | {a['spearman']:.3f} | {a['mmrv']:.3f} | {a['mean_abs_error']:.3f} |"
    )


def plot(rows: list[dict], metrics: dict, path: Path) -> Path:
    """Scatter of world-model vs simulator success, held-out family in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ref = [r for r in rows if "sim_reference" in r]
    if ref:  # the simulator on other scenes: how far a proxy as good as the simulator scatters
        ax.scatter([r["sim"] for r in ref], [r["sim_reference"] for r in ref], marker="x", c="0.5", alpha=0.7,
                   label="simulator, other scenes")  # fmt: skip
    for held, color, label in ((False, "tab:blue", "seen families"), (True, "tab:red", "held-out family")):
        pts = [r for r in rows if r["heldout_family"] == held]
        if pts:
            ax.scatter(
                [r["sim"] for r in pts], [r["worldmodel"] for r in pts], c=color, label=label, alpha=0.7
            )
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ylabel = "world model (dots) / simulator, other scenes (crosses)" if ref else "world-model success"
    ax.set(xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), xlabel="simulator success", ylabel=ylabel)
    ax.set_title(
        f"r={metrics['pearson']:.2f}  rho={metrics['spearman']:.2f}  MMRV={metrics['mmrv']:.2f}", fontsize=9
    )
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
