"""Headless MuJoCo rendering shared by the MuJoCo environments: the GL backend, and fast offscreen
renderers (no shadows, reflections or multisampling) that free their GL state safely.

Measured through OSMesa on a CPU: shadows and reflections cost ~8x a frame's render time, multisample
anti-aliasing 2.6x more (8.5 vs 22 ms a 128 px frame).
"""

from __future__ import annotations

import os
import sys
import warnings

DEFAULT_GL = "osmesa"  # headless CPU rendering (Debian package libosmesa6)


def configure_rendering(backend: str | None = None) -> str:
    """Chooses MuJoCo's OpenGL backend; call it before `mujoco` is first imported in the process.

    MuJoCo reads `MUJOCO_GL` once, when `mujoco` is imported, and PyOpenGL reads `PYOPENGL_PLATFORM`
    when it is imported; neither can be changed afterwards. So this sets them explicitly, at the
    moment rendering is first needed, instead of at import time: the envs call it before importing
    their simulator (which imports mujoco), the rollout and collection workers call it in their
    initializers, and the `vlaforge` command calls it at start-up.

    Args:
        backend: "osmesa" (CPU), "egl" (GPU, headless) or "glfw" (a window). None keeps a backend the
            user already chose in `MUJOCO_GL`, else uses OSMesa.

    Returns:
        The backend in effect. A user's `PYOPENGL_PLATFORM` is kept; otherwise it follows the backend.
        When mujoco was already imported with another backend, a `RuntimeWarning` says so (the earlier
        choice stays in effect).
    """
    gl = backend or os.environ.get("MUJOCO_GL") or DEFAULT_GL
    previous = os.environ.get("MUJOCO_GL")
    os.environ["MUJOCO_GL"] = gl
    os.environ.setdefault("PYOPENGL_PLATFORM", gl)
    if "mujoco" in sys.modules and previous != gl:
        warnings.warn(
            f"mujoco was imported before configure_rendering({gl!r}) and keeps its backend "
            f"{previous or 'default'!r}; call configure_rendering before importing mujoco or a simulator",
            RuntimeWarning,
            stacklevel=2,
        )
    return gl


def make_renderer(model, image_size: int):
    """A `mujoco.Renderer` of square `image_size` images, with shadows, reflections and multisampling off.

    Pair it with `free_renderer` (e.g. through `weakref.finalize`) to release it.
    """
    import mujoco

    vis = model.vis.global_
    vis.offwidth = max(int(vis.offwidth), image_size)  # the offscreen buffer bounds the size
    vis.offheight = max(int(vis.offheight), image_size)
    # No multisample anti-aliasing: slightly jagged edges, much faster. Set everywhere so that images look
    # the same on every machine.
    model.vis.quality.offsamples = 0
    renderer = mujoco.Renderer(model, image_size, image_size)
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    return renderer


def free_renderer(renderer) -> None:
    """Closes a `mujoco.Renderer` without harming the other renderers of this process.

    `Renderer.close` frees its GL context first and its MuJoCo render context (textures, framebuffers)
    second, when some other context may be current: those GL deletions then hit the objects of whichever
    renderer drew last, whose images come out garbled from then on. Batched evaluation keeps several envs
    alive in one process, so the render context is freed here with its own GL context current.
    Left to the renderer's own __del__, OSMesa's free function may already be gone at shutdown, so call
    this from a `weakref.finalize` (atexit runs before module teardown).
    """
    gl, mjr = getattr(renderer, "_gl_context", None), getattr(renderer, "_mjr_context", None)
    if gl is not None and mjr is not None:
        gl.make_current()
        mjr.free()
        renderer._mjr_context = None
    renderer.close()


def camera_names_of(model) -> list[str]:
    """The names of a MuJoCo model's cameras, in id order."""
    import mujoco

    return [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
