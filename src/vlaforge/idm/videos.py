"""A folder of action-free video files as episodes for `vlaforge idm label`.

The folder holds the videos and a ``tasks.json`` mapping each file name to its instruction
(``{"wipe.mp4": "wipe the table", ...}``); only the listed files are read, in the order listed. Each video
is decoded with PyAV (any size, frame rate and codec PyAV reads), centre-cropped to a square, resized to the
IDM's image side and resampled in time to the IDM's frame rate: output frame k is the decoded frame whose
presentation time is nearest k / fps after the first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlaforge.data.video import read_video, resize_frames
from vlaforge.errors import InputError

TASKS_FILE = "tasks.json"


def is_video_folder(path: str | Path) -> bool:
    return (Path(path) / TASKS_FILE).is_file() and not (Path(path) / "meta" / "info.json").is_file()


def video_tasks(folder: str | Path) -> list[tuple[Path, str]]:
    """(video path, instruction) per entry of ``folder/tasks.json``; errors name the file at fault."""
    folder = Path(folder)
    path = folder / TASKS_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f'{path}: not readable JSON ({e}); write {{"file.mp4": "instruction", ...}}') from e
    if not isinstance(doc, dict) or not doc:
        raise InputError(f'{path}: must map each video file name to its instruction, e.g. {{"a.mp4": "..."}}')
    out = []
    for name, task in doc.items():
        if not isinstance(task, str) or not task.strip():
            raise InputError(f"{path}: the instruction of {name!r} must be a non-empty string")
        video = folder / str(name)
        if not video.is_file():
            raise InputError(f"{video}: listed in {path} but missing")
        out.append((video, task))
    return out


def center_square(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, s, s, 3), s = min(H, W), the centre."""
    h, w = frames.shape[1:3]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return frames[:, y : y + s, x : x + s]


def resample_times(times: np.ndarray, fps: float) -> np.ndarray:
    """Indices into `times` (sorted, seconds) of the frames nearest 0, 1/fps, 2/fps, ... after the first."""
    t = np.asarray(times, np.float64) - float(times[0])
    n = int(np.floor(t[-1] * fps + 1e-6)) + 1
    want = np.arange(n) / fps
    idx = np.clip(np.searchsorted(t, want), 1, max(len(t) - 1, 1))
    left = idx - 1
    nearer_left = (want - t[left]) <= (t[np.minimum(idx, len(t) - 1)] - want)
    return np.where(nearer_left | (len(t) == 1), left, idx).astype(np.int64)


def load_video(path: Path, side: int, fps: float) -> np.ndarray:
    """uint8 (T, side, side, 3): one video decoded, cropped, resized and resampled to `fps`."""
    times, frames = read_video(path)  # VideoError (an InputError) names the file
    order = np.argsort(times, kind="stable")
    times, frames = times[order], frames[order]
    return resize_frames(center_square(frames[resample_times(times, fps)]), side)
