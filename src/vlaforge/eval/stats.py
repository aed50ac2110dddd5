"""Success rates with honest uncertainty: Wilson score intervals and per-task / per-group aggregation.

A success rate measured on ten episodes is a coin-flip estimate, so every rate vlaforge reports carries
a 95% interval. We use the Wilson score interval (Wilson, "Probable inference, the law of succession,
and statistical inference", JASA 1927): unlike the normal ("Wald") interval it never leaves [0, 1] and
does not collapse to zero width at 0/n or n/n, which are the common cases in robot evaluation. See
Brown, Cai and DasGupta, "Interval Estimation for a Binomial Proportion" (Statistical Science 2001) for
why it is the recommended default.

Aggregation follows the multi-task Meta-World convention: a group's (and the overall) rate pools all
its episodes, so every episode counts once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from vlaforge.errors import InputError

# Two-sided 95%: the 0.975 quantile of the standard normal.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Args:
        successes: number of successful trials, 0 <= successes <= n.
        n: number of trials.
        z: normal quantile (1.96 for a two-sided 95% interval).

    Returns:
        (low, high), both in [0, 1]. With n == 0 nothing is known: (0.0, 1.0).
    """
    if n < 0 or successes < 0 or successes > n:
        raise InputError(f"need 0 <= successes <= n; got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At 0/n and n/n the bound is exactly 0 or 1; clamp away floating-point dust.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass
class Rate:
    """A success rate over n episodes with its Wilson 95% interval."""

    n: int
    successes: int
    rate: float
    ci_low: float
    ci_high: float

    @classmethod
    def of(cls, successes: int, n: int) -> Rate:
        low, high = wilson_interval(successes, n)
        return cls(n=n, successes=successes, rate=successes / n if n else 0.0, ci_low=low, ci_high=high)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fmt(self) -> str:
        """'0.70 [0.40, 0.89]'."""
        return f"{self.rate:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}]"


def aggregate(
    episodes: Iterable[Mapping[str, Any]],
    difficulty: Mapping[str, str],
    groups: Iterable[str] = ("easy", "medium", "hard", "very_hard"),
) -> dict[str, Any]:
    """Pools episode outcomes per task, per difficulty group and overall.

    Args:
        episodes: dicts with at least "task" (str) and "success" (bool).
        difficulty: task -> group name (Meta-World's easy / medium / hard / very_hard).
        groups: the group names in display order; groups with no episodes are left out.

    Returns:
        {"per_task": {task: Rate dict}, "per_group": {group: Rate dict}, "overall": Rate dict}. Tasks keep
        the order in which they first appear.
    """
    counts: dict[str, list[int]] = {}  # task -> [successes, n]
    for ep in episodes:
        task = ep["task"]
        c = counts.setdefault(task, [0, 0])
        c[0] += int(bool(ep["success"]))
        c[1] += 1
    unknown = [t for t in counts if t not in difficulty]
    if unknown:
        raise InputError(f"no difficulty group for tasks {unknown}; known tasks: {len(difficulty)}")

    per_task = {t: Rate.of(s, n).to_dict() for t, (s, n) in counts.items()}
    per_group = {}
    for g in groups:
        members = [c for t, c in counts.items() if difficulty[t] == g]
        if members:
            per_group[g] = Rate.of(sum(c[0] for c in members), sum(c[1] for c in members)).to_dict()
    overall = Rate.of(sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())).to_dict()
    return {"per_task": per_task, "per_group": per_group, "overall": overall}
