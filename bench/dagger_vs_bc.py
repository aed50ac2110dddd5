"""DAgger against behaviour cloning on the same number of extra expert frames (docs/dagger.md, "Measured").

    python bench/dagger_vs_bc.py --out /tmp/dagger_bench
    python bench/dagger_vs_bc.py --init RUN/last --tasks reach-v3,push-v3 --out /tmp/dagger_from_run

1. base: `vlaforge collect` of `--demos` expert episodes per task (seed 0); init: the tiny preset trained on
   them for `--init-steps` steps. With `--init`, an existing run's checkpoint is the start instead, its
   training dataset the base, and its camera and image size those of the rounds' frames.
2. DAgger: `vlaforge dagger` from init, `--rounds` rounds of `--rollouts` roll-outs per task (with
   `--takeover N`, the expert takes over roll-outs not finished in N steps and only its frames are labels;
   with `--beta B`, the expert drives each chunk with probability B * beta_decay ** (r - 1); with
   `--expert-variant recovering`, Meta-World's recovering expert labels).
3. BC: from the same init, the same rounds; round r adds ordinary expert demonstrations (seeds
   episode_seed(3000, task, k), k counting on over the rounds) until each task has at least as many new
   frames as DAgger's round r labelled for it, aggregated and fine-tuned exactly as DAgger's round r
   (`vlaforge.dagger.run.train_config`), evaluated on the same held-out episodes.
Writes OUT/result.json (every round's rates, both arms) and OUT/curves.png.
"""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from pathlib import Path

import numpy as np

from vlaforge.envs.rendering import configure_rendering

configure_rendering()

from vlaforge.atomic import write_json  # noqa: E402
from vlaforge.config import SCHEDULES  # noqa: E402
from vlaforge.dagger.config import LABELS, DaggerConfig  # noqa: E402
from vlaforge.dagger.run import _evaluate, mix_entries, plot_curve, run_dagger, train_config  # noqa: E402
from vlaforge.envs.base import episode_seed  # noqa: E402
from vlaforge.envs.collect import CollectConfig, collect, episode_writer, run_expert_episode  # noqa: E402
from vlaforge.envs.registry import get_env  # noqa: E402


def easy_tasks(n: int) -> list[str]:
    """The rule fixed in advance: the first `n` MT10 tasks of Meta-World's easy group, in MT10's order."""
    spec = get_env("metaworld")
    return [t for t in spec.resolve_tasks("mt10") if spec.difficulty[t] == "easy"][:n]


