"""The DAgger tests' shared policy: one tiny checkpoint for every test module here."""

from __future__ import annotations

import pytest

from vlaforge.envs import metaworld as mw

mw.configure_rendering()  # before anything imports mujoco

TASK = "button-press-topdown-v3"
SIZE = 32


@pytest.fixture(scope="package")
def init(tmp_path_factory):
    """A training checkpoint of the tiny preset on one expert episode (RUN/last)."""
    import torch

    from vlaforge.envs.collect import CollectConfig, collect
    from vlaforge.train.config import TrainConfig
    from vlaforge.train.loop import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dagger")
    data = collect(
        CollectConfig(tasks=TASK, episodes=1, out=root / "data", image_size=SIZE, workers=0, max_steps=200)
    )
    train(TrainConfig(dataset=str(data), out=str(root / "run"), steps=2, batch_size=4, device="cpu", log_every=1,
                      save_every=None, chunk_size=4))  # fmt: skip
    return root / "run" / "last"
