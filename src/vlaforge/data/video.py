"""Video encode/decode helpers on PyAV (FFmpeg bindings).

Design choices:

- **Encoding** writes H.264 (libx264, yuv420p, CRF 20) when the installed FFmpeg has it: it is what every
  browser and player decodes. LeRobot writes AV1 (SVT-AV1) by default; we decode those too when the
  installed FFmpeg has an AV1 decoder (libdav1d or libaom). Frames are numbered by presentation
  timestamps at `1 / fps`, so frame `n` of a file sits at `n / fps` seconds, which is exactly how
  LeRobotDataset v3.0 addresses frames (`from_timestamp + timestamp`).
- **Decoding** for the training cache is sequential over a whole file (`iter_frames`). Streaming training
  (a dataset too big for the cache) decodes chosen frames with `SeekingDecoder`: it seeks to the keyframe
  at or before each wanted frame and decodes forward, reusing the open decoder while the next wanted
  frame lies in the same group of pictures. Our writer leaves the keyframe interval to the encoder
  (libx264's default `keyint` is 250 frames, with IDR keyframes and closed GOPs), so a random frame costs
  on average half a GOP of decoding; LeRobot encodes with `g=2` for this reason (its
  `encode_video_frames`), and `VideoWriter(gop=...)` sets it here. H.264/AV1 decoding is bit-exact from
  a keyframe, so the seeking decoder yields exactly the frames the sequential pass does.
- **Resizing** to the training resolution (`resize_frames`) is Pillow's bicubic filter on RGB, which is
  antialiased when shrinking (its kernel support widens by the scale factor), the same filter OpenVLA's
  image processor uses ("resize-naive", PIL bicubic). A non-square frame is stretched to the square.
- **Chroma.** 4:2:0 (yuv420p) stores colour at half the resolution in each axis, so a one-pixel coloured
  detail keeps its brightness and loses most of its colour: at 64 px, Meta-World's red goal marker (one
  pixel) comes back grey, its red-minus-green from 227 to 33 levels at CRF 20 (43 at CRF 10), while 4:4:4
  (yuv444p) at CRF 10 keeps 213 (docs/results.md; a synthetic check in `tests/data/test_video_quality.py`).
  `VideoWriter` defaults to yuv420p, which every player decodes (what evaluation videos are for);
  datasets, which policies learn from, are written in yuv444p at CRF 10 by default
  (`vlaforge.data.lerobot_writer.DATASET_PIX_FMT`, `DATASET_CRF`). An encoder that cannot write yuv444p
  (mpeg4, SVT-AV1) writes yuv420p with a warning. Odd image sides cannot be stored as 4:2:0 and always
  use yuv444p.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from vlaforge.errors import InputError

# The chroma layouts the writer offers (see the module's "Chroma").
PIX_FMTS = ("yuv444p", "yuv420p")

# Encoders in order of preference for each requested codec family.
_ENCODERS = {
    "h264": ["libx264", "libopenh264", "h264"],
    "av1": ["libsvtav1", "libaom-av1", "librav1e"],
    "mpeg4": ["mpeg4"],
}


class VideoError(InputError):
    """A video file is missing, unreadable, or does not hold the frames it should."""


def has_codec(name: str, mode: str = "w") -> bool:
    """Whether the installed FFmpeg offers codec `name` for writing ("w") or reading ("r")."""
    try:
        av.codec.Codec(name, mode)
    except Exception:
        return False
    return True


def pick_encoder(preferred: str = "h264") -> str:
    """Returns the name of an available encoder, trying `preferred` first, then H.264, then MPEG-4.

    Args:
        preferred: a family ("h264", "av1", "mpeg4") or an exact encoder name ("libx264").

    Raises:
        VideoError: when none of the candidates is available in the installed FFmpeg.
    """
    candidates = list(_ENCODERS.get(preferred, [preferred]))
    for family in ("h264", "mpeg4"):
        candidates += [c for c in _ENCODERS[family] if c not in candidates]
    for name in candidates:
        if has_codec(name, "w"):
            return name
    raise VideoError(f"no video encoder among {candidates} is available in this PyAV/FFmpeg build")


def max_crf(codec: str) -> int:
    """The top of `codec`'s CRF scale (0 keeps the most): 63 for the AV1 encoders, 51 for H.264's."""
    return 63 if "av1" in codec else 51


def _formats_of(encoder: str) -> list[str]:
    """The pixel formats `encoder` accepts (empty when FFmpeg does not say)."""
    return [f.name for f in (av.codec.Codec(encoder, "w").video_formats or [])]


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


class VideoWriter:
    """Streams uint8 RGB frames into one mp4 file.

    Args:
        path: the mp4 to create (parent directories are created).
        fps: frames per second; frame n is stamped at n / fps seconds.
        height, width: frame size in pixels.
        codec: encoder family or exact name (see `pick_encoder`).
        crf: constant rate factor (quality; lower is better). 20 keeps small images within a few levels.
        gop: keyframe interval; None leaves the encoder's default.
        pix_fmt: "yuv420p" (every player decodes it; colour at half resolution) or "yuv444p" (full-resolution
            colour); None: yuv420p, or yuv444p when a side is odd.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        height: int,
        width: int,
        codec: str = "h264",
        crf: int = 20,
        gop: int | None = None,
        pix_fmt: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.height, self.width = int(height), int(width)
        self.encoder = pick_encoder(codec)
        if pix_fmt not in (None, *PIX_FMTS):
            raise VideoError(f"{self.path}: pixel format {pix_fmt!r} is not one of {PIX_FMTS}")
        odd = self.height % 2 or self.width % 2
        self.pix_fmt = "yuv444p" if odd else (pix_fmt or "yuv420p")
        if self.pix_fmt == "yuv444p" and not odd and "yuv444p" not in _formats_of(self.encoder):
            warnings.warn(
                f"{self.path}: the {self.encoder} encoder cannot write yuv444p; writing yuv420p, whose colour "
                "has half the resolution (one-pixel coloured details fade; use an FFmpeg with libx264)",
                stacklevel=2,
            )
            self.pix_fmt = "yuv420p"
        if self.encoder == "mpeg4" and self.pix_fmt != "yuv420p":
            raise VideoError(
                f"{self.path}: the mpeg4 encoder writes only yuv420p, which needs even image sides; got "
                f"{height}x{width} with {self.pix_fmt} (install an FFmpeg with libx264)"
            )
        self._rate = _rate(fps)
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream(self.encoder, rate=self._rate)
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = self.pix_fmt
        options: dict[str, str] = {}
        if self.encoder in ("libx264", "libsvtav1", "libaom-av1"):
            options["crf"] = str(crf)
        if self.encoder == "libx264":
            options["preset"] = "veryfast"
        elif self.encoder == "mpeg4":
            self._stream.codec_context.qscale = 2
        if gop is not None:
            options["g"] = str(gop)
        self._stream.options = options
        self._tb = Fraction(1, 1) / self._rate
        self._yuv = VideoReformatter()
        self.frames_written = 0
        self._bytes = 0
        self._closed = False

    def write(self, frames: np.ndarray) -> None:
        """Encodes frames uint8 (T, H, W, 3) (or one frame (H, W, 3)) at the end of the file."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise VideoError(
                f"{self.path}: frames must be uint8 (T, {self.height}, {self.width}, 3); "
                f"got {frames.dtype} {frames.shape}"
            )
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame = self._yuv.reformat(frame, format=self.pix_fmt)  # shared swscale context (see iter_frames)
            frame.pts = self.frames_written
            frame.time_base = self._tb
            for packet in self._stream.encode(frame):
                self._bytes += packet.size
                self._container.mux(packet)
            self.frames_written += 1

    def size_bytes(self) -> int:
        """Bytes of encoded video so far (the encoder may still hold a few frames in its lookahead)."""
        return self._bytes

    def close(self) -> None:
        """Flushes the encoder and closes the file. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def abort(self) -> None:
        """Closes the file without caring whether it is complete (used when a write fails)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | Path, frames: np.ndarray, fps: float, codec: str = "h264", crf: int = 20) -> Path:
    """Writes uint8 frames (T, H, W, 3) to an mp4 in one call and returns its path."""
    frames = np.asarray(frames)
    with VideoWriter(path, fps, frames.shape[1], frames.shape[2], codec=codec, crf=crf) as w:
        w.write(frames)
    return Path(path)


def probe(path: str | Path) -> dict[str, Any]:
    """Opens an mp4's header and returns LeRobot-style video info.

    Returns:
        {"video.height", "video.width", "video.codec", "video.pix_fmt", "video.is_depth_map",
        "video.fps", "video.channels", "has_audio", "frames"} ("frames" is the container's count, 0 when
        the container does not say).

    Raises:
        VideoError: naming the file, when it is missing, unreadable, or has no video stream.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video file is missing")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoError(f"{path}: no video stream in the file")
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate or 0
            return {
                "video.height": int(s.codec_context.height),
                "video.width": int(s.codec_context.width),
                "video.codec": s.codec_context.name,
                "video.pix_fmt": s.codec_context.pix_fmt,
                "video.is_depth_map": False,
                "video.fps": float(rate),
                "video.channels": 3,
                "has_audio": bool(c.streams.audio),
                "frames": int(s.frames or 0),
            }
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(
            f"{path}: cannot open the video ({type(e).__name__}: {e}); the file is corrupt or truncated. "
            "Re-create the dataset (or restore this file)."
        ) from e


