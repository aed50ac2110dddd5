"""The `vlaforge ui` web app: a FastAPI application over the files under one root directory.

Pages (plain HTML and JS in `static/`, no build step): datasets (LeRobot v3.0 and RLDS, through
`vlaforge.data.open_dataset`), evaluations (eval_info.json), training runs (metrics.jsonl), live rollouts
and teleoperation (a `TeleopSession` stepped by the page at the env's control rate, each step answering
with the new frame as a JPEG), and background jobs (`vlaforge collect|train|eval` subprocesses whose logs
the page follows). Every path a request names must lie under the root. When a token is set, every request
carries it (?token= or the X-Token header); the static pages are served without it and add it to their
requests from their own address.
"""

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from vlaforge import metrics_log
from vlaforge.errors import InputError
from vlaforge.ui.config import LOOPBACK, UIConfig

STATIC = Path(__file__).parent / "static"
JOB_KINDS = ("collect", "train", "eval")
SCAN_DEPTH = 4
MAX_BODY = 1 << 20  # bytes of a JSON request body (commands and forms are small)
LOG_CHUNK = 1 << 20  # bytes of a job's log per request


def _jpeg(image: np.ndarray, quality: int = 85) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode()


def _walk(root: Path, depth: int = SCAN_DEPTH):
    """Directories under `root` (itself included) to `depth` levels, hidden ones skipped."""
    stack = [(root, 0)]
    while stack:
        d, level = stack.pop()
        yield d
        if level < depth:
            try:
                children = sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
            except OSError:
                continue
            stack.extend((c, level + 1) for c in reversed(children))


