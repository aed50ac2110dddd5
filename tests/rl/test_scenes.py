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


def test_a_pool_keeps_per_task_only_the_envs_running_at_once():
    """Slots change task from one iteration to the next (groups cycle through the tasks): the pool reuses a
    free env of the task, so it holds 2 envs per task (2 episodes of each at once), not one per (slot, task);
    a reused env starts its episode exactly as a fresh one does."""
    import numpy as np

    from vlaforge.envs.registry import get_env
    from vlaforge.rl.rollout import EnvPool, close_all

    close_all()  # envs other tests left in this process
    spec = get_env("metaworld")
    pool = EnvPool(spec, ("corner2",), 32, 10)
    tasks = ["drawer-close-v3", "reach-v3"]
    try:
        for it in range(3):
            items = [(slot, tasks[(slot + it) % 2], 100 + slot) for slot in range(4)]
            obs = pool.reset(items)
            assert pool.envs_made() == 4  # one per (slot, task) would reach 8
        fresh = spec.make(tasks[0], cameras=("corner2",), image_size=32, max_steps=10, render=False)
        # Slot 0 runs tasks[0] in the last iteration, on an env slot 1 ran an episode of in between.
        first = fresh.reset(items[0][2], render=True)
        fresh.close()
        assert items[0][1] == tasks[0]
        assert np.array_equal(obs[0].images["corner2"], first.images["corner2"])
        assert np.array_equal(obs[0].state, first.state)
    finally:
        pool.close()
        close_all()