def iter_frames(path: str | Path) -> Iterator[tuple[float, np.ndarray]]:
    """Decodes a whole video sequentially, yielding (presentation time in seconds, uint8 (H, W, 3)).

    Raises:
        VideoError: naming the file, when it is missing or decoding fails (a corrupt or truncated file).
    """
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video file is missing")
    try:
        container = av.open(str(path))
    except Exception as e:
        raise VideoError(
            f"{path}: cannot open the video ({type(e).__name__}: {e}); the file is corrupt or truncated"
        ) from e
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream in the file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # One reformatter for the whole file: it keeps its swscale context, whereas `to_ndarray(format=)`
        # builds a new one per frame (measured 17x slower at 128 px, bit-identical output).
        rgb = VideoReformatter()
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else 0.0
                yield float(t), rgb.reformat(frame, format="rgb24").to_ndarray()
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: decoding failed ({e}); the file is corrupt or truncated") from e


def read_video(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Decodes a whole (small) video into memory: (times (T,) float64, frames uint8 (T, H, W, 3))."""
    times, frames = [], []
    for t, img in iter_frames(path):
        times.append(t)
        frames.append(img)
    if not frames:
        raise VideoError(f"{path}: the video holds no decodable frames")
    return np.asarray(times), np.stack(frames)


def resize_frames(frames: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 (T, H, W, 3) or (H, W, 3) -> the same at (size, size), Pillow bicubic (antialiased).

    Returns the input unchanged when `size` is None or the frames already are size x size.
    """
    frames = np.asarray(frames)
    if size is None or frames.shape[-3:-1] == (size, size):
        return frames
    single = frames.ndim == 3
    batch = frames[None] if single else frames
    out = np.empty((len(batch), size, size, 3), dtype=np.uint8)  # (T, size, size, 3)
    for i, img in enumerate(batch):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))
    return out[0] if single else out


