"""`vlaforge teleop`: drive an env task from a terminal with curses keys, recording a LeRobot v3.0 dataset.

Keys (`KEY_HELP`): a/d move -x/+x, w/s +y/-y, r/f +z/-z (arrow keys: x and y), space toggles the gripper,
+/- change the speed, t takes over from the policy, g hands back to it, k keeps the episode, x discards
it, q quits (kept episodes are written). A terminal reports key presses but not releases, so in real time
(the default) a key moves the arm for `HOLD_S` seconds after it was pressed, and the env steps at its
control rate whether keys come or not; `--lockstep` steps once per key instead (a slow link, or a test).
"""

from __future__ import annotations

import curses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vlaforge.envs.registry import DEFAULT_ENV
from vlaforge.errors import InputError

HOLD_S = 0.15
KEY_HELP = (
    "a/d: x-/x+  w/s: y+/y-  r/f: z+/z-  space: gripper  +/-: speed  "
    "t: take over  g: hand back  k: keep  x: discard  q: quit"
)
# key -> (axis, sign)
MOVES = {
    ord("a"): ("x", -1.0),
    ord("d"): ("x", 1.0),
    ord("w"): ("y", 1.0),
    ord("s"): ("y", -1.0),
    ord("r"): ("z", 1.0),
    ord("f"): ("z", -1.0),
    curses.KEY_LEFT: ("x", -1.0),
    curses.KEY_RIGHT: ("x", 1.0),
    curses.KEY_UP: ("y", 1.0),
    curses.KEY_DOWN: ("y", -1.0),
}


@dataclass(kw_only=True)
class TeleopConfig:
    """What `vlaforge teleop` drives and records (one field per flag).

    Attributes:
        env: the environment, a name in `vlaforge.envs.registry.ENVS`.
        task: the task to drive (e.g. reach-v3).
        out: the dataset directory written when you quit (kept episodes only).
        seed: the first episode's reset seed; each next episode uses the next seed.
        policy: a policy directory (RUN/last) that drives until you take over (t); none: you drive.
        speed: the initial speed in (0, 1] (+/- change it).
        max_steps: the step cap of an episode (None: the env's episode length).
        lockstep: step once per key instead of at the env's control rate.
        overwrite: replace an existing dataset at `out`.
    """

    env: str = DEFAULT_ENV
    task: str = "reach-v3"
    out: str
    seed: int = 0
    policy: str | None = None
    speed: float = 1.0
    max_steps: int | None = None
    lockstep: bool = False
    overwrite: bool = False


def _status(scr, session, message: str) -> None:
    scr.erase()
    s = session
    who = "operator" if s.human else "policy"
    state = " ".join(f"{v:+.3f}" for v in s.obs.state) if s.obs.state is not None else "-"
    lines = [
        f'vlaforge teleop  {s.spec.name}/{s.task}  seed {s.seed}  "{s.instruction}"',
        f"step {s.steps}/{s.max_steps}  speed {s.speed:.2f}  driver {who}  success {s.success}  "
        f"kept {len(s.kept)}",
        f"state {state}",
        message,
        KEY_HELP,
    ]
    height, width = scr.getmaxyx()
    for i, line in enumerate(lines[:height]):
        scr.addnstr(i, 0, line, max(width - 1, 1))
    scr.refresh()


def _loop(scr, session, lockstep: bool) -> None:
    from vlaforge.teleop.session import Command

    curses.curs_set(0) if hasattr(curses, "curs_set") else None
    scr.nodelay(True)
    scr.keypad(True)
    gripper = -1.0
    held: dict[str, tuple[float, float]] = {}  # axis -> (sign, time pressed)
    message = "drive the arm; the episode ends on success or at the step cap"
    _status(scr, session, message)
    while True:
        tick = time.monotonic()
        stepped_key = redraw = False
        while True:
            key = scr.getch()
            if key == -1:
                break
            redraw = True
            if key in MOVES:
                axis, sign = MOVES[key]
                held[axis] = (sign, time.monotonic())
                stepped_key = True
            elif key == ord(" "):
                gripper = -gripper
                stepped_key = True
            elif key in (ord("+"), ord("=")):
                session.faster()
            elif key == ord("-"):
                session.slower()
            elif key == ord("t"):
                session.take_over()
                gripper = session.gripper_command  # hold what the policy holds
                message = "you drive"
            elif key == ord("g"):
                try:
                    session.hand_back()
                    message = "the policy drives"
                except InputError as e:
                    message = str(e)
            elif key == ord("k"):
                index = session.keep()
                message = "nothing to keep" if index is None else f"kept episode {index}"
            elif key == ord("x"):
                session.discard()
                message = "discarded; new episode"
            elif key == ord("q"):
                return
            if lockstep and stepped_key:
                break
        now = time.monotonic()
        cmd = Command(gripper=gripper)
        for axis, (sign, pressed) in held.items():
            if lockstep or now - pressed <= HOLD_S:
                setattr(cmd, axis, sign)
        if lockstep:
            held.clear()
        if not session.done and (not lockstep or stepped_key or not session.human):
            info = session.step(cmd)
            if info["done"]:
                message = ("success" if info["success"] else "step cap reached") + ": k keeps, x discards"
            redraw = True
        if redraw:
            _status(scr, session, message)
        if not lockstep or not session.human:
            session.wait_tick(tick)
        else:
            time.sleep(0.002)


def run_teleop(cfg: TeleopConfig) -> Path | None:
    """Runs the terminal teleop; returns the dataset directory (None when nothing was kept)."""
    from vlaforge.teleop.session import TeleopSession

    policy = None
    if cfg.policy:
        from vlaforge.models.policy import Policy

        policy = Policy.from_pretrained(cfg.policy)
    session = TeleopSession(
        cfg.env,
        cfg.task,
        out=cfg.out,
        seed=cfg.seed,
        policy=policy,
        speed=cfg.speed,
        max_steps=cfg.max_steps,
        overwrite=cfg.overwrite,
    )
    try:
        curses.wrapper(_loop, session, cfg.lockstep)
    except KeyboardInterrupt:  # Ctrl-C: the episodes already kept are complete; write them, then stop
        path = session.close()
        print(f"interrupted; {'wrote ' + str(path) if path else 'no episode was kept'}", file=sys.stderr)
        raise
    except BaseException:
        if session._writer is not None:
            session._writer.abort()
        session.env.close()
        raise
    return session.close()