def bc_round(
    out: Path,
    tasks: list[str],
    need: dict[str, int],
    cameras: list[str],
    size: int,
    max_steps: int | None,
    next_k: dict,
) -> dict:
    """Expert demonstrations until each task has `need[task]` new frames; returns frames per task."""
    spec = get_env("metaworld")
    kept: list[dict] = []
    writer = episode_writer(out, spec, cameras, size, {"episodes": kept})
    got = {}
    for task in tasks:
        got[task] = 0
        failed = 0
        while got[task] < need[task]:
            k = next_k[task]
            next_k[task] += 1
            seed = episode_seed(3000, task, k)
            frames = run_expert_episode(task, seed, cameras, size, max_steps)
            if frames is None:
                failed += 1
                if failed >= 20:
                    raise SystemExit(
                        f"{task}: the expert failed 20 episodes in a row within {max_steps} steps"
                    )
                continue
            failed = 0
            index = writer.add_episode(task=spec.instructions[task], frames=frames)
            kept.append({"episode_index": index, "task": task, "seed": seed})
            got[task] += len(frames["action"])
    writer.finalize()
    return got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--tasks",
        default="2",
        help="a number n (the first n easy MT10 tasks, the default rule) or a comma list of task names",
    )
    p.add_argument(
        "--init", default=None, help="start from this checkpoint (RUN/last) instead of training one"
    )
    p.add_argument("--demos", type=int, default=5)
    p.add_argument("--init-steps", type=int, default=600)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--steps-per-round", type=int, default=150)
    p.add_argument(
        "--takeover",
        type=int,
        default=0,
        help="DAgger's roll-outs: 0 labels every visited state; N: the expert takes over a roll-out not finished "
        "in N steps and only its frames are labels (DaggerConfig.takeover)",
    )
    p.add_argument(
        "--labels", choices=list(LABELS), default="step",
        help="DAgger's chunk targets: the expert's labels of the states after a frame (step) or its own "
        "open-loop plan from the frame's state (plan; DaggerConfig.labels)",
    )  # fmt: skip
    p.add_argument(
        "--expert-variant", default=None,
        help="DAgger's scripted expert: one of the env's expert variants (Meta-World: script, recovering; "
        "DaggerConfig.expert_variant); the baseline's demonstrations start from initial states, where the "
        "variants act alike",
    )  # fmt: skip
    p.add_argument(
        "--label-share", type=float, default=0.0,
        help="both arms: the share of a round's fine-tuning draws taken from the rounds' new frames (DAgger's "
        "labels, the baseline's demonstrations); 0: every frame weighs the same (DaggerConfig.label_share)",
    )  # fmt: skip
    p.add_argument(
        "--beta", type=float, default=0.0,
        help="DAgger's roll-outs: the expert drives a chunk with this probability in round 1 (DaggerConfig.beta)",
    )  # fmt: skip
    p.add_argument(
        "--beta-decay", type=float, default=1.0, help="round r mixes with beta * beta_decay ** (r - 1)"
    )
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--max-steps", type=int, default=150, help="0: the env's episode length")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument(
        "--lr", type=float, default=None, help="fine-tuning learning rate (default: the init run's)"
    )
    p.add_argument(
        "--schedule", choices=list(SCHEDULES), default="constant",
        help="each round's learning-rate schedule, both arms (cosine: warm-up, then down to 0)",
    )  # fmt: skip
    a = p.parse_args()
    from vlaforge.train.config import TrainConfig
    from vlaforge.train.loop import train

    out = Path(a.out).resolve()
    tasks = easy_tasks(int(a.tasks)) if a.tasks.isdigit() else [t for t in a.tasks.split(",") if t]
    max_steps = a.max_steps or None
    t0 = time.time()
    if a.init is None:
        base = out / "base"
        if not base.exists():
            collect(CollectConfig(tasks=tasks, episodes=a.demos, out=base, image_size=a.image_size, workers=2,
                                  max_steps=max_steps))  # fmt: skip
        run = out / "init"
        if not (run / "last").exists():
            train(
                TrainConfig(
                    dataset=str(base), out=str(run), steps=a.init_steps, device="cpu", save_every=None
                )
            )
        init = run / "last"
    else:
        init = Path(a.init).resolve()
    from vlaforge.policy_files import read_policy_dir

    emb = read_policy_dir(init, need_weights=False).embodiment
    cameras, size = list(emb.camera_names), int(emb.image_size)
    timing = {"base_and_init_s": round(time.time() - t0, 1)}
    t1 = time.time()
    cfg = DaggerConfig(init=str(init), out=str(out / "dagger"), rounds=a.rounds, tasks=",".join(tasks),
                       episodes_per_round=a.rollouts, steps_per_round=a.steps_per_round, max_steps=max_steps,
                       eval_episodes=a.eval_episodes, workers=2, device="cpu", lr=a.lr,
                       schedule=a.schedule, takeover=a.takeover, beta=a.beta, beta_decay=a.beta_decay,
                       labels=a.labels, expert_variant=a.expert_variant, label_share=a.label_share)  # fmt: skip
    state = run_dagger(cfg)
    timing["dagger_s"] = round(time.time() - t1, 1)
    t2 = time.time()
    bc = {"plan": state["plan"], "rounds": [state["rounds"][0]]}
    next_k = dict.fromkeys(tasks, 0)
    demos: list[str] = []
    for r in range(1, a.rounds + 1):
        rdir = out / "bc" / f"round-{r}"
        record = json.loads((rdir / "record.json").read_text()) if (rdir / "record.json").is_file() else None
        if record is None:
            from vlaforge.data.lerobot import LeRobotDataset

            per_task = {t: 0 for t in tasks}
            if state["rounds"][r]["data"]:  # None: DAgger's round labelled nothing
                labelled = LeRobotDataset(state["rounds"][r]["data"])
                for e in labelled.info["vlaforge"]["episodes"]:
                    per_task[e["task"]] += int(e["frames"])
            got = dict.fromkeys(tasks, 0)
            if any(per_task.values()):
                got = bc_round(rdir / "data", tasks, per_task, cameras, size, max_steps, next_k)
                demos.append(str(rdir / "data"))
            entries = mix_entries(
                state["plan"], [(f"bc-{Path(d).parent.name}", d) for d in demos], a.label_share
            )
            mix = write_json(rdir / "mix.json", {"statistics": "pooled", "datasets": entries})
            prev = bc["rounds"][-1]["policy"]
            tcfg = train_config(cfg, state["plan"], r, prev, mix, size)
            train(tcfg)
            policy = str((Path(tcfg.out) / "last").resolve())
            record = {"round": r, "policy": policy, "frames_added": int(sum(got.values())),
                      "frames_dagger": int(sum(per_task.values())),
                      "rates": _evaluate(cfg, state["plan"], policy, rdir / "eval")}  # fmt: skip
            record["next_k"] = dict(next_k)
            write_json(rdir / "record.json", record)
        next_k.update(record["next_k"])
        if (rdir / "data").is_dir() and str(rdir / "data") not in demos:
            demos.append(str(rdir / "data"))
        bc["rounds"].append(record)
    timing["bc_s"] = round(time.time() - t2, 1)
    plot_curve(bc, out / "bc_curve.png")
    result = {
        "tasks": tasks,
        "settings": vars(a),
        "dagger": [
            {"round": q["round"], "frames_added": q["frames_added"], **q["rates"]["overall"]}
            for q in state["rounds"]
        ],
        "bc": [
            {"round": q["round"], "frames_added": q["frames_added"], **q["rates"]["overall"]}
            for q in bc["rounds"]
        ],
        "timing": timing,
    }
    write_json(out / "result.json", result)
    _curves(result, out / "curves.png")
    print(json.dumps(result, indent=1))


def _curves(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlaforge.atomic import atomic_write

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for name, shift in (("dagger", -0.05), ("bc", 0.05)):
        rows = result[name]
        x = np.asarray([q["round"] for q in rows]) + shift
        y = np.asarray([q["rate"] for q in rows])
        err = [y - [q["ci_low"] for q in rows], np.asarray([q["ci_high"] for q in rows]) - y]
        ax.errorbar(
            x,
            y,
            yerr=err,
            marker="o",
            capsize=4,
            label="DAgger" if name == "dagger" else "BC, same extra frames",
        )
    ax.set_xlabel("round")
    ax.set_ylabel("success rate (Wilson 95%)")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_xticks(sorted({q["round"] for q in result["dagger"]}))
    names = ", ".join(t.removesuffix("-v3") for t in result["tasks"])
    ax.set_title("\n".join(textwrap.wrap(names, 60)), fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
