"""`VideoFrameReader`: decodes chosen frames of one camera of a LeRobot dataset, for streaming training.

`LeRobotDataset.frame_reader(camera)` returns one; `vlaforge.data.sampler.ChunkSampler` sends it to its
decode worker processes (it is picklable), which seek to the keyframe before each frame
(`vlaforge.data.video.SeekingDecoder`). Frames come out bitwise equal to the decoded cache.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vlaforge.data.lerobot_format import DatasetError
from vlaforge.data.video import SeekingDecoder, VideoError, resize_frames


@dataclasses.dataclass
class VideoFrameReader:
    """Decodes chosen frames of one camera of a LeRobot dataset (`LeRobotDataset.frame_reader`).

    Picklable (paths and numpy arrays; the open decoder is not pickled), so a streaming `ChunkSampler`
    sends it to its worker processes once. Frames come out bitwise equal to the decoded cache: the same
    decoder from a keyframe, the same RGB conversion and the same resize.

    Attributes:
        files: the mp4 paths.
        file_of: int32 (N,) index into `files` of every global frame.
        time_of: float64 (N,) presentation time (s) of every global frame inside its file.
        fps: frames per second.
        native_hw: (H, W) of the frames in the files.
        size: square side to resize to; None keeps `native_hw`.
        key: the camera's feature key (for error messages).
    """

    files: list[str]
    file_of: np.ndarray
    time_of: np.ndarray
    fps: float
    native_hw: tuple[int, int]
    size: int | None
    key: str

    def __post_init__(self) -> None:
        self._decoder: SeekingDecoder | None = None

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        h, w = (self.size, self.size) if self.size is not None else self.native_hw
        return (int(h), int(w), 3)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (B, h, w, 3) frames at global indices `indices` (B,), in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), *self.frame_shape), dtype=np.uint8)  # (B, h, w, 3)
        if self._decoder is None:
            self._decoder = SeekingDecoder()
        files = self.file_of[idx]
        for f in np.unique(files):
            sel = np.nonzero(files == f)[0]
            try:
                imgs = self._decoder.frames_at(self.files[f], self.time_of[idx[sel]], self.fps)
            except VideoError as e:
                raise DatasetError(f"{e} (camera {self.key!r})") from e
            if imgs.shape[1:3] != tuple(self.native_hw):
                raise DatasetError(
                    f"{self.files[f]}: frames are {imgs.shape[1:]} but the dataset's features say "
                    f"{[*self.native_hw, 3]}; fix the feature shape in meta/info.json or re-encode the video"
                )
            out[sel] = resize_frames(imgs, self.size)
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_decoder"] = None  # open containers stay in the process that opened them
        return state
