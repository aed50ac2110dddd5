"""Datasets keep one-pixel coloured details: frames are stored with full-resolution colour (yuv444p).

At 64 px, Meta-World's goal markers are single pixels. 4:2:0 chroma (yuv420p) averages colour over 2x2
blocks, so such a marker comes back nearly grey, and a policy trained on the stored frames never sees the
goal it is evaluated on (where it gets the raw render). These tests write frames through the dataset
writer and read them back as training does.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlaforge.data.lerobot import DatasetError, LeRobotDataset, LeRobotWriter
from vlaforge.data.lerobot_writer import DATASET_CRF, DATASET_PIX_FMT

KEY = "observation.images.cam"


def _features(size: int) -> dict:
    return {
        KEY: {"dtype": "video", "shape": [size, size, 3], "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": [1], "names": ["a"]},
    }


def _round_trip(tmp_path, frames: np.ndarray, **video) -> tuple[np.ndarray, dict]:
    root = tmp_path / f"ds-{len(list(tmp_path.iterdir()))}"
    with LeRobotWriter(root, fps=10, features=_features(frames.shape[1]), **video) as w:
        w.add_episode("t", {KEY: frames, "action": np.zeros((len(frames), 1), np.float32)})
    info = json.loads((root / "meta" / "info.json").read_text())
    return LeRobotDataset(root).video_frames(KEY), info["features"][KEY]["info"]


def _red_dots(n: int = 12, size: int = 64) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A textured grey-brown scene (as a table) with one pure-red pixel at a different place per frame."""
    rng = np.random.default_rng(0)
    base = np.clip(rng.normal((120, 100, 80), 6, (size, size, 3)), 0, 255).astype(np.uint8)
    frames, where = np.repeat(base[None], n, 0), []
    for t in range(n):
        y, x = (int(v) for v in rng.integers(8, size - 8, 2))
        frames[t, y, x] = (254, 1, 1)  # Meta-World's goal marker as rendered at 64 px
        where.append((y, x))
    return frames, where


def _redness(frames: np.ndarray, where: list[tuple[int, int]]) -> np.ndarray:
    return np.array([int(f[y, x, 0]) - int(f[y, x, 1]) for f, (y, x) in zip(frames, where, strict=True)])


def test_default_keeps_a_one_pixel_red_marker(tmp_path):
    frames, where = _red_dots()
    stored, info = _round_trip(tmp_path, frames)
    assert (DATASET_PIX_FMT, DATASET_CRF) == ("yuv444p", 10)
    assert info["video.pix_fmt"] == "yuv444p"
    redness = _redness(stored, where)  # 253 in the frames written
    assert redness.min() > 180, redness
    err = np.abs(stored.astype(int) - frames.astype(int))
    assert err.mean() < 2.5, err.mean()


def test_yuv420p_greys_the_marker_out(tmp_path):
    """What the default avoids: the same frames in 4:2:0 lose most of the marker's colour."""
    frames, where = _red_dots()
    stored, info = _round_trip(tmp_path, frames, video_pix_fmt="yuv420p", video_crf=10)
    assert info["video.pix_fmt"] == "yuv420p"
    assert _redness(stored, where).max() < 120, _redness(stored, where)


def test_lossless_crf_is_nearly_exact(tmp_path):
    frames, _ = _red_dots(4)
    stored, _ = _round_trip(tmp_path, frames, video_crf=0)
    assert np.abs(stored.astype(int) - frames.astype(int)).max() <= 3  # only RGB <-> YUV rounding


@pytest.mark.parametrize(
    "bad", [{"video_pix_fmt": "rgb24"}, {"video_crf": 60}, {"video_crf": 64, "video_codec": "av1"}]
)
def test_bad_video_settings_are_refused(tmp_path, bad):
    with pytest.raises(DatasetError, match="pixel format|CRF"):
        LeRobotWriter(tmp_path / "x", fps=10, features=_features(8), **bad)


def test_an_encoder_without_yuv444p_falls_back_with_a_warning(tmp_path):
    frames, _ = _red_dots(4)
    with pytest.warns(UserWarning, match="mpeg4 encoder cannot write yuv444p"):
        stored, info = _round_trip(tmp_path, frames, video_codec="mpeg4")
    assert info["video.pix_fmt"] == "yuv420p" and stored.shape == frames.shape


def test_av1_takes_its_own_crf_scale(tmp_path):
    LeRobotWriter(
        tmp_path / "x", fps=10, features=_features(8), video_codec="av1", video_crf=60
    )  # H.264 stops at 51
