"""Agreement between a proxy evaluator (the world model) and the ground truth (the simulator), over a
population of (policy, task) success rates, as SimplerEnv reports it (Li et al. 2024, "Evaluating
Real-World Robot Manipulation Policies in Simulation"):

- Pearson r of the rates, Spearman's rank correlation (Pearson of average ranks, ties shared);
- MMRV, the mean maximum rank violation: for each entry i, the largest |R_i - R_j| over the entries j the
  proxy orders differently from the truth, averaged over i. "Orders differently" compares strict
  inequalities, as SimplerEnv's `mean_maximum_rank_violation` does: (S_i > S_j) != (R_i > R_j), so a tie
  in one and not in the other counts.

SimplerEnv computes both per task, over the policies (`tools/calc_metrics.py`), and reports them task by
task; `by_task` does the same and averages over the tasks. Pooling every (policy, task) pair instead
(`agreement` on all rows) also rewards getting the tasks' difficulty right, which is easier than ranking
policies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; 1.0 when both are constant and equal, 0.0 when one of them is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx, dy = x - x.mean(), y - y.mean()
    den = np.sqrt((dx**2).sum() * (dy**2).sum())
    if den == 0:
        return 1.0 if np.array_equal(x, y) else 0.0
    return float((dx * dy).sum() / den)


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        m = x == v
        ranks[m] = ranks[m].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def mmrv(truth: Sequence[float], proxy: Sequence[float]) -> float:
    """Mean maximum rank violation of `proxy` against `truth` (see the module docstring)."""
    r, s = np.asarray(truth, float), np.asarray(proxy, float)
    if r.shape != s.shape or r.ndim != 1 or not len(r):
        raise ValueError(f"mmrv needs two equal-length 1-D sequences; got {r.shape} and {s.shape}")
    wrong = (s[:, None] > s[None, :]) != (r[:, None] > r[None, :])  # (n, n)
    return float((np.abs(r[:, None] - r[None, :]) * wrong).max(axis=1).mean())


def agreement(truth: Sequence[float], proxy: Sequence[float]) -> dict[str, float]:
    """{"n", "pearson", "spearman", "mmrv", "mean_abs_error"} of proxy against truth."""
    r, s = np.asarray(truth, float), np.asarray(proxy, float)
    return {
        "n": int(len(r)),
        "pearson": round(pearson(r, s), 4),
        "spearman": round(spearman(r, s), 4),
        "mmrv": round(mmrv(r, s), 4),
        "mean_abs_error": round(float(np.abs(r - s).mean()), 4),
    }


def by_task(
    rows: Sequence[dict], proxy: str = "worldmodel"
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per task, the agreement over its policies (rows: {"task", "sim", `proxy`}), and the mean of each
    measure over the tasks ({"tasks", "pearson", "spearman", "mmrv", "mean_abs_error"})."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    per = {
        t: agreement([r["sim"] for r in rows if r["task"] == t], [r[proxy] for r in rows if r["task"] == t])
        for t in tasks
    }
    keys = ("pearson", "spearman", "mmrv", "mean_abs_error")
    mean = {"tasks": len(tasks), **{k: round(float(np.mean([per[t][k] for t in tasks])), 4) for k in keys}}
    return per, mean


def predicted_self_pearson(
    sim: Sequence[float], reference: Sequence[float], episodes: int, counts: Sequence[int] = (10, 20, 50, 100)
) -> dict[int, float | None]:
    """The Pearson r two simulator evaluations of the same policies would reach at each episode count, from
    two evaluations at `episodes` per policy (a model, not a measurement).

    Each rate is taken as a binomial draw of n episodes around the policy's true rate. The covariance of the
    two evaluations across the policies estimates the spread of the true rates (the signal, at least 0);
    the binomial variance p (1 - p) of one episode, with p the policy's rate over both evaluations
    (unbiased: times 2E / (2E - 1)) and averaged over the policies, is the noise, and r(n) = signal /
    (signal + noise / n). None where both are zero.
    """
    a, b = np.asarray(sim, float), np.asarray(reference, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"needs two equal-length 1-D sequences of >= 2 rates; got {a.shape} and {b.shape}")
    signal = max(float(np.cov(a, b)[0, 1]), 0.0)
    p = (a + b) / 2
    noise = float(np.mean(p * (1 - p))) * 2 * episodes / (2 * episodes - 1)
    return {
        int(n): (round(signal / (signal + noise / n), 4) if signal + noise / n > 0 else None) for n in counts
    }
