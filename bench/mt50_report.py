"""MT50 results beside the published ones: per difficulty group and overall, with Wilson intervals.

    .venv/bin/python bench/mt50_report.py --eval evals/mt50/eval_info.json \
        [--eval-100 evals/mt50-100/eval_info.json] [--out bench/results/mt50.json] [--plot docs/mt50.png]

Reads the eval_info.json of `vlaforge eval --tasks mt50` runs (one under the `vlaforge` 500-step
protocol, optionally one under `rlinf-100`), and prints, as markdown:

- success per difficulty group (easy 28, medium 11, hard 6, very hard 5 tasks) and over all 50, with
  the Wilson 95% interval, from the episodes themselves, and the mean of the four group rates (how
  SmolVLA's table averages: its 68.2 is the mean of its four group numbers, not a rate over 50 tasks);
- the same for the MT10 tasks (the subset of the MT50 evaluation's episodes: `vlaforge eval --tasks mt10`
  with the same seed runs exactly these);
- the published numbers (`ANCHORS`) with the protocol each was measured under. Those are other codebases'
  protocols (episode length, demonstrations, camera, resolution, seeds), so a row beside ours is context,
  not a controlled comparison.

Writes the table as JSON and a bar chart of the per-group rates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vlaforge.envs.metaworld import DIFFICULTY, GROUPS, MT10
from vlaforge.eval.stats import Rate, aggregate

# Published MT50 success rates (percent), per group and on average, with where each comes from and how
# it was measured. None: not reported per group.
ANCHORS: list[dict] = [
    {"name": "Diffusion Policy", "groups": {"easy": 23.1, "medium": 10.7, "hard": 1.9, "very_hard": 6.1},
     "average": 10.5, "source": "SmolVLA (arXiv 2506.01844), Meta-World table",
     "protocol": "50 demos/task, 10 trials/task; episode length not stated"},
    {"name": "TinyVLA", "groups": {"easy": 77.6, "medium": 21.5, "hard": 11.4, "very_hard": 15.8},
     "average": 31.6, "source": "SmolVLA (arXiv 2506.01844), Meta-World table",
     "protocol": "50 demos/task, 10 trials/task; episode length not stated"},
    {"name": "pi0 3.5B (robot-pretrained)", "groups": {"easy": 71.8, "medium": 48.2, "hard": 41.7, "very_hard": 30.0},
     "average": 47.9, "source": "SmolVLA (arXiv 2506.01844), Meta-World table",
     "protocol": "50 demos/task, 10 trials/task; episode length not stated"},
    {"name": "SmolVLA 2.25B", "groups": {"easy": 87.1, "medium": 51.8, "hard": 70.0, "very_hard": 64.0},
     "average": 68.2, "source": "SmolVLA (arXiv 2506.01844), Meta-World table",
     "protocol": "50 demos/task, 10 trials/task, 512 px input, chunk 50 re-planned every step; "
                 "episode length not stated"},
    {"name": "pi0 SFT (RLinf)", "groups": {"easy": 77.9, "medium": 51.8, "hard": 53.3, "very_hard": 20.0},
     "average": 50.8, "source": "RLinf docs, Meta-World results",
     "protocol": "lerobot/metaworld_mt50 demos, 10 trials/task, 100-step episodes, 5 actions per inference, "
                 "corner camera 480 px, success at any step"},
    {"name": "pi0 + RL, Flow-SDE (RLinf)", "groups": {"easy": 92.1, "medium": 74.6, "hard": 61.7, "very_hard": 84.0},
     "average": 78.1, "source": "RLinf docs, Meta-World results",
     "protocol": "as pi0 SFT (RLinf), after PPO in simulation"},
    {"name": "pi0 + RL, Flow-Noise (piRL)", "groups": {}, "average": 85.8,
     "source": "RLinf docs, piRL (arXiv 2510.25889) results",
     "protocol": "as pi0 SFT (RLinf), after PPO in simulation; per-group rates not published in the docs"},
    {"name": "Evo-1 0.77B", "groups": {"easy": 89.2, "medium": 76.8, "hard": 77.2, "very_hard": 79.2},
     "average": 80.6, "source": "Evo-1 (arXiv 2511.04555), Table 1",
     "protocol": "50 demos/task, 10 trials/task x 5 runs, corner2 448 px, 400-step episodes in its client"},
]  # fmt: skip


def summarize(info: dict) -> dict:
    """Per group, overall and MT10 rates of one eval_info.json (`vlaforge.eval.stats` pools them)."""
    eps = info["episodes"]
    pooled = aggregate(eps, DIFFICULTY, GROUPS)
    out = {**pooled["per_group"], "overall": pooled["overall"]}
    out["group_mean"] = float(np.mean([out[g]["rate"] for g in GROUPS]))
    mt10 = [e for e in eps if e["task"] in MT10]
    out["mt10"] = Rate.of(sum(bool(e["success"]) for e in mt10), len(mt10)).to_dict()
    return out


def _cell(r: dict) -> str:
    return f"{r['successes']}/{r['n']} = {100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", required=True, help="eval_info.json of the 500-step (vlaforge) MT50 evaluation")
    ap.add_argument("--eval-100", default=None, help="eval_info.json of the rlinf-100 MT50 evaluation")
    ap.add_argument("--out", default="bench/results/mt50.json")
    ap.add_argument("--plot", default="docs/mt50.png")
    args = ap.parse_args()

    runs = {}
    for label, path in (("500 steps", args.eval), ("100 steps", args.eval_100)):
        if path is None:
            continue
        info = json.loads(Path(path).read_text())
        if sorted(info["tasks"]) != sorted(DIFFICULTY):
            raise SystemExit(f"{path}: evaluates {len(info['tasks'])} tasks, not the 50 of MT50")
        proto = info["protocol"]
        runs[label] = {"summary": summarize(info), "protocol": {
            k: proto.get(k) for k in ("protocol", "max_steps", "episodes_per_task", "seed", "cameras",
                                      "image_size", "execution", "execute_steps", "runner", "wall_time_s")
        }, "policy": info["policy"]}  # fmt: skip

    cols = [*GROUPS, "overall", "mt10"]
    print("| vlaforge, tiny preset | " + " | ".join(cols) + " | mean of groups |")
    print("|---" * (len(cols) + 2) + "|")
    for label, run in runs.items():
        s = run["summary"]
        cells = " | ".join(_cell(s[c]) for c in cols)
        print(f"| {label} | {cells} | {100 * s['group_mean']:.1f}% |")
    print()
    print("| published | " + " | ".join([*GROUPS, "average"]) + " | protocol |")
    print("|---" * (len(GROUPS) + 3) + "|")
    for a in ANCHORS:
        cells = [("" if a["groups"].get(g) is None else f"{a['groups'][g]:.1f}") for g in GROUPS]
        print(f"| {a['name']} | " + " | ".join(cells) + f" | {a['average']:.1f} | {a['protocol']} |")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"vlaforge": runs, "published": ANCHORS}, indent=2) + "\n")
    plot(runs, Path(args.plot))
    print(f"\nwrote {out} and {args.plot}")


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slots = [*GROUPS, "mean of groups"]
    bars = [(f"vlaforge tiny, {label}", run["summary"]) for label, run in runs.items()]
    pub = [(a["name"], a) for a in ANCHORS if all(a["groups"].get(g) is not None for g in GROUPS)]
    width = 0.8 / max(1, len(bars) + len(pub))
    x = np.arange(len(slots))
    fig, ax = plt.subplots(figsize=(11, 5.5))
    k = 0
    for name, s in bars:
        # Wilson intervals on the groups; the mean of the four groups (how the papers average) has none
        rate = np.array([s[g]["rate"] for g in GROUPS] + [s["group_mean"]])
        lo = np.array([s[g]["ci_low"] for g in GROUPS] + [np.nan])
        hi = np.array([s[g]["ci_high"] for g in GROUPS] + [np.nan])
        ax.bar(
            x + k * width,
            100 * rate,
            width,
            yerr=100 * np.stack([rate - lo, hi - rate]),
            capsize=3,
            label=name,
        )
        k += 1
    for name, a in pub:
        vals = [a["groups"][g] for g in GROUPS] + [a["average"]]
        ax.bar(x + k * width, vals, width, label=f"{name} (published)", alpha=0.6, hatch="//")
        k += 1
    ax.set_xticks(x + width * (k - 1) / 2, [g.replace("_", " ") for g in slots])
    ax.set_ylabel("success % (ours: Wilson 95% CI)")
    ax.set_ylim(0, 100)
    ax.set_title("Meta-World MT50, 10 episodes per task")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
