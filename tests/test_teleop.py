"""Teleoperation: commands -> actions, recorded sessions with interventions, and the terminal teleop driven
through a pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vlaforge.envs.rendering import configure_rendering

configure_rendering()  # OSMesa unless MUJOCO_GL says otherwise; before anything imports mujoco
pytest.importorskip("metaworld")
pytestmark = pytest.mark.sim

from vlaforge.data.lerobot import LeRobotDataset  # noqa: E402
from vlaforge.teleop.session import (  # noqa: E402
    INTERVENTION_KEY,
    Command,
    TeleopSession,
    action_from_command,
)

NAMES = ["delta_x", "delta_y", "delta_z", "gripper"]
AXIS_KEYS = {0: ("d", "a"), 1: ("w", "s"), 2: ("r", "f")}  # axis -> (key for +, key for -)


def steer(state: np.ndarray, goal: np.ndarray) -> tuple[int, float]:
    """The axis with the largest distance to the goal and its sign (0 when within 4 mm)."""
    d = np.asarray(goal, float) - np.asarray(state[:3], float)
    i = int(np.argmax(np.abs(d)))
    return i, float(np.sign(d[i])) if abs(d[i]) > 0.004 else 0.0


def test_action_from_command_scales_and_clips():
    a = action_from_command(Command(x=1, y=-1, z=0.5, gripper=1), 0.5, NAMES)
    np.testing.assert_allclose(a, [0.5, -0.5, 0.25, 1.0])
    a = action_from_command(Command(x=3, y=0, z=-2, gripper=-1), 1.0, NAMES, low=[-0.4] * 4, high=[0.4] * 4)
    np.testing.assert_allclose(a, [0.4, 0.0, -0.4, -0.4])
    # a name the operator does not command gets 0; order follows the names
    a = action_from_command(Command(x=1, z=1), 1.0, ["gripper", "delta_z", "yaw"])
    np.testing.assert_allclose(a, [-1.0, 1.0, 0.0])


class ConstantPolicy:
    """Stands for a vlaforge Policy: a fixed (H, D) chunk whatever it sees; counts its calls."""

    execute_steps = 2

    def __init__(self):
        self.chunk = np.array([[0.1, 0.2, 0.3, -1.0], [0.4, 0.5, 0.6, 1.0]], np.float32)
        self.calls = 0

    def predict_action(self, obs):
        assert obs["instruction"] == "reach the goal" and obs["state"].shape == (4,)
        self.calls += 1
        return self.chunk


def test_interventions_flag_every_frame_and_keep_discard(tmp_path):
    policy = ConstantPolicy()
    s = TeleopSession("metaworld", "reach-v3", out=tmp_path / "ds", seed=7, policy=policy, image_size=32)
    for _ in range(3):
        s.step()
    s.take_over()
    s.step(Command(x=1, gripper=1))
    s.step(Command(y=-1, gripper=1))
    s.hand_back()
    s.step()
    s.step()
    assert s.keep() == 0
    s.step()
    s.discard()  # the second episode (seed 8) is dropped
    s.set_speed(0.5)
    s.step(Command(z=1))  # third episode, seed 9: no take_over yet, so the policy drives
    s.take_over()
    s.step(Command(z=1))
    assert s.keep() == 1
    root = s.close()
    ds = LeRobotDataset(root)
    assert len(ds) == 9
    flags = ds.column(INTERVENTION_KEY).reshape(-1).tolist()
    assert flags == [False, False, False, True, True, False, False, False, True]
    c = policy.chunk
    expected = np.stack([c[0], c[1], c[0], [1, 0, 0, 1], [0, -1, 0, 1], c[0], c[1], c[0], [0, 0, 0.5, -1]])
    np.testing.assert_allclose(ds.actions(), expected, atol=1e-6)
    assert policy.calls == 5  # chunks of 2 steps: steps 0, 2, 5 (after hand back), 0 of episode 3 (+ ep 2)
    info = json.loads((root / "meta" / "info.json").read_text())
    eps = info["vlaforge"]["episodes"]
    assert [(e["seed"], e["frames"], e["intervention_frames"]) for e in eps] == [(7, 7, 2), (9, 2, 1)]
    assert info["features"][INTERVENTION_KEY]["dtype"] == "bool"


def test_taking_over_keeps_the_gripper_where_the_policy_left_it():
    s = TeleopSession("metaworld", "reach-v3", out=None, seed=7, policy=ConstantPolicy(), image_size=32)
    assert s.gripper_command == -1.0  # nothing executed yet: open
    s.step()
    assert s.gripper_command == -1.0  # the chunk's first action opens
    s.step()
    s.take_over()
    assert s.gripper_command == 1.0  # its second closes: the operator starts closed
    s.step(Command(x=1, gripper=-1))
    assert s.gripper_command == -1.0


def test_session_refuses_hand_back_without_policy(tmp_path):
    from vlaforge.errors import InputError

    s = TeleopSession("metaworld", "reach-v3", out=None, image_size=32, max_steps=2)
    with pytest.raises(InputError, match="no policy"):
        s.hand_back()
    s.step(Command())
    assert s.step(Command())["done"]  # the step cap
    with pytest.raises(InputError, match="episode is over"):
        s.step(Command())
    s.close()


def _read(fd: int, timeout: float) -> bytes:
    out = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.02)
        if not ready:
            if out:
                break
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


@pytest.mark.parametrize("quit_key", ["q", "\x03"], ids=["q", "ctrl-c"])
def test_terminal_teleop_through_a_pty(tmp_path, quit_key):
    """Drives `vlaforge teleop --lockstep` with keys computed from a mirror env of the same seed until it
    succeeds, keeps the episode and quits (q, or Ctrl-C, which must not lose the kept episode); the
    dataset has the steps sent, all flagged as the operator's."""
    from vlaforge.envs.registry import get_env

    seed, out = 11, tmp_path / "tele"
    mirror = get_env("metaworld").make("reach-v3", image_size=32, render=False)
    mirror.reset(seed)
    goal = mirror.raw_observation[36:39].copy()
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src, TERM="xterm", LINES="24", COLUMNS="120")
    cmd = [sys.executable, "-m", "vlaforge", "teleop", "--task", "reach-v3", "--out", str(out)]
    cmd += ["--seed", str(seed), "--lockstep"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the teleop in the pseudo-terminal
        # A test run started in the background by a non-interactive shell ignores SIGINT, and an ignored
        # signal stays ignored across exec: give the child the default, as a terminal user has it.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execvpe(cmd[0], cmd, env)
    try:
        screen = _read(fd, 60.0)
        while b"k: keep" not in screen:
            more = _read(fd, 30.0)
            assert more, f"the teleop did not start: {screen[-500:]!r}"
            screen += more
        steps, success = 0, False
        obs = mirror.observe()
        while not success and steps < 150:
            axis, sign = steer(obs.state, goal)
            key = AXIS_KEYS[axis][0 if sign >= 0 else 1] if sign else "d"
            os.write(fd, key.encode())
            action = np.zeros(4, np.float32)
            action[axis] = sign if sign else 0.0
            if not sign:
                action[0] = 1.0
            action[3] = -1.0
            obs, _, _, info = mirror.step(action)
            success = bool(info["success"])
            steps += 1
            assert _read(fd, 5.0), f"no redraw after step {steps}"  # curses redraws what changed
        assert success
        os.write(fd, b"k")
        assert b"kept episode 0" in _read(fd, 10.0)
        os.write(fd, quit_key.encode())
        deadline, status = time.monotonic() + 60, None
        while status is None:
            _read(fd, 0.5)
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = code
            assert time.monotonic() < deadline, f"the teleop did not exit after {quit_key!r}"
        assert os.WEXITSTATUS(status) == (0 if quit_key == "q" else 130)
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
        mirror.close()
    ds = LeRobotDataset(out)
    assert len(ds) == steps
    assert ds.column(INTERVENTION_KEY).all()
    assert bool(ds.column("next.success").reshape(-1)[-1])
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["vlaforge"]["episodes"][0]["seed"] == seed and info["vlaforge"]["episodes"][0]["success"]


def test_teleop_refuses_existing_out(tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    src = str(Path(__file__).resolve().parents[1] / "src")
    r = subprocess.run(
        [sys.executable, "-m", "vlaforge", "teleop", "--out", str(out)],
        env=dict(os.environ, PYTHONPATH=src),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "already exists" in r.stderr
