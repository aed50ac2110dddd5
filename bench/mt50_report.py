"""Whole-benchmark results beside the published ones: per difficulty group and overall, with Wilson
intervals (by default the default env's MT50).

    .venv/bin/python bench/mt50_report.py [--env ENV] --eval evals/mt50/eval_info.json \
        [--eval-100 evals/mt50-100/eval_info.json] [--out bench/results/mt50.json] [--plot docs/mt50.png]

Reads the eval_info.json of `vlaforge eval --tasks all` runs of one env (one under the `vlaforge`
500-step protocol, optionally one under `rlinf-100`), and prints, as markdown:

- success per difficulty group (easy 28, medium 11, hard 6, very hard 5 tasks) and over all 50, with
  the Wilson 95% interval, from the episodes themselves, and the mean of the four group rates (how
  SmolVLA's table averages: its 68.2 is the mean of its four group numbers, not a rate over 50 tasks);
- the same for the env's subset (`EnvSpec.extra["subset"]`, MT10 for MT50: a subset of the whole
  evaluation's episodes; `vlaforge eval --tasks mt10` with the same seed runs exactly these);
- the published numbers (`EnvSpec.extra["published"]`) with the protocol each was measured under. Those
  are other codebases' protocols (episode length, demonstrations, camera, resolution, seeds), so a row
  beside ours is context, not a controlled comparison.

Writes the table as JSON and a bar chart of the per-group rates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vlaforge.atomic import write_json
from vlaforge.envs.base import EnvSpec
from vlaforge.envs.registry import DEFAULT_ENV, get_env
from vlaforge.eval.stats import Rate, aggregate


def summarize(info: dict, spec: EnvSpec | None = None) -> dict:
    """Per group, overall and subset rates of one eval_info.json (`vlaforge.eval.stats` pools them)."""
    spec = spec or get_env()
    eps = info["episodes"]
    pooled = aggregate(eps, spec.difficulty, spec.groups)
    out = {**pooled["per_group"], "overall": pooled["overall"]}
    out["group_mean"] = float(np.mean([out[g]["rate"] for g in spec.groups if g in out]))
    subset = spec.extra.get("subset")
    if subset:
        members = set(spec.task_sets[subset])
        sub = [e for e in eps if e["task"] in members]
        out[subset] = Rate.of(sum(bool(e["success"]) for e in sub), len(sub)).to_dict()
    return out


def _cell(r: dict) -> str:
    return f"{r['successes']}/{r['n']} = {100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default=DEFAULT_ENV, help=f"the environment evaluated (default: {DEFAULT_ENV})")
    ap.add_argument("--eval", required=True, help="eval_info.json of the 500-step (vlaforge) evaluation")
    ap.add_argument("--eval-100", default=None, help="eval_info.json of the rlinf-100 evaluation")
    ap.add_argument("--out", default="bench/results/mt50.json")
    ap.add_argument("--plot", default="docs/mt50.png")
    args = ap.parse_args()
    spec = get_env(args.env)
    groups, anchors, subset = spec.groups, spec.extra.get("published", []), spec.extra.get("subset")

    runs = {}
    for label, path in (("500 steps", args.eval), ("100 steps", args.eval_100)):
        if path is None:
            continue
        info = json.loads(Path(path).read_text())
        if info["protocol"].get("env", spec.name) != spec.name:
            raise SystemExit(
                f"{path}: evaluates --env {info['protocol']['env']}, not {spec.name}; pass --env"
            )
        if sorted(info["tasks"]) != sorted(spec.tasks):
            raise SystemExit(
                f"{path}: evaluates {len(info['tasks'])} tasks, not the {len(spec.tasks)} of {spec.title}"
            )
        proto = info["protocol"]
        runs[label] = {"summary": summarize(info, spec), "protocol": {
            k: proto.get(k) for k in ("protocol", "max_steps", "episodes_per_task", "seed", "cameras",
                                      "image_size", "execution", "execute_steps", "runner", "wall_time_s")
        }, "policy": info["policy"]}  # fmt: skip

    cols = [*groups, "overall", *([subset] if subset else [])]
    print("| vlaforge, tiny preset | " + " | ".join(cols) + " | mean of groups |")
    print("|---" * (len(cols) + 2) + "|")
    for label, run in runs.items():
        s = run["summary"]
        cells = " | ".join(_cell(s[c]) for c in cols)
        print(f"| {label} | {cells} | {100 * s['group_mean']:.1f}% |")
    print()
    print("| published | " + " | ".join([*groups, "average"]) + " | protocol |")
    print("|---" * (len(groups) + 3) + "|")
    for a in anchors:
        cells = [("" if a["groups"].get(g) is None else f"{a['groups'][g]:.1f}") for g in groups]
        print(f"| {a['name']} | " + " | ".join(cells) + f" | {a['average']:.1f} | {a['protocol']} |")

    out = Path(args.out)
    write_json(out, {"vlaforge": runs, "published": anchors})
    plot(runs, Path(args.plot), spec)
    print(f"\nwrote {out} and {args.plot}")


def plot(runs: dict, path: Path, spec: EnvSpec) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, anchors = spec.groups, spec.extra.get("published", [])
    slots = [*groups, "mean of groups"]
    bars = [(f"vlaforge tiny, {label}", run["summary"]) for label, run in runs.items()]
    pub = [(a["name"], a) for a in anchors if all(a["groups"].get(g) is not None for g in groups)]
    width = 0.8 / max(1, len(bars) + len(pub))
    x = np.arange(len(slots))
    fig, ax = plt.subplots(figsize=(11, 5.5))
    k = 0
    for name, s in bars:
        # Wilson intervals on the groups; the mean of the four groups (how the papers average) has none
        rate = np.array([s[g]["rate"] for g in groups] + [s["group_mean"]])
        lo = np.array([s[g]["ci_low"] for g in groups] + [np.nan])
        hi = np.array([s[g]["ci_high"] for g in groups] + [np.nan])
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
        vals = [a["groups"][g] for g in groups] + [a["average"]]
        ax.bar(x + k * width, vals, width, label=f"{name} (published)", alpha=0.6, hatch="//")
        k += 1
    ax.set_xticks(x + width * (k - 1) / 2, [g.replace("_", " ") for g in slots])
    ax.set_ylabel("success % (ours: Wilson 95% CI)")
    ax.set_ylim(0, 100)
    episodes = next(iter(runs.values()))["protocol"]["episodes_per_task"] if runs else "?"
    ax.set_title(f"{spec.title}, all {len(spec.tasks)} tasks, {episodes} episodes per task")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
