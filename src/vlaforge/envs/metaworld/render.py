"""Meta-World's cameras as upright images: one fast renderer per env, shared by its cameras.

Fixed cameras mounted upside down (`corner`, `corner2`, `corner3`, `corner4`: their image-up axis points
at the floor) are turned right side up by a 180-degree rotation, the inverse of the camera's roll (a
vertical flip alone would mirror the scene).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np

from vlaforge.envs.rendering import free_renderer, make_renderer


class Cameras:
    """Renders a set of cameras of one MuJoCo model/data pair, made on first use.

    Args:
        owner: the object whose lifetime bounds the GL context (freed when it is collected, or at exit).
        model, data: the simulation to render.
        cameras: camera names; cam_ids: their ids in `model`.
        image_size: side of the square images.

    Attributes:
        frames_rendered: camera images rendered so far.
    """

    def __init__(self, owner, model, data, cameras: Sequence[str], cam_ids: Sequence[int], image_size: int):
        self._owner = weakref.ref(owner)
        self.model, self.data = model, data
        self.cameras, self.cam_ids, self.image_size = list(cameras), list(cam_ids), int(image_size)
        self.frames_rendered = 0
        self._renderer = None  # an env that never renders needs no GL context
        self._close: weakref.finalize | None = None
        self._upside_down: dict[str, bool] = {}

    def _is_upside_down(self, cam_id: int) -> bool:
        """True for a fixed camera whose image-up axis (its local +y) points below the horizon."""
        import mujoco

        if self.model.cam_mode[cam_id] != mujoco.mjtCamLight.mjCAMLIGHT_FIXED:
            return False
        up_world = self.data.cam_xmat[cam_id].reshape(3, 3)[:, 1]  # the camera's +y axis in the world
        return bool(up_world[2] < 0)

    def raw(self, camera: str) -> np.ndarray:
        """The camera's image exactly as MuJoCo renders it (no orientation fix), uint8 (S, S, 3)."""
        if self._renderer is None:
            self._renderer = make_renderer(self.model, self.image_size)
            self._close = weakref.finalize(self._owner(), free_renderer, self._renderer)
        # one of ours by its id (a moved camera's name is not the model's), any other by the model's name
        cam = self.cam_ids[self.cameras.index(camera)] if camera in self.cameras else camera
        self._renderer.update_scene(self.data, camera=cam)
        return self._renderer.render()

    def images(self) -> dict[str, np.ndarray]:
        """Every camera's upright image, uint8 (S, S, 3)."""
        images = {}
        for name, cam_id in zip(self.cameras, self.cam_ids):
            img = self.raw(name)
            if name not in self._upside_down:
                self._upside_down[name] = self._is_upside_down(cam_id)
            if self._upside_down[name]:
                img = img[::-1, ::-1]  # undo the camera's 180-degree roll
            images[name] = np.ascontiguousarray(img)
            self.frames_rendered += 1
        return images

    def close(self) -> None:
        if self._close is not None:
            self._close()  # runs free_renderer once, whichever comes first
            self._close = None
        self._renderer = None