def decode_episodes_into(
    path: str | Path,
    out: np.ndarray,
    episodes: list[tuple[int, float, int, int]],
    fps: float,
    progress: Callable[[int], Any] | None = None,
    native_hw: tuple[int, int] | None = None,
) -> None:
    """Decodes one file holding several episodes back to back into their global frame slots.

    LeRobotDataset v3.0 addresses frame k of an episode at `from_timestamp + k / fps` in its file; each
    decoded frame's presentation time is mapped back to (episode, k) and then to the global frame index.

    Args:
        path: the mp4.
        out: uint8 (N, H, W, 3) array (e.g. a memmap) that receives the frames.
        episodes: (episode_index, from_timestamp, first global frame, length) of every episode in the file.
        fps: frames per second of the dataset.
        progress: called with 1 after each stored frame (e.g. a tqdm bar's `update`).
        native_hw: the (H, W) the file's frames have; when it differs from `out`'s frame size, each frame
            is resized to `out`'s (square) size with `resize_frames`. None: the frames must fit `out`.

    Raises:
        VideoError: naming the file, when decoding fails, a frame has the wrong size, or frames of an
            episode are missing (the mp4 is truncated or does not match the episode index).
    """
    path = Path(path)
    eps = sorted(episodes, key=lambda e: e[1])
    starts = np.array([e[1] for e in eps], dtype=np.float64)
    filled = np.zeros(out.shape[0], dtype=bool)
    half = 0.5 / fps
    for t, img in iter_frames(path):
        j = int(np.searchsorted(starts, t + half, side="right")) - 1
        if j < 0:
            continue
        _, start, first, length = eps[j]
        k = int(round((t - start) * fps))
        if not 0 <= k < length:
            continue  # a frame past the episode's end (LeRobot files may carry padding frames)
        expected = (*native_hw, 3) if native_hw is not None else out.shape[1:]
        if img.shape != tuple(expected):
            raise VideoError(
                f"{path}: frames are {img.shape} but the dataset's features say {list(expected)}; "
                "fix the feature shape in meta/info.json or re-encode the video"
            )
        out[first + k] = resize_frames(img, out.shape[1]) if img.shape != out.shape[1:] else img
        filled[first + k] = True
        if progress is not None:
            progress(1)
    missing = [(e, int(length - filled[first : first + length].sum())) for e, _, first, length in eps]
    missing = [(e, n) for e, n in missing if n]
    if missing:
        total = sum(n for _, n in missing)
        raise VideoError(
            f"{path}: {total} frames are missing from the video (episodes {[e for e, _ in missing][:10]}); "
            "the mp4 is truncated or does not match meta/episodes. Re-create the dataset."
        )


