"""Inverse dynamics model: recovers a moving square's displacements by value, labels a dataset that
vlaforge reads back (frame count, provenance, weights hash, recorded episodes kept), names bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlaforge.data.lerobot_writer import LeRobotWriter
from vlaforge.errors import InputError

SIDE, SQUARE, LENGTH = 24, 6, 24
KEY = "observation.images.top"


def _square_episode(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A white square on black moving by the action (dx, dy) in {-2..2} px each frame; the action is the
    displacement from frame t to t + 1 (/2), visible only in the frames (the state is a constant)."""
    pos = rng.integers(4, SIDE - SQUARE - 4, 2)
    frames, actions = [], []
    for _ in range(LENGTH):
        img = np.zeros((SIDE, SIDE, 3), np.uint8)
        img[pos[1] : pos[1] + SQUARE, pos[0] : pos[0] + SQUARE] = 255
        frames.append(img)
        step = rng.integers(-2, 3, 2)
        step = np.where((pos + step < 0) | (pos + step > SIDE - SQUARE), -step, step)
        actions.append(step / 2.0)
        pos = pos + step
    return np.stack(frames), np.asarray(actions, np.float32)


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    root = tmp_path_factory.mktemp("idm") / "squares"
    rng = np.random.default_rng(0)
    features = {
        KEY: {"dtype": "video", "shape": [SIDE, SIDE, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [1], "names": ["c"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["dx", "dy"]},
    }
    with LeRobotWriter(root, fps=10, features=features) as w:
        for _ in range(14):
            f, a = _square_episode(rng)
            w.add_episode(
                "move the square",
                {KEY: f, "observation.state": np.zeros((LENGTH, 1), np.float32), "action": a},
            )
    return root


@pytest.fixture(scope="module")
def idm(squares, tmp_path_factory):
    from vlaforge.idm.config import IdmConfig
    from vlaforge.idm.train import train_idm

    run = tmp_path_factory.mktemp("idm") / "run"
    cfg = IdmConfig(dataset=str(squares), out=str(run), labelled=10, horizon=1, width=8, hidden=64, use_state=False,
                    shift=2, steps=400, batch_size=32, lr=3e-3, threads=1, device="cpu")  # fmt: skip
    train_idm(cfg)
    return run


def test_idm_recovers_displacements_on_held_out_episodes(squares, idm):
    from vlaforge.idm.label import check_idm

    held_out = check_idm(str(idm), str(squares), "10:14", device="cpu")
    assert held_out["frames"] == 4 * LENGTH
    # R^2 of the held-out actions (never trained on): a model ignoring the frames scores ~0.
    assert min(held_out["r2"]) > 0.7, held_out
    assert max(held_out["mae"]) < 0.25, held_out  # actions are multiples of 0.5 in [-1, 1]


def test_label_writes_a_readable_dataset_with_provenance_and_hash(squares, idm, tmp_path):
    from vlaforge.data.dataset import open_dataset
    from vlaforge.idm.config import IdmLabelConfig
    from vlaforge.idm.label import label_dataset
    from vlaforge.weights_hash import sha256_files

    out = tmp_path / "labelled"
    label_dataset(IdmLabelConfig(src=str(squares), idm=str(idm), out=str(out), episodes="0,11,12",
                                 keep_actions="0:2", device="cpu"))  # fmt: skip
    src, ds = open_dataset(squares), open_dataset(out)
    assert ds.num_episodes == 3 and ds.num_frames == 3 * LENGTH
    prov = ds.column("action.provenance").reshape(-1)
    np.testing.assert_array_equal(prov, [0] * LENGTH + [2] * 2 * LENGTH)
    acts, real = ds.actions(), src.actions()
    np.testing.assert_array_equal(acts[:LENGTH], real[:LENGTH])  # a kept episode: its recorded actions
    ep11 = acts[LENGTH : 2 * LENGTH]
    assert ep11[-1].tolist() == ep11[-2].tolist()  # H = 1: the last frame repeats the action before it
    r = src.episode_frames(11)
    assert np.abs(ep11[:-1] - real[r.start : r.stop - 1]).mean() < 0.2
    ours, theirs = ds.video_frames(KEY)[LENGTH:], src.video_frames(KEY)[r.start : r.start + 2 * LENGTH]
    assert np.abs(ours.astype(float) - theirs).mean() < 3  # the same frames, re-encoded (lossy codec)
    info = json.loads((out / "meta" / "info.json").read_text())["vlaforge"]["idm_actions"]
    assert info["idm_sha256"] == sha256_files([idm / "last" / "idm.safetensors"])
    assert info["source_episodes"] == [0, 11, 12] and info["recorded_episodes"] == [0]
    assert info["provenance_column"] == "action.provenance"


def test_label_a_folder_of_videos_at_another_size_and_rate(idm, tmp_path):
    """Videos at 2x the size and 2x the frame rate (every frame twice) are resized and resampled back."""
    from vlaforge.data.dataset import open_dataset
    from vlaforge.data.video import write_video
    from vlaforge.idm.config import IdmLabelConfig
    from vlaforge.idm.label import label_dataset

    rng, truth, tasks = np.random.default_rng(7), [], {}
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(2):
        f, a = _square_episode(rng)
        big = f.repeat(2, axis=1).repeat(2, axis=2).repeat(2, axis=0)  # 48 px, 20 fps
        write_video(folder / f"clip{i}.mp4", big, fps=20)
        tasks[f"clip{i}.mp4"], truth = f"move the square {i}", truth + [a]
    (folder / "tasks.json").write_text(json.dumps(tasks))
    out = tmp_path / "from_videos"
    label_dataset(IdmLabelConfig(src=str(folder), idm=str(idm), out=str(out), device="cpu"))
    ds = open_dataset(out)
    assert ds.num_episodes == 2 and ds.num_frames == 2 * LENGTH and ds.fps == 10
    assert ds.tasks == ["move the square 0", "move the square 1"]
    pred = ds.actions().reshape(2, LENGTH, 2)[:, :-1]
    assert np.abs(pred - np.stack(truth)[:, :-1]).mean() < 0.25
    assert (ds.column("action.provenance") == 2).all()
    (folder / "clip1.mp4").write_bytes(b"not a video")
    with pytest.raises(InputError, match=str(folder / "clip1.mp4")):
        label_dataset(IdmLabelConfig(src=str(folder), idm=str(idm), out=str(tmp_path / "o2"), device="cpu"))


def test_errors_name_the_bad_file(squares, idm, tmp_path):
    from vlaforge.idm.config import IdmLabelConfig
    from vlaforge.idm.label import label_dataset

    bad = tmp_path / "bad_idm"
    bad.mkdir()
    (bad / "idm_config.json").write_text((idm / "last" / "idm_config.json").read_text())
    (bad / "idm.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match=str(bad / "idm.safetensors")):
        label_dataset(IdmLabelConfig(src=str(squares), idm=str(bad), out=str(tmp_path / "o"), device="cpu"))
    with pytest.raises(InputError, match=str(tmp_path / "nowhere")):
        label_dataset(IdmLabelConfig(src=str(tmp_path / "nowhere"), idm=str(idm), out=str(tmp_path / "o")))
