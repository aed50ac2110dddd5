"""The tiny preset learns: trained from the command line on a learnable synthetic task, both heads."""

from __future__ import annotations

import json

import pytest

from vlaforge.cli import main


@pytest.fixture(scope="module")
def learnable(tmp_path_factory, dataset_factory):
    return dataset_factory(tmp_path_factory.mktemp("learn") / "ds", n_episodes=6, length=30)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["tokens", "chunk"])
def test_tiny_preset_learns(head, learnable, tmp_path):
    run = tmp_path / head
    main(
        [
            "train",
            "--dataset",
            str(learnable),
            "--out",
            str(run),
            "--head",
            head,
            "--steps",
            "150",
            "--batch-size",
            "16",
            "--lr",
            "1e-3",
            "--log-every",
            "10",
            "--device",
            "cpu",
        ]
    )
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    assert last["step"] == 150
    assert last["l1"] < 0.6 * first["l1"], (first, last)
    if head == "tokens":
        assert last["token_acc"] > 0.3, last  # chance is 1/256
