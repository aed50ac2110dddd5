"""Render one episode of a dataset to an mp4: the camera image, the instruction, and the action plot.

The background (instruction text, the plot of every action dim over the episode) is drawn once on a
matplotlib `Figure` attached to its own Agg canvas; each video frame then only pastes the upscaled camera
image and a cursor column at the current step into a copy of that background, so rendering costs about as
much as encoding.

The figure is made without pyplot (matplotlib's "embedding in a web application server" example,
https://matplotlib.org/stable/gallery/user_interfaces/web_application_server_sgskip.html): no global
backend is switched (`matplotlib.use`) and no figure is registered with pyplot's state, so importing or
calling this module leaves the caller's matplotlib setup alone.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from vlaforge.data.dataset import open_dataset
from vlaforge.data.interface import IMAGE_PREFIX
from vlaforge.data.video import VideoWriter
from vlaforge.errors import InputError

_PANEL = 256  # pixels of the camera panel's side
_PLOT_W = 448  # pixels of the plot's width
_DPI = 100


def _background(actions: np.ndarray, names: list[str], instruction: str, title: str):
    """Draws the static frame once. Returns (rgb uint8 (H, W, 3), x pixel per step (T,), plot rows)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = _PANEL + _PLOT_W, _PANEL + 48
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)  # this figure's own canvas; the global backend is untouched
    fig.text(0.01, 0.985, title, fontsize=8, va="top", family="monospace")
    fig.text(0.01, 0.94, textwrap.shorten(instruction, 90), fontsize=9, va="top", weight="bold")
    left = (_PANEL + 40) / width
    ax = fig.add_axes((left, 0.12, 0.98 - left, 0.70))
    steps = np.arange(actions.shape[0])
    for d in range(actions.shape[1]):
        ax.plot(steps, actions[:, d], lw=1, label=names[d] if d < len(names) else f"a{d}")
    ax.set_xlim(0, max(1, actions.shape[0] - 1))
    ax.set_xlabel("step", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, loc="upper right", ncol=min(4, actions.shape[1]))
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)
    xs = ax.transData.transform(np.stack([steps, np.zeros_like(steps)], 1))[:, 0]
    y0, y1 = ax.bbox.y0, ax.bbox.y1  # display coordinates have their origin at the bottom
    rows = (int(rgb.shape[0] - y1), int(rgb.shape[0] - y0))
    return rgb, np.clip(xs.round().astype(int), 0, rgb.shape[1] - 1), rows


def render_episode(root: str | Path, episode: int, out: str | Path, camera: str | None = None) -> Path:
    """Writes an mp4 of `episode`: camera image, instruction, and actions with a moving cursor.

    Args:
        root: a LeRobotDataset v3.0 or an RLDS / TFDS directory.
        episode: the episode index.
        out: the mp4 to write.
        camera: camera name or LeRobot key (default: the dataset's first camera).

    Returns:
        The path of the written mp4 (one video frame per episode frame, at the dataset's fps).
    """
    ds = open_dataset(root)
    if not 0 <= episode < ds.num_episodes:
        raise InputError(f"{root}: episode {episode} does not exist (the dataset has {ds.num_episodes})")
    cam = ds.camera_names[0] if camera is None else camera
    cam = cam[len(IMAGE_PREFIX) :] if cam.startswith(IMAGE_PREFIX) else cam
    if cam not in ds.camera_names:
        raise InputError(f"{root}: no camera {camera!r}; cameras are {ds.camera_names}")
    frames = ds.episode_frames(episode)
    idx = np.arange(frames.start, frames.stop)
    images = ds.frame_reader(cam).read(idx)  # (T, h, w, 3): only this episode is decoded
    actions = ds.actions()[frames.start : frames.stop]  # (T, D)
    emb = ds.embodiment()
    names, fps = emb.action_names, emb.control_hz
    task = ds.tasks[int(ds.task_indices()[frames.start])]
    title = f"{Path(root).name}  episode {episode}  {cam}  {len(frames)} steps @ {fps:g} fps"
    bg, xs, (r0, r1) = _background(actions, names, task, title)
    h, w = images.shape[1:3]
    scale = max(1, _PANEL // max(h, w))
    top = bg.shape[0] - _PANEL - 4
    H, W = bg.shape[0] // 2 * 2, bg.shape[1] // 2 * 2  # yuv420p needs even sides
    out = Path(out)
    with VideoWriter(out, fps, H, W) as writer:
        for t in range(len(frames)):
            canvas = bg.copy()
            big = images[t].repeat(scale, 0).repeat(scale, 1)[:_PANEL, :_PANEL]  # nearest-neighbour upscale
            canvas[top : top + big.shape[0], 4 : 4 + big.shape[1]] = big
            canvas[r0:r1, max(0, xs[t] - 1) : xs[t] + 1] = (220, 30, 30)  # the cursor at step t
            writer.write(canvas[:H, :W])
    return out
