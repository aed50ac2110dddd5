"""`vlaforge ui` in a real browser: headless Chromium driven over the DevTools protocol.

Set VLAFORGE_SCREENSHOTS=DIR to save a screenshot of each page there (docs/img is made this way).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from vlaforge.envs.rendering import configure_rendering

configure_rendering()  # OSMesa unless MUJOCO_GL says otherwise; before anything imports mujoco
pytest.importorskip("metaworld")
pytest.importorskip("fastapi", reason="the UI needs fastapi and uvicorn (pip install 'vlaforge[ui]')")
pytest.importorskip("uvicorn", reason="the UI needs fastapi and uvicorn (pip install 'vlaforge[ui]')")

from vlaforge.ui.browser import Browser, find_chromium  # noqa: E402

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium on PATH: the browser tests need it (apt-get install chromium)",
)
SHOTS = os.environ.get("VLAFORGE_SCREENSHOTS")
KEY = {(0, 1): "KeyD", (0, -1): "KeyA", (1, 1): "KeyW", (1, -1): "KeyS", (2, 1): "KeyR", (2, -1): "KeyF"}
LOSS = [1.5, 0.9, 0.61, 0.42, 0.35]


def _shot(b: Browser, name: str) -> None:
    if SHOTS:
        time.sleep(0.3)
        b.screenshot(Path(SHOTS) / f"ui-{name}.png")


def _steer_to(session, goal) -> None:
    from vlaforge.teleop.session import Command

    while not session.done:
        d = goal - session.obs.state[:3]
        i = int(np.argmax(np.abs(d)))
        c = Command()
        setattr(c, "xyz"[i], float(np.sign(d[i])) if abs(d[i]) > 0.004 else 1.0)
        session.step(c)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A UI server over a root holding a recorded dataset, two evaluations and a training run."""
    from vlaforge.teleop.session import TeleopSession
    from vlaforge.ui.config import UIConfig

    root = tmp_path_factory.mktemp("uiroot")
    s = TeleopSession("metaworld", "reach-v3", out=root / "data" / "reach", seed=1, image_size=64)
    for _ in range(2):
        _steer_to(s, s.env.raw_observation[36:39].copy())
        s.keep()
    s.close()
    for name, succ in (("policy-a", [3, 1]), ("policy-b", [5, 4])):
        episodes = [
            {"task": t, "episode": k, "seed": k, "success": k < n, "steps": 10, "video": None}
            for t, n in zip(["reach-v3", "push-v3"], succ)
            for k in range(6)
        ]
        per_task = {t: {"n": 6, "successes": n, "rate": n / 6} for t, n in zip(["reach-v3", "push-v3"], succ)}
        info = {
            "format": "vlaforge-eval/1",
            "policy": name,
            "date": "2026-01-01T00:00:00+00:00",
            "protocol": {"benchmark": "metaworld", "episodes_per_task": 6},
            "tasks": ["reach-v3", "push-v3"],
            "aggregates": {"per_task": per_task},
            "episodes": episodes,
        }
        (root / "evals" / name).mkdir(parents=True)
        (root / "evals" / name / "eval_info.json").write_text(json.dumps(info))
    (root / "runs" / "tiny").mkdir(parents=True)
    lines = [json.dumps({"step": 10 * (i + 1), "loss": v, "lr": 1e-3}) for i, v in enumerate(LOSS)]
    (root / "runs" / "tiny" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with _serve(UIConfig(root=str(root))) as url, Browser(width=1360, height=1000) as browser:
        yield browser, url, root


@contextlib.contextmanager
def _serve(cfg):
    """The UI of `cfg` served by uvicorn in a thread on a free port; yields its base URL."""
    import uvicorn

    from vlaforge.ui.server import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the UI server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_dataset_page_plays_video_and_plots(ui):
    b, url, root = ui
    b.goto(url + "/#datasets")
    b.wait_for("document.querySelector('#dataset-list li[data-path=\"data/reach\"]')")
    b.eval("document.querySelector('#dataset-list li').click()")
    b.wait_for("document.querySelectorAll('.episode-row').length === 2")
    b.eval("document.querySelectorAll('.episode-row')[1].click()")
    b.wait_for(
        "document.querySelector('#episode-video') && document.querySelector('#episode-video').readyState >= 2"
    )
    start = b.eval("document.querySelector('#episode-video').currentTime")
    b.eval("document.querySelector('#episode-video').play()")
    b.wait_for(f"document.querySelector('#episode-video').currentTime > {start} + 0.1", timeout=10)
    b.wait_for("Number(document.querySelector('#plot-action').dataset.cursor) > 0")
    series = json.loads(b.eval("document.querySelector('#plot-action').dataset.series"))
    from vlaforge.data.lerobot import LeRobotDataset

    ds = LeRobotDataset(root / "data" / "reach")
    r = ds.episode_frames(1)
    actions = ds.actions()[r.start : r.stop]
    assert list(series) == ["delta_x", "delta_y", "delta_z", "gripper"]
    np.testing.assert_allclose(np.array([series[k] for k in series]).T, actions, atol=1e-5)
    b.eval("document.querySelector('#episode-video').pause()")
    _shot(b, "dataset")


def test_evaluations_side_by_side_with_wilson_intervals(ui):
    from vlaforge.eval.stats import wilson_interval

    b, url, _ = ui
    b.goto(url + "/#evals")
    b.wait_for("document.querySelectorAll('.eval-pick').length === 2")
    b.eval("document.querySelectorAll('.eval-pick').forEach((c) => { c.checked = true; })")
    b.eval("document.querySelector('#eval-compare').click()")
    b.wait_for("document.querySelectorAll('#eval-table td.rate').length === 4")
    cells = b.eval("[...document.querySelectorAll('#eval-table td.rate')].map((c) => c.textContent)")
    lo, hi = wilson_interval(1, 6)
    assert f"17% [{100 * lo:.0f}, {100 * hi:.0f}] (1/6)" in cells  # push-v3 of policy-a
    lo, hi = wilson_interval(5, 6)
    assert cells[1] == f"83% [{100 * lo:.0f}, {100 * hi:.0f}] (5/6)"  # reach-v3 of policy-b
    _shot(b, "evaluations")


def test_training_run_loss_curve(ui):
    b, url, _ = ui
    b.goto(url + "/#runs")
    b.wait_for("document.querySelector('#run-list li')")
    b.eval("document.querySelector('#run-list li').click()")
    b.wait_for("document.querySelector('#plot-loss')")
    series = json.loads(b.eval("document.querySelector('#plot-loss').dataset.series"))
    assert series == {"loss": [[10 * (i + 1), v] for i, v in enumerate(LOSS)]}
    _shot(b, "runs")


def test_teleoperate_in_the_browser_until_success(ui):
    """Holds the keys that steer toward the goal (computed from the env's state) until the env reports
    success, keeps the episode, finishes; the dataset has the frames stepped, all flagged as human."""
    from vlaforge.data.lerobot import LeRobotDataset
    from vlaforge.envs.registry import get_env
    from vlaforge.teleop.session import INTERVENTION_KEY

    b, url, root = ui
    seed = 21
    mirror = get_env("metaworld").make("reach-v3", image_size=32, render=False)
    mirror.reset(seed)
    goal = mirror.raw_observation[36:39].copy()
    mirror.close()
    b.goto(url + "/#teleop")
    b.eval(f"document.querySelector('#f-seed').value = '{seed}'")
    b.eval("document.querySelector('#f-out').value = 'teleop/browser'")
    b.eval("document.querySelector('#session-start').click()")
    b.wait_for("window.vlaforgeUI.last && window.vlaforgeUI.last.seed === 21")
    deadline = time.monotonic() + 40
    while not b.eval("window.vlaforgeUI.last.success"):
        assert time.monotonic() < deadline, "no success within 40 s of key presses"
        state = np.array(b.eval("window.vlaforgeUI.last.state"))
        d = goal - state[:3]
        i = int(np.argmax(np.abs(d)))
        steps = b.eval("window.vlaforgeUI.last.steps")
        code = KEY[(i, 1 if d[i] >= 0 else -1)]
        b.key(code, True)
        b.wait_for(f"window.vlaforgeUI.last.steps > {steps}", timeout=5)
        b.key(code, False)
    time.sleep(0.2)  # a step in flight when the key was released lands
    frames = b.eval("window.vlaforgeUI.last.steps")
    _shot(b, "teleop")
    b.tap("KeyK")
    b.wait_for("window.vlaforgeUI.last.kept === 1 && window.vlaforgeUI.last.steps === 0")
    b.eval("document.querySelector('#session-close').click()")
    b.wait_for("window.vlaforgeUI.closed && window.vlaforgeUI.closed.dataset")
    ds = LeRobotDataset(root / "teleop" / "browser")
    assert len(ds) == frames > 10
    assert ds.column(INTERVENTION_KEY).all()
    success = ds.column("next.success").reshape(-1)
    # The env reported success at a step; a step still in flight after it may move the hand off again.
    assert success.any() and not success[0]
    info = json.loads((root / "teleop" / "browser" / "meta" / "info.json").read_text())
    assert info["vlaforge"]["episodes"][0]["seed"] == seed


def test_jobs_page_follows_a_log(ui):
    b, url, root = ui
    b.goto(url + "/#jobs")
    b.eval("document.querySelector('#job-kind').value = 'collect'")
    b.eval(
        "document.querySelector('#job-args').value = "
        "'--tasks reach-v3 --episodes 1 --out data/job --workers 0 --image-size 32'"
    )
    b.eval("document.querySelector('#job-start').click()")
    b.wait_for("document.querySelector('#job-log').dataset.state === 'done'", timeout=60)
    assert "wrote data/job" in b.eval("document.querySelector('#job-log').textContent")
    # The log read in pieces from an offset, as the page follows it: together, the whole file.
    job = b.eval("document.querySelector('#job-title').textContent")
    with urllib.request.urlopen(f"{url}/api/jobs/{job}/log?offset=0", timeout=10) as r:
        first = json.loads(r.read())
    with urllib.request.urlopen(f"{url}/api/jobs/{job}/log?offset=7", timeout=10) as r:
        rest = json.loads(r.read())
    assert first["text"][7:] == rest["text"] and rest["offset"] == first["offset"]
    assert (root / "data" / "job" / "meta" / "info.json").is_file()
    _shot(b, "jobs")


def test_token_required_off_loopback():
    from vlaforge.errors import InputError
    from vlaforge.ui.config import UIConfig
    from vlaforge.ui.server import check_host

    with pytest.raises(InputError, match="--token"):
        check_host(UIConfig(host="0.0.0.0"))
    check_host(UIConfig(host="0.0.0.0", token="s3cret"))
    check_host(UIConfig())


def _status(url: str, headers: dict | None = None, data: bytes | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_token_is_checked(ui):
    from vlaforge.ui.config import UIConfig

    _, _, root = ui
    with _serve(UIConfig(root=str(root), token="s3cret")) as url:
        assert _status(url + "/api/list") == 401
        assert _status(url + "/api/list?token=s3cret") == 200
        assert _status(url + "/api/list", {"X-Token": "s3cret"}) == 200
        assert _status(url + "/api/file?path=../x&token=s3cret") == 400  # outside the root
        assert _status(url + "/") == 200  # the page itself; its requests carry the token


def test_cross_site_requests_are_refused(ui):
    """A page of another site cannot start a job: a simple (text/plain) POST or another Origin is refused."""
    from vlaforge.ui.config import UIConfig

    _, _, root = ui
    body = json.dumps({"kind": "collect", "args": ["--tasks", "reach-v3"]}).encode()
    with _serve(UIConfig(root=str(root))) as url:
        plain = {"Content-Type": "text/plain"}
        assert _status(url + "/api/jobs", plain, body) == 415
        other = {"Content-Type": "application/json", "Origin": "http://evil.example"}
        assert _status(url + "/api/jobs", other, body) == 403
        assert _status(url + "/api/jobs") == 200  # nothing was started
        with urllib.request.urlopen(url + "/api/jobs", timeout=10) as r:
            assert json.loads(r.read()) == []


def test_requests_that_could_harm_are_refused(ui):
    """DNS rebinding (another Host), a body that is not a JSON object, job paths outside the root, a
    session that would replace an existing directory, and an HTML file that would run as the UI's page."""
    _, url, root = ui
    json_type = {"Content-Type": "application/json"}
    port = urlsplit(url).port
    assert _status(url + "/api/list", {"Host": f"rebound.example:{port}"}) == 403
    assert _status(url + "/api/list", {"Host": f"localhost:{port}"}) == 200
    assert _status(url + "/api/jobs", json_type, b"[]") == 400
    # A body declared over the limit (2 MiB) is refused from its header alone. (Sending the 2 MiB too would
    # race the server's early answer and close: the client can fail with a broken pipe before reading it.)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/api/session/act")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    assert conn.getresponse().status == 400
    conn.close()
    job = {"kind": "collect", "args": ["--tasks", "reach-v3", "--out", "/tmp/elsewhere"]}
    assert _status(url + "/api/jobs", json_type, json.dumps(job).encode()) == 400
    start = {"env": "metaworld", "task": "reach-v3", "out": "data"}  # exists: it holds the datasets
    assert _status(url + "/api/session/start", json_type, json.dumps(start).encode()) == 400
    assert (root / "data" / "reach" / "meta" / "info.json").is_file()
    (root / "page.html").write_text("<script>fetch('/api/jobs')</script>")
    with urllib.request.urlopen(url + "/api/file?path=page.html", timeout=10) as r:
        assert r.headers["Content-Disposition"].startswith("attachment")
        assert r.headers["Content-Security-Policy"] == "sandbox"
    assert _status(url + "/api/frame?path=data/reach&ep=0&i=100000&camera=corner2") == 400


def test_job_log_pieces_end_on_character_boundaries(tmp_path):
    from vlaforge.ui.server import read_log

    text = "step 1 ✓\nétape 2 ✓\n"  # multi-byte characters
    path = tmp_path / "job.log"
    path.write_bytes(text.encode())
    got, offset, pieces = "", 0, 0
    while offset < path.stat().st_size:
        piece, offset = read_log(path, offset, limit=4)  # 4 bytes: cuts inside a character
        got += piece
        pieces += 1
    assert got == text and pieces > 5
    path.write_bytes(text.encode()[:-2])  # a writer mid-character: the partial one waits
    piece, end = read_log(path, 0)
    assert piece == text[:-2] and end == len(text[:-2].encode())
