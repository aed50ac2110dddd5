"""The judge's calibration: Platt scaling recovers a known scale and bias (the shift that balanced batches
put into the logits), which a temperature alone cannot."""

import numpy as np
import pytest

from vlaforge.worldmodel.judge import balanced_accuracy, ece, fit_platt


def test_platt_recovers_scale_and_bias():
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 3.0, 40000)
    # True probability sigmoid(0.5 z - 2): successes are rare, as in a recorded evaluation.
    y = rng.random(len(z)) < 1 / (1 + np.exp(-(0.5 * z - 2.0)))
    temp, bias = fit_platt(z, y)
    assert 1 / temp == pytest.approx(0.5, abs=0.03) and bias == pytest.approx(-2.0, abs=0.08)
    cal = 1 / (1 + np.exp(-(z / temp + bias)))
    raw = 1 / (1 + np.exp(-z))
    assert ece(cal, y) < 0.02 < ece(raw, y)
    # The raw logits call a frame a success at z > 0; the calibrated ones at z > 4: fewer false successes.
    assert ((cal >= 0.5) == y).mean() > ((raw >= 0.5) == y).mean()


def test_platt_keeps_the_temperature_in_bounds_and_balanced_accuracy_by_hand():
    z = np.array([-1.0, 1.0, -1.0, 1.0])
    temp, _ = fit_platt(z, np.array([0, 1, 0, 1], bool))  # separable: the scale would grow without end
    assert temp == pytest.approx(0.05)
    # 2 of 3 successes and 1 of 2 failures right: (2/3 + 1/2) / 2.
    assert balanced_accuracy([0.9, 0.8, 0.1, 0.7, 0.2], [1, 1, 1, 0, 0]) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_judge_on_real_frames_counts_hits_alarms_and_early_calls():
    import torch

    from vlaforge.worldmodel.data import Episodes
    from vlaforge.worldmodel.judge import on_frames
    from vlaforge.worldmodel.model import SuccessJudge

    # Two episodes of task "a": 4 frames with the last 2 successful, and 3 frames never successful.
    success = np.array([0, 0, 1, 1, 0, 0, 0], bool)
    eps = Episodes(frames=np.zeros((7, 8, 8, 3), np.uint8), actions=np.zeros((7, 4), np.float32), success=success,
                   bounds=[(0, 4), (4, 7)], heldout=[0, 1], instructions=["a", "a"], sources=[("d", 0), ("d", 1)],
                   camera="c", fps=10.0, tasks=["a", "a"])  # fmt: skip
    judge = SuccessJudge(4).eval()
    with torch.no_grad():  # a judge that calls every frame a success
        judge.net[-1].weight.zero_()
        judge.net[-1].bias.fill_(10.0)
    r = on_frames(judge, eps, [0, 1])["a"]
    assert (r["episodes"], r["frames"], r["successes"]) == (2, 7, 2)
    # Every success is hit, every one of the 5 other frames is a false alarm, and both episodes are called
    # a success at their first frame, before the simulator's (episode 1 never succeeds).
    assert (r["tpr"], r["fpr"], r["fires_before_success"]) == (1.0, 1.0, 2)
    with torch.no_grad():  # and one that never does
        judge.net[-1].bias.fill_(-10.0)
    r = on_frames(judge, eps, [0, 1])["a"]
    assert (r["tpr"], r["fpr"], r["fires_before_success"]) == (0.0, 0.0, 0)


def test_held_out_episodes_per_task_keep_every_task_in_calibration(tmp_path):
    """Recordings hold their episodes in task order, so the last N of a dataset can all be of one task; a
    judge calibrated on those alone never learns another task's base rate. `by_task` holds out the last N
    of each task (episode e of the synthetic dataset is of task e % 2), and keeps one of each in training."""
    from vlaforge.data.synth import SynthConfig, write_synthetic
    from vlaforge.worldmodel.data import load_episodes

    write_synthetic(SynthConfig(out=str(tmp_path / "ds"), episodes=7, length=5, image_size=16, tasks=2))
    path = [str(tmp_path / "ds")]
    assert load_episodes(path, None, None, 2).heldout == [5, 6]
    eps = load_episodes(path, None, None, 2, by_task=True)
    assert eps.heldout == [3, 4, 5, 6]  # task 0: episodes 0, 2, 4, 6; task 1: 1, 3, 5
    assert load_episodes(path, None, None, 9, by_task=True).heldout == [2, 3, 4, 5, 6]  # 0 and 1 train
    assert eps.train == [0, 1, 2]