class SeekingDecoder:
    """Decodes chosen frames of mp4 files: seek to the keyframe at or before each, decode forward.

    Keeps every file it has read open (one container each) with its keyframe times, found once by a
    demux-only pass (no decoding). Not thread-safe; meant to live inside one worker process.
    """

    def __init__(self) -> None:
        self._open: dict[str, tuple[Any, Any, np.ndarray]] = {}
        self._rgb = VideoReformatter()

    def _get(self, path: str) -> tuple[Any, Any, np.ndarray]:
        if path not in self._open:
            if not Path(path).is_file():
                raise VideoError(f"{path}: video file is missing")
            try:
                container = av.open(path)
                stream = container.streams.video[0]
                tb = float(stream.time_base)
                keys = [p.pts * tb for p in container.demux(stream) if p.is_keyframe and p.pts is not None]
                container.seek(0, stream=stream)
            except Exception as e:
                raise VideoError(f"{path}: cannot index the video ({type(e).__name__}: {e})") from e
            stream.thread_type = "AUTO"  # as in iter_frames: the decoded pixels are the same
            self._open[path] = (container, stream, np.sort(np.asarray(keys, dtype=np.float64)))
        return self._open[path]

    def frames_at(self, path: str | Path, times: np.ndarray, fps: float) -> np.ndarray:
        """uint8 (T, H, W, 3): the frames of `path` presented at `times` (seconds, any order).

        Raises:
            VideoError: naming the file, when a wanted frame is not in it or decoding fails.
        """
        path = str(path)
        times = np.asarray(times, dtype=np.float64)
        container, stream, keys = self._get(path)
        tb = stream.time_base
        half = 0.5 / fps
        out: list[np.ndarray | None] = [None] * len(times)
        frames, pos, last = None, None, None  # open decode iterator, time and pixels of its last frame
        try:
            for j in np.argsort(times, kind="stable"):
                t = float(times[j])
                if last is not None and abs(pos - t) < half:  # the same frame again
                    out[j] = last
                    continue
                ki = int(np.searchsorted(keys, t + half, side="right")) - 1
                key = keys[max(ki, 0)] if len(keys) else 0.0
                if frames is None or pos is None or pos > t - half or key > pos + half:
                    container.seek(int(round(key / tb)), stream=stream, backward=True, any_frame=False)
                    frames, pos, last = container.decode(stream), None, None
                for frame in frames:
                    pos = float(frame.time) if frame.time is not None else 0.0
                    if pos > t - half:
                        break
                else:
                    frames = None
                if pos is None or abs(pos - t) >= half:
                    raise VideoError(
                        f"{path}: no frame at {t:.3f} s (decoding reached {pos}); the mp4 is truncated or "
                        "does not match meta/episodes. Re-create the dataset."
                    )
                last = self._rgb.reformat(frame, format="rgb24").to_ndarray()
                out[j] = last
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: decoding failed ({e}); the file is corrupt or truncated") from e
        return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)

    def close(self) -> None:
        """Closes every open file."""
        for container, _, _ in self._open.values():
            with contextlib.suppress(Exception):
                container.close()
        self._open.clear()
