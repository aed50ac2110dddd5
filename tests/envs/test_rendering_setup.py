"""Importing vlaforge changes no process-wide setting; the GL backend is chosen when rendering starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vlaforge.envs import metaworld as mw

mw.configure_rendering()  # this process renders in other tests: pick the backend before mujoco loads

GL_VARS = ("MUJOCO_GL", "PYOPENGL_PLATFORM", "MPLBACKEND")


def _python(code: str, **env: str) -> dict:
    """Runs `code` in a fresh interpreter without any GL / matplotlib backend variable set (plus `env`);
    returns the JSON it printed last."""
    clean = {k: v for k, v in os.environ.items() if k not in GL_VARS}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env={**clean, **env}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_leaves_the_environment_and_matplotlib_alone():
    got = _python(
        "import json, os, sys\n"
        "import matplotlib\n"
        "before = dict.__getitem__(matplotlib.rcParams, 'backend')\n"
        "import vlaforge.envs.metaworld, vlaforge.envs.collect, vlaforge.data.view\n"
        "import vlaforge.eval.run, vlaforge.eval.rollout\n"
        "print(json.dumps({'env': {k: os.environ.get(k) for k in ('MUJOCO_GL', 'PYOPENGL_PLATFORM')},\n"
        "    'backend': [str(before), str(dict.__getitem__(matplotlib.rcParams, 'backend'))],\n"
        "    'pyplot': 'matplotlib.pyplot' in sys.modules, 'mujoco': 'mujoco' in sys.modules}))\n"
    )
    assert got["env"] == {"MUJOCO_GL": None, "PYOPENGL_PLATFORM": None}
    before, after = got["backend"]
    assert after == before  # matplotlib.use() was not called
    assert got["pyplot"] is False  # nor was pyplot's global figure state set up
    assert got["mujoco"] is False  # mujoco is imported only once rendering is configured


def test_the_first_env_configures_osmesa_and_renders():
    got = _python(
        "import json, os, sys\n"
        "from vlaforge.envs.metaworld import MetaWorldEnv\n"
        "env = MetaWorldEnv('reach-v3', image_size=24)\n"
        "img = env.reset(3).images['corner2']\n"
        "print(json.dumps({'gl': os.environ.get('MUJOCO_GL'), 'pyopengl': os.environ.get('PYOPENGL_PLATFORM'),\n"
        "    'std': float(img.std()), 'shape': list(img.shape), 'rendered': env.frames_rendered}))\n"
    )
    assert got["gl"] == got["pyopengl"] == mw.DEFAULT_GL == "osmesa"
    assert got["shape"] == [24, 24, 3] and got["std"] > 5 and got["rendered"] == 1


def test_a_backend_the_user_chose_is_kept():
    got = _python(
        "import json, os\n"
        "from vlaforge.envs.metaworld import configure_rendering\n"
        "print(json.dumps([configure_rendering(), os.environ['MUJOCO_GL'], os.environ['PYOPENGL_PLATFORM']]))\n",
        MUJOCO_GL="egl",
    )
    assert got == ["egl", "egl", "egl"]


def test_choosing_another_backend_after_mujoco_was_imported_warns(monkeypatch):
    import mujoco  # noqa: F401 - the situation under test: mujoco already imported

    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert mw.configure_rendering() == "osmesa"  # the same backend: nothing to say
    with pytest.warns(RuntimeWarning, match="keeps its backend 'osmesa'"):
        mw.configure_rendering("egl")
