"""A synthetic world for the world-model tests: a bright square on a dark floor, moved by the action."""

import numpy as np

from vlaforge.worldmodel.data import Episodes


def square_world(
    episodes: int = 24, steps: int = 20, size: int = 16, side: int = 4, seed: int = 0
) -> Episodes:
    """Episodes of a `side`-px square moved by integer actions (dx, dy) in {-2..2}, clipped to the frame;
    "success" is the square in the top-left quadrant. The last two episodes are held out."""
    rng = np.random.default_rng(seed)
    frames, actions, success, bounds = [], [], [], []
    for _ in range(episodes):
        x, y = rng.integers(0, size - side + 1, 2)
        start = sum(len(f) for f in frames)
        ep_f, ep_a = [], []
        for _ in range(steps):
            img = np.full((size, size, 3), 20, np.uint8)
            img[y : y + side, x : x + side] = (230, 200, 40)
            a = rng.integers(-2, 3, 2)
            ep_f.append(img)
            ep_a.append(a.astype(np.float32))
            success.append(x < size // 2 - side and y < size // 2 - side)
            x, y = np.clip(x + a[0], 0, size - side), np.clip(y + a[1], 0, size - side)
        frames.append(np.stack(ep_f))
        actions.append(np.stack(ep_a))
        bounds.append((start, start + steps))
    return Episodes(
        frames=np.concatenate(frames), actions=np.concatenate(actions), success=np.array(success),
        bounds=bounds, heldout=[episodes - 2, episodes - 1], instructions=["move the square"] * episodes,
        sources=[("squares", e) for e in range(episodes)], camera="top", fps=10.0,
    )  # fmt: skip
