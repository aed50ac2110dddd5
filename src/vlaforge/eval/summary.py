"""What an evaluation's numbers mean: trained vs untrained tasks, the comparison with another evaluation,
and the printed table.

A policy evaluated on tasks it was never trained on measures something else (zero-shot transfer) than
on its training tasks, so the two are never pooled: the "overall" rate pools the trained tasks only, and
the untrained ones get their own pooled rate beside it. Which tasks a policy was trained on comes from
its checkpoint (`PolicyFiles.training_seeds()`); where nothing records it (a served policy, a baseline,
data from elsewhere) it is unknown (`trained_on` null), never guessed.

`--compare DIR` puts another evaluation (typically the random baseline) beside this one; it is refused
unless both ran on the same env, tasks, protocol and episode seeds, so the two columns measure the same
episodes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vlaforge.errors import InputError
from vlaforge.eval.stats import Rate, aggregate

HELDOUT_NOTE = "held-out instructions: paraphrases never seen in training"


def trained_tasks(training_seeds: Mapping[str, Any], env_tasks: Iterable[str]) -> list[str] | None:
    """The env's tasks a checkpoint was trained on, in the env's order; None when nothing records them."""
    if not training_seeds:
        return None
    return [t for t in env_tasks if t in training_seeds]


def trained_on(tasks: list[str], trained: list[str] | None) -> dict[str, bool | None]:
    """{task: True / False, or None when the training tasks are unknown}."""
    return {t: (None if trained is None else t in trained) for t in tasks}


def pooled_aggregates(
    records: list[dict],
    difficulty: Mapping[str, str],
    groups: Iterable[str],
    marks: Mapping[str, bool | None],
) -> dict[str, Any]:
    """`stats.aggregate`, with the groups and "overall" pooling the trained (or unknown) tasks only; the
    untrained tasks keep their per-task rows and get their own pooled rate under "untrained" (None when
    there are none)."""
    groups = list(groups)
    per_task = aggregate(records, difficulty, groups)["per_task"]
    pooled = [r for r in records if marks.get(r["task"]) is not False]
    apart = [r for r in records if marks.get(r["task"]) is False]
    agg = aggregate(pooled, difficulty, groups)
    agg["per_task"] = per_task
    agg["untrained"] = (
        Rate.of(sum(bool(r["success"]) for r in apart), len(apart)).to_dict() if apart else None
    )
    return agg


def untrained_warning(marks: Mapping[str, bool | None], policy: str) -> str | None:
    """One line naming the tasks outside the policy's training set, or None."""
    outside = [t for t, m in marks.items() if m is False]
    if not outside:
        return None
    return (
        f"warning: {len(outside)} of {len(marks)} tasks were not in {policy}'s training data "
        f"({', '.join(outside)}): they are marked untrained and left out of the overall rate"
    )


# -- --compare ---------------------------------------------------------------------------------------------

COMPARED = ("env", "max_steps", "protocol", "episodes_per_task", "seed", "instructions")


def load_compare(path: str | Path, env: str, tasks: list[str], proto: Mapping[str, Any], seeds: list) -> dict:
    """Reads another evaluation's eval_info.json and refuses it unless it measured the same episodes.

    Args:
        path: the other evaluation's directory.
        env, tasks, proto: this evaluation's env, tasks and protocol fields (`COMPARED`).
        seeds: this evaluation's (task, episode, seed) triples.

    Returns:
        {"dir", "policy", "baseline", "aggregates", "trained_on"} of the other evaluation.
    """
    path = Path(path)
    info_path = path / "eval_info.json"
    if not info_path.is_file():
        raise InputError(
            f"--compare {path}: no eval_info.json there (give the directory of another evaluation)"
        )
    try:
        other = json.loads(info_path.read_text())
        theirs = other["protocol"]
        mismatch = []
        if sorted(other["tasks"]) != sorted(tasks):  # the same tasks in any order measure the same
            mismatch.append(f"tasks {','.join(other['tasks'])} vs {','.join(tasks)}")
        for key in COMPARED:
            if theirs.get(key) != proto.get(key):
                mismatch.append(f"{key} {theirs.get(key)} vs {proto.get(key)}")
        their_seeds = sorted([e["task"], e["episode"], e["seed"]] for e in other["episodes"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise InputError(f"--compare {path}: {info_path} is not a vlaforge evaluation ({e})") from e
    if not mismatch and their_seeds != sorted(list(s) for s in seeds):
        mismatch.append("episode seeds")
    if mismatch:
        raise InputError(
            f"--compare {path} measured other episodes ({'; '.join(mismatch)}): compare evaluations of the "
            f"same env, tasks, protocol and seeds"
        )
    return {
        "dir": str(path),
        "policy": other["policy"],
        "baseline": theirs.get("baseline"),
        "aggregates": other["aggregates"],
        "trained_on": other.get("trained_on"),
    }


# -- the printed table ---------------------------------------------------------------------------------------


def format_table(info: dict[str, Any]) -> str:
    """One row per task (untrained ones marked), the groups and overall (trained tasks), the untrained
    tasks pooled, and the compared evaluation's overall when there is one. Each further instruction suite
    (`instruction_suites`: held-out, perturbations) adds a column, its rate and interval per task and
    overall (trained tasks)."""
    agg = info["aggregates"]
    suites = info.get("instruction_suites") or {}
    extra = list(suites)[1:]
    groups = info["groups"]
    marks = info.get("trained_on") or {}
    label = {t: t + (" (untrained)" if marks.get(t) is False else "") for t in agg["per_task"]}
    width = max([len("untrained tasks")] + [len(x) for x in label.values()]) + 2
    head = f"{'task':<{width}}{'group':<11}{'succ/n':>9}{'rate':>7}   95% CI      "
    head += "".join(f"{name:>20}" for name in extra)
    split = info["protocol"]["instructions"]
    about = HELDOUT_NOTE if split == "heldout" else f"{split} instructions"
    if extra:
        about += "; columns: " + ", ".join(f"{n} ({suites[n]['about']})" for n in extra)
    lines = [f"policy: {info['policy']}  ({about})", head, "-" * len(head)]

    def cell(r: dict | None) -> str:
        return f"{r['rate']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if r else "-"

    def row(name: str, group: str, r: dict, others: list[dict | None] = ()) -> str:
        sn = f"{r['successes']}/{r['n']}"
        line = f"{name:<{width}}{group:<11}{sn:>9}{r['rate']:>7.2f}   [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        return line + ("  " + "".join(f"{cell(o):>20}" for o in others) if others else "")

    for task, r in agg["per_task"].items():
        lines.append(row(label[task], groups[task], r, [suites[n]["per_task"].get(task) for n in extra]))
    lines.append("-" * len(head))
    for g, r in agg["per_group"].items():
        lines.append(row(f"[{g}]", g, r))
    if agg.get("untrained"):
        lines.append(row("overall", "trained", agg["overall"], [suites[n]["overall"] for n in extra]))
        lines.append(row("untrained tasks", "", agg["untrained"]))
    else:
        lines.append(row("overall", "", agg["overall"], [suites[n]["overall"] for n in extra]))
    compare = info.get("compare")
    if compare:
        lines.append(row(f"vs {compare['policy']}", "overall", compare["aggregates"]["overall"]))
    return "\n".join(lines)


__all__ = [
    "HELDOUT_NOTE",
    "format_table",
    "load_compare",
    "pooled_aggregates",
    "trained_on",
    "trained_tasks",
    "untrained_warning",
]