class Jobs:
    """Background `vlaforge` subprocesses, each logging to a file under `<root>/.vlaforge-ui/jobs/`."""

    def __init__(self, root: Path):
        self.root = root
        self.dir = root / ".vlaforge-ui" / "jobs"
        self.jobs: dict[str, dict[str, Any]] = {}

    def start(self, kind: str, args: list[str]) -> dict[str, Any]:
        if kind not in JOB_KINDS:
            raise InputError(f"unknown job {kind!r}; choose from {', '.join(JOB_KINDS)}")
        if not all(isinstance(a, str) for a in args):
            raise InputError("job arguments must be a list of strings")
        outside = [a for a in args if Path(a).is_absolute() or ".." in Path(a).parts]
        if outside:
            raise InputError(
                f"job arguments name paths under the UI's root only (relative, no '..'); refused: {outside}"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        job_id = f"{kind}-{len(self.jobs) + 1}-{int(time.time())}"
        log = self.dir / f"{job_id}.log"
        src = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
        env["PYTHONUNBUFFERED"] = "1"
        with open(log, "wb") as f:  # the subprocess keeps its own handle; this one is closed at once
            proc = subprocess.Popen(
                [sys.executable, "-m", "vlaforge", kind, *args],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
            )
        self.jobs[job_id] = {"id": job_id, "kind": kind, "args": args, "log": log, "proc": proc}
        return self.describe(job_id)

    def describe(self, job_id: str) -> dict[str, Any]:
        if job_id not in self.jobs:
            raise InputError(f"no job {job_id!r}")
        j = self.jobs[job_id]
        rc = j["proc"].poll()
        state = "running" if rc is None else ("done" if rc == 0 else "failed")
        return {"id": job_id, "kind": j["kind"], "args": j["args"], "state": state, "returncode": rc}

    def log(self, job_id: str, offset: int = 0) -> dict[str, Any]:
        """The job's state and its log from byte `offset` on (at most LOG_CHUNK bytes per call; the page
        asks again from the returned offset)."""
        info = self.describe(job_id)
        if offset < 0:
            raise InputError(f"offset must be >= 0; got {offset}")
        text, end = read_log(self.jobs[job_id]["log"], offset)
        return {**info, "text": text, "offset": end}

    def stop_all(self) -> None:
        for j in self.jobs.values():
            if j["proc"].poll() is None:
                j["proc"].terminate()


def read_log(path: Path, offset: int, limit: int = LOG_CHUNK) -> tuple[str, int]:
    """(text, next offset): at most `limit` bytes of a UTF-8 log from byte `offset`, ending on a character
    boundary (a character cut by the limit, or still being written, comes whole in the next piece)."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(limit)
    for cut in range(min(3, len(data)) + 1):
        try:
            return data[: len(data) - cut].decode(), offset + len(data) - cut
        except UnicodeDecodeError:
            continue
    return data.decode(errors="replace"), offset + len(data)  # not UTF-8 at all


class App:
    """What the routes share: the root, the jobs, the one teleop session and the loaded datasets."""

    def __init__(self, cfg: UIConfig):
        self.root = Path(cfg.root).resolve()
        self.token = cfg.token
        self.jobs = Jobs(self.root)
        self.session = None
        self.lock = threading.Lock()
        self._datasets: dict[str, Any] = {}

    def path(self, rel: str) -> Path:
        """`rel` (relative to the root, or absolute) as a path under the root; anything else is refused."""
        p = (self.root / rel).resolve()
        if p != self.root and self.root not in p.parents:
            raise InputError(f"{rel!r} is outside the UI's root {self.root}")
        return p

    def rel(self, p: Path) -> str:
        return str(p.relative_to(self.root)) or "."

    # -- listings -----------------------------------------------------------------------------------
    def datasets(self) -> list[dict[str, Any]]:
        out = []
        for d in _walk(self.root):
            if (d / "meta" / "info.json").is_file():
                out.append({"path": self.rel(d), "format": "lerobot"})
            elif (d / "dataset_info.json").is_file() and (d / "features.json").is_file():
                out.append({"path": self.rel(d), "format": "rlds"})
        return out

    def evals(self) -> list[dict[str, Any]]:
        out = []
        for d in _walk(self.root):
            f = d / "eval_info.json"
            if f.is_file():
                info = json.loads(f.read_text())
                out.append({"path": self.rel(d), "policy": info.get("policy"), "date": info.get("date")})
        return out

    def runs(self) -> list[dict[str, Any]]:
        return [{"path": self.rel(d)} for d in _walk(self.root) if (d / "metrics.jsonl").is_file()]

    # -- datasets -----------------------------------------------------------------------------------
    def dataset(self, rel: str):
        key = str(self.path(rel))
        if key not in self._datasets:
            from vlaforge.data.dataset import open_dataset

            self._datasets[key] = open_dataset(self.path(rel))
        return self._datasets[key]

    def dataset_summary(self, rel: str) -> dict[str, Any]:
        ds = self.dataset(rel)
        tasks = list(ds.tasks)
        task_idx = np.asarray(ds.task_indices()).reshape(-1)
        episodes = []
        for e in range(ds.num_episodes):
            r = ds.episode_frames(e)
            episodes.append({"index": e, "length": len(r), "task": tasks[int(task_idx[r.start])]})
        try:
            stats = {
                k: {n: np.asarray(v, np.float64).round(4).tolist() for n, v in d.items() if np.ndim(v) <= 1}
                for k, d in ds.norm_stats().to_dict().items()
            }
        except Exception as e:  # noqa: BLE001 - shown on the page instead of the statistics
            stats = {"error": str(e)}
        emb = ds.embodiment()
        return {
            "path": rel,
            "format": type(ds).__name__,
            "num_episodes": ds.num_episodes,
            "num_frames": ds.num_frames,
            "tasks": tasks,
            "cameras": list(ds.camera_names),
            "fps": float(emb.control_hz),
            "action_names": list(emb.action_names),
            "state_names": list(emb.state_names),
            "episodes": episodes,
            "stats": stats,
        }

    def episode(self, rel: str, ep: int) -> dict[str, Any]:
        ds = self.dataset(rel)
        if not 0 <= ep < ds.num_episodes:
            raise InputError(f"episode {ep} is out of range (the dataset has {ds.num_episodes})")
        r = ds.episode_frames(ep)
        out: dict[str, Any] = {
            "episode": ep,
            "length": len(r),
            "fps": float(ds.embodiment().control_hz),
            "action": np.asarray(ds.actions()[r.start : r.stop]).round(5).tolist(),
            "state": np.asarray(ds.states()[r.start : r.stop]).round(5).tolist(),
            "videos": {},
        }
        if hasattr(ds, "video_path") and hasattr(ds, "episodes"):  # LeRobot: the mp4 and where ep starts
            for cam in ds.camera_names:
                key = f"observation.images.{cam}"
                out["videos"][cam] = {
                    "url": f"/api/file?path={quote(self.rel(ds.video_path(key, ep)))}",
                    "from": float(ds.episodes[ep][f"videos/{key}/from_timestamp"]),
                }
        flags = {}
        for col in ("complementary_info.is_intervention", "next.success"):
            if hasattr(ds, "column") and col in ds.info.get("features", {}):
                flags[col] = np.asarray(ds.column(col)).reshape(-1)[r.start : r.stop].astype(bool).tolist()
        out["flags"] = flags
        return out

    def frame(self, rel: str, ep: int, i: int, camera: str) -> bytes:
        ds = self.dataset(rel)
        if not 0 <= ep < ds.num_episodes:
            raise InputError(f"{rel}: no episode {ep} (it has {ds.num_episodes})")
        r = ds.episode_frames(ep)
        if not 0 <= i < len(r):
            raise InputError(f"{rel}: episode {ep} has {len(r)} frames; no frame {i}")
        if camera not in ds.camera_names and camera not in getattr(ds, "camera_keys", ()):
            raise InputError(f"{rel}: no camera {camera!r} (have {list(ds.camera_names)})")
        frames = ds.frames(camera) if hasattr(ds, "frames") else ds.video_frames(camera)
        return base64.b64decode(_jpeg(frames[r.start + i]))

    # -- evaluations and runs -----------------------------------------------------------------------
    def eval_info(self, rel: str) -> dict[str, Any]:
        f = self.path(rel) / "eval_info.json"
        if not f.is_file():
            raise InputError(f"{rel}: no eval_info.json")
        info = json.loads(f.read_text())
        info["path"] = rel
        return info

    def metrics(self, rel: str) -> list[dict[str, Any]]:
        f = self.path(rel) / "metrics.jsonl"
        if not f.is_file():
            raise InputError(f"{rel}: no metrics.jsonl")
        return metrics_log.read(f)  # a line still being written is not a row yet

    # -- teleop and rollouts ------------------------------------------------------------------------
    def start_session(self, body: dict[str, Any]) -> dict[str, Any]:
        from vlaforge.teleop.session import TeleopSession

        with self.lock:
            if self.session is not None:
                self.session.close()
                self.session = None
            from vlaforge.envs.registry import DEFAULT_ENV

            policy = None
            if body.get("policy"):
                from vlaforge.models.policy import Policy

                policy = Policy.from_pretrained(self.path(body["policy"]))
            out = body.get("out")
            self.session = TeleopSession(
                body.get("env") or DEFAULT_ENV,
                body.get("task") or "reach-v3",
                out=self.path(out) if out else None,
                seed=int(body.get("seed", 0)),
                policy=policy,
                speed=float(body.get("speed", 1.0)),
                max_steps=body.get("max_steps"),
                image_size=body.get("image_size"),
                overwrite=bool(body.get("overwrite", False)),
            )
            return self._session_state()

    def _session_state(self, frame: bool = True) -> dict[str, Any]:
        s = self.session
        state = {
            "env": s.spec.name,
            "task": s.task,
            "instruction": s.instruction,
            "seed": s.seed,
            "steps": s.steps,
            "max_steps": s.max_steps,
            "speed": s.speed,
            "human": s.human,
            "gripper": s.gripper_command,  # where an operator taking over starts from
            "success": s.success,
            "done": s.done,
            "kept": len(s.kept),
            "period": s.period,
            "state": np.asarray(s.obs.state).round(4).tolist() if s.obs.state is not None else None,
            "chunk": None if s.chunk is None else np.asarray(s.chunk).round(4).tolist(),
        }
        if frame:
            state["frame"] = _jpeg(s.obs.images[s.cameras[0]])
        return state

    def session_act(self, body: dict[str, Any]) -> dict[str, Any]:
        from vlaforge.teleop.session import Command

        with self.lock:
            s = self.session
            if s is None:
                raise InputError("no session; start one first")
            op = body.get("op", "step")
            result: dict[str, Any] = {}
            if op == "step":
                c = body.get("cmd") or {}
                if not s.done:
                    s.step(Command(**{k: float(c[k]) for k in ("x", "y", "z", "gripper") if k in c}))
            elif op == "take_over":
                s.take_over()
            elif op == "hand_back":
                s.hand_back()
            elif op == "speed":
                s.set_speed(float(body["speed"]))
            elif op == "keep":
                result["kept_index"] = s.keep()
            elif op == "discard":
                s.discard()
            elif op == "close":
                path = s.close()
                self.session = None
                return {"closed": True, "dataset": None if path is None else self.rel(path)}
            else:
                raise InputError(f"unknown op {op!r}")
            return {**self._session_state(), **result}


async def _json_object(request: Any) -> dict[str, Any]:
    """The request's JSON body, which must be an object of at most MAX_BODY bytes."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY:
        raise InputError(f"the request body is {int(size)} bytes; at most {MAX_BODY} are accepted")
    raw = bytearray()
    async for chunk in request.stream():  # also bounds a body sent without a length
        raw += chunk
        if len(raw) > MAX_BODY:
            raise InputError(f"the request body exceeds {MAX_BODY} bytes")
    try:
        body = json.loads(bytes(raw))
    except ValueError as e:
        raise InputError(f"the request body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise InputError(f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def create_app(cfg: UIConfig):
    """The FastAPI application serving `cfg.root`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    state = App(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state.jobs.stop_all()
        if state.session is not None:
            state.session.close()

    app = FastAPI(title="vlaforge", lifespan=lifespan)
    app.state.vlaforge = state

    @app.middleware("http")
    async def loopback_host(request: Request, call_next):
        # Without a token the UI trusts whoever reaches it, which on loopback is this machine's user. A
        # page of another site can still reach it through DNS rebinding (its own name resolving to
        # 127.0.0.1), so the Host the browser sends must be a loopback name.
        if not state.token:
            host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
            if host not in LOOPBACK:  # urlsplit gives "[::1]:8765" as "::1"
                return JSONResponse({"error": f"Host {host!r} refused: open the UI at 127.0.0.1"}, 403)
        return await call_next(request)

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        path = request.url.path
        if state.token and path.startswith("/api/"):
            given = request.query_params.get("token") or request.headers.get("x-token")
            if given != state.token:
                return JSONResponse({"error": "a valid token is required (?token= or X-Token)"}, 401)
        return await call_next(request)

    @app.middleware("http")
    async def same_origin_json(request: Request, call_next):
        # A page from another site may send simple POSTs to this server from the user's browser: a request
        # that changes state must be JSON (which such a page cannot send without a preflight this app
        # never grants) and, when the browser names its origin, come from this app's own origin.
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
                return JSONResponse({"error": f"requests from {origin} are refused"}, 403)
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return JSONResponse({"error": "send the request body as application/json"}, 415)
        return await call_next(request)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return JSONResponse({"error": str(exc)}, 400)

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/list")
    def listing():
        return {
            "root": str(state.root),
            "datasets": state.datasets(),
            "evals": state.evals(),
            "runs": state.runs(),
        }

    @app.get("/api/dataset")
    def dataset(path: str):
        return state.dataset_summary(path)

    @app.get("/api/episode")
    def episode(path: str, ep: int):
        return state.episode(path, ep)

    @app.get("/api/frame")
    def frame(path: str, ep: int, i: int, camera: str):
        return Response(state.frame(path, ep, i, camera), media_type="image/jpeg")

    @app.get("/api/file")
    def file(path: str):
        p = state.path(path)
        if not p.is_file():
            raise InputError(f"{path}: no such file")
        # Videos and images play in the page; anything else is a download, never a page of this origin.
        inline = p.suffix.lower() in (".mp4", ".webm", ".png", ".jpg", ".jpeg", ".gif")
        headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
        disposition = "inline" if inline else "attachment"
        return FileResponse(p, headers=headers, filename=p.name, content_disposition_type=disposition)

    @app.get("/api/eval")
    def eval_info(path: str):
        return state.eval_info(path)

    @app.get("/api/metrics")
    def metrics(path: str):
        return state.metrics(path)

    @app.post("/api/session/start")
    async def session_start(request: Request):
        body = await _json_object(request)
        return await _in_thread(state.start_session, body)

    @app.post("/api/session/act")
    async def session_act(request: Request):
        body = await _json_object(request)
        return await _in_thread(state.session_act, body)

    @app.post("/api/jobs")
    async def job_start(request: Request):
        body = await _json_object(request)
        args = body.get("args") or []
        if not isinstance(args, list):
            raise InputError("args must be a list of strings, one per word")
        return state.jobs.start(str(body.get("kind")), args)

    @app.get("/api/jobs")
    def jobs():
        return [state.jobs.describe(j) for j in state.jobs.jobs]

    @app.get("/api/jobs/{job_id}/log")
    def job_log(job_id: str, offset: int = 0):
        return state.jobs.log(job_id, offset)

    return app


async def _in_thread(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def check_host(cfg: UIConfig) -> None:
    """Refuses a non-loopback host without a token."""
    if cfg.host not in LOOPBACK and not cfg.token:
        raise InputError(
            f"--host {cfg.host} exposes the UI beyond this machine; give --token SECRET (the pages then "
            "need ?token=SECRET), or keep the default --host 127.0.0.1"
        )


def serve_ui(cfg: UIConfig) -> None:
    """Runs the UI until interrupted."""
    check_host(cfg)
    try:
        import uvicorn
    except ImportError as e:
        raise InputError("`vlaforge ui` needs fastapi and uvicorn: pip install 'vlaforge[ui]'") from e
    if not Path(cfg.root).is_dir():
        raise InputError(f"--root {cfg.root} is not a directory")
    app = create_app(cfg)
    suffix = f"/?token={cfg.token}" if cfg.token else "/"
    print(
        f"vlaforge ui: serving {Path(cfg.root).resolve()} at http://{cfg.host}:{cfg.port}{suffix}", flush=True
    )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
