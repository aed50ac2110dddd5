"""Training scenes: disjoint from the held-out evaluation's seeds, a function of the iteration alone."""

from __future__ import annotations

from vlaforge.envs.base import episode_seed
from vlaforge.rl.rollout import training_scenes


def test_training_scenes_skip_evaluation_seeds_and_repeat_on_resume():
    tasks = ["drawer-close-v3", "reach-v3"]
    plain = training_scenes(tasks, 3, 4, train_seed=7000, avoid={})
    # Iteration 3 of 4 groups: groups 12..15 overall, alternating tasks, index k // 2.
    assert plain == [(tasks[k % 2], episode_seed(7000, tasks[k % 2], k // 2)) for k in range(12, 16)]
    assert training_scenes(tasks, 3, 4, 7000, {}) == plain  # the same on a resumed run
    # A seed that is also an evaluation seed is replaced by another one.
    avoid = {plain[1][0]: {plain[1][1]}}
    moved = training_scenes(tasks, 3, 4, 7000, avoid)
    assert moved[0] == plain[0] and moved[2:] == plain[2:]
    assert moved[1][0] == plain[1][0] and moved[1][1] != plain[1][1]
    assert moved[1][1] not in avoid[plain[1][0]]
