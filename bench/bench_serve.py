"""Serving: a loopback load test (batched vs unbatched), the wire overhead at batch 1, and a fuzz run.

    .venv/bin/python bench/bench_serve.py [--clients 16] [--requests 1000] [--fuzz 2000] [--quick]

The policy is the `tiny` preset with the chunk head (one 64 px camera, a state of 6, chunks of 8), untrained
(the cost of a forward pass does not depend on the weights). Every server is a real `vlaforge serve`
process (one torch thread) on a loopback port; the load comes from this process, one asyncio websocket
client per simulated robot, each sending its requests one after another (a robot waits for its actions).

- load: N clients x M requests, against `--max-batch 8 --max-wait-ms 5` (batched) and `--max-batch 1`
  (unbatched), in the same run. Latency percentiles over all requests, throughput = requests / wall time,
  errors (error replies or lost connections), and how far the actions are from in-process `predict_action`
  on the same observation (batched numerics round differently; padding of the prompts too).
- wire overhead at batch 1: one client, sequential requests, round trip vs `predict_action` in this
  process (same thread count); the difference is what the wire, the codec and the checks cost.
- fuzz: malformed messages from `vlaforge.serve.fuzz` on both protocols plus bad tokens, against a server
  with a token; every reply is classified (error reply / accepted / crash = no reply or a dead server), and
  afterwards the server must still answer a valid request exactly.
- costly shapes: messages small on the wire but costly to decode naively (`costly_msgpack` /
  `costly_json`: millions of empty containers, deep nesting, long arrays), each decoded in this process
  (time, and peak memory under tracemalloc) and sent to the fuzz server (time to its error reply).
  `--costly-only` runs just this part.

Writes bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from vlaforge.atomic import write_json
from vlaforge.models.policy import Policy
from vlaforge.serve.codec import DecodeError, decode_json, decode_msgpack, encode_msgpack
from vlaforge.serve.fuzz import costly_json, costly_msgpack, malformed_json, malformed_msgpack
from vlaforge.types import Embodiment, FeatureStats, NormStats

TOKEN = "bench-token-0123456789"
INSTRUCTIONS = ["open the drawer", "press the red button twice", "close the window", "pick up the block"]


def make_checkpoint(root: Path) -> Path:
    def fs(d, mask=None):
        return FeatureStats(
            min=-np.ones(d), max=np.ones(d), mean=np.zeros(d), std=np.full(d, 0.5),
            q01=np.full(d, -0.8), q99=np.full(d, 0.8), mask=mask,
        )  # fmt: skip

    emb = Embodiment(
        action_dim=4, action_names=["dx", "dy", "dz", "gripper"], normalize_mask=[True, True, True, False],
        action_low=[-1.0] * 4, action_high=[1.0] * 4, control_hz=20.0, camera_names=["corner2"],
        image_size=64, state_dim=6,
    )  # fmt: skip
    torch.manual_seed(0)
    stats = NormStats({"action": fs(4, [True, True, True, False]), "observation.state": fs(6)})
    return Policy.from_preset("tiny", "chunk", emb, stats).save_pretrained(root / "policy")


def observations(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "observation/image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            "observation/state": rng.standard_normal(6).astype(np.float32),
            "prompt": INSTRUCTIONS[i % len(INSTRUCTIONS)],
        }
        for i in range(n)
    ]


class Server:
    """`vlaforge serve` in a subprocess, on a free port."""

    def __init__(self, ckpt: Path, *flags: str):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "vlaforge.cli", "serve", "--policy", str(ckpt), "--port", "0"]
        cmd += ["--threads", "1", *flags]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        line = self.proc.stdout.readline()
        m = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
        if not m:
            raise RuntimeError(f"the server did not start: {line!r}")
        self.port = int(m.group(1))
        self.url = f"ws://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return out


async def _robot(
    url: str, obs: list[dict], m: int, lat: list, errors: list, replies: dict, rid: int, token=None
):
    import websockets

    headers = {"Authorization": f"Api-Key {token}"} if token else None
    try:
        async with websockets.connect(url, additional_headers=headers, max_size=None, compression=None) as ws:
            await ws.recv()
            for k in range(m):
                i = (rid * 7919 + k) % len(obs)
                t0 = time.perf_counter()
                await ws.send(encode_msgpack(obs[i]))
                reply = await ws.recv()
                lat.append(time.perf_counter() - t0)
                if isinstance(reply, str):
                    errors.append(reply[:200])
                    return
                if k % 50 == 0:
                    replies[i] = decode_msgpack(reply)["actions"]
    except Exception as e:  # a lost connection counts as an error
        errors.append(f"{type(e).__name__}: {e}")


def load(url: str, obs: list[dict], clients: int, m: int) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    replies: dict[int, np.ndarray] = {}

    async def main():
        await asyncio.gather(*[_robot(url, obs, m, lat, errors, replies, r) for r in range(clients)])

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {
        "clients": clients,
        "requests": len(lat),
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "errors": len(errors),
        "error_samples": errors[:3],
        "_replies": replies,
    }


def max_diff(policy: Policy, obs: list[dict], replies: dict[int, np.ndarray]) -> float:
    worst = 0.0
    for i, actions in replies.items():
        o = obs[i]
        want = policy.predict_action(
            {
                "images": {"corner2": o["observation/image"]},
                "state": o["observation/state"],
                "instruction": o["prompt"],
            }
        )
        worst = max(worst, float(np.abs(actions - want).max()))
    return worst


def overhead(url: str, policy: Policy, obs: list[dict], n: int) -> dict:
    from vlaforge.client import PolicyClient

    client = PolicyClient(url)
    client.connect()
    for o in obs[:10]:
        client.infer(o)
    wire, local = [], []
    for k in range(n):  # interleaved, so both see the same machine load
        o = obs[k % len(obs)]
        t0 = time.perf_counter()
        client.infer(o)
        wire.append(time.perf_counter() - t0)
        ours = {
            "images": {"corner2": o["observation/image"]},
            "state": o["observation/state"],
            "instruction": o["prompt"],
        }
        t0 = time.perf_counter()
        policy.predict_action(ours)
        local.append(time.perf_counter() - t0)
    client.close()
    w, p = np.median(wire) * 1000, np.median(local) * 1000
    return {
        "requests": n,
        "wire_p50_ms": round(float(w), 2),
        "in_process_p50_ms": round(float(p), 2),
        "overhead_ms": round(float(w - p), 2),
    }


def fuzz(ckpt: Path, policy: Policy, obs: list[dict], n: int) -> dict:
    from websockets.sync.client import connect

    srv = Server(ckpt, "--token", TOKEN, "--io-timeout-s", "2")
    counts = {
        "msgpack": {"error_reply": 0, "accepted": 0, "crash": 0},
        "json": {"error_reply": 0, "accepted": 0, "crash": 0},
    }
    counts["auth"] = {"refused": 0, "accepted": 0, "crash": 0}
    auth = {"Authorization": f"Api-Key {TOKEN}"}
    valid_json = {
        "image": obs[0]["observation/image"],
        "state": obs[0]["observation/state"],
        "instruction": "open",
    }
    t0 = time.perf_counter()
    for payload, must_fail in malformed_msgpack(obs[0], n, seed=11):
        c = counts["msgpack"]
        try:
            with connect(srv.url, additional_headers=auth, max_size=None, proxy=None, open_timeout=10) as ws:
                ws.recv(timeout=10)
                ws.send(payload)
                reply = ws.recv(timeout=30)
                if isinstance(reply, str):
                    c["error_reply"] += 1
                elif not must_fail and decode_msgpack(reply)["actions"].shape == (8, 4):
                    c["accepted"] += 1
                else:
                    c["crash"] += 1
        except Exception:
            c["crash"] += 1
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    for payload, must_fail in malformed_json(valid_json, n, seed=12):
        c = counts["json"]
        try:
            conn.request("POST", "/act", body=payload, headers={"Authorization": f"Bearer {TOKEN}"})
            r = conn.getresponse()
            body = r.read()
            if r.status == 200 and not must_fail:
                c["accepted"] += 1
            elif 400 <= r.status < 500 and "error" in json.loads(body):
                c["error_reply"] += 1
            else:
                c["crash"] += 1
            if r.getheader("Connection") == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        except Exception:
            c["crash"] += 1
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    rng = np.random.default_rng(13)
    bad_keys = [None, "", TOKEN[:-1], TOKEN + "x", "Bearer", "x" * 5000, TOKEN.upper()]
    for k in range(max(n // 10, len(bad_keys))):
        key = bad_keys[k % len(bad_keys)] if k < len(bad_keys) else rng.bytes(16).hex()
        c = counts["auth"]
        try:
            headers = {"Authorization": f"Api-Key {key}"} if key is not None else None
            with connect(srv.url, additional_headers=headers, proxy=None, open_timeout=10) as ws:
                ws.recv(timeout=10)
                c["accepted"] += 1
        except Exception as e:
            c["refused" if "401" in str(e) else "crash"] += 1
    seconds = time.perf_counter() - t0
    # Afterwards the server answers a valid request exactly.
    from vlaforge.client import PolicyClient

    o = obs[3]
    with PolicyClient(srv.url, token=TOKEN) as client:
        got = client.infer(o)["actions"]
    want = policy.predict_action(
        {
            "images": {"corner2": o["observation/image"]},
            "state": o["observation/state"],
            "instruction": o["prompt"],
        }
    )
    still = bool(srv.alive() and np.array_equal(got, want))
    shapes = costly(srv.port)
    srv.stop()
    total = sum(sum(c.values()) for c in counts.values())
    crashes = sum(c["crash"] for c in counts.values())
    return {
        "cases": total,
        "crashes": crashes,
        "per_protocol": counts,
        "seconds": round(seconds, 1),
        "still_answers_exactly": still,
        "costly": shapes,
    }


def costly(port: int | None = None) -> dict:
    """Each costly shape: decode time and peak memory here; the time to the server's error reply on `port`."""
    from websockets.sync.client import connect

    rows = {}
    for proto, cases, decode in (
        ("msgpack", costly_msgpack(), decode_msgpack),
        ("json", costly_json(), decode_json),
    ):
        for name, payload in cases.items():
            row: dict = {"bytes": len(payload)}
            for traced in (False, True):
                if traced:
                    tracemalloc.start()
                t0 = time.perf_counter()
                try:
                    decode(payload)
                    row["result"] = "accepted"
                except DecodeError as e:
                    row["result"] = str(e)[:80]
                if traced:
                    row["peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
                    tracemalloc.stop()
                else:
                    row["decode_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            if port is not None:
                t0 = time.perf_counter()
                try:
                    if proto == "msgpack":
                        auth = {"Authorization": f"Api-Key {TOKEN}"}
                        with connect(
                            f"ws://127.0.0.1:{port}", additional_headers=auth, max_size=None, proxy=None
                        ) as ws:
                            ws.recv(timeout=10)
                            ws.send(payload)
                            reply = ws.recv(timeout=120)
                            row["wire"] = "error reply" if isinstance(reply, str) else "actions"
                    else:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                        conn.request(
                            "POST", "/act", body=payload, headers={"Authorization": f"Bearer {TOKEN}"}
                        )
                        r = conn.getresponse()
                        r.read()
                        conn.close()
                        row["wire"] = f"HTTP {r.status}"
                except Exception as e:
                    row["wire"] = f"{type(e).__name__}"
                row["wire_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            rows[f"{proto}/{name}"] = row
    return rows


def print_costly(rows: dict) -> None:
    print(f"\n{'costly shape':<30}{'MB':>6}{'decode ms':>11}{'peak MiB':>10}{'wire ms':>9}  result")
    for name, r in rows.items():
        print(
            f"{name:<30}{r['bytes'] / 1e6:>6.2f}{r['decode_ms']:>11.1f}{r['peak_mib']:>10.1f}"
            f"{r.get('wire_ms', float('nan')):>9.1f}  {r['result'][:70]}"
        )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=1000, help="requests per client")
    ap.add_argument("--overhead-requests", type=int, default=300)
    ap.add_argument("--fuzz", type=int, default=2000, help="malformed messages per protocol")
    ap.add_argument("--quick", action="store_true", help="a small run (4 clients x 50, 200 fuzz cases)")
    ap.add_argument("--costly-only", action="store_true", help="only the costly shapes (decode and wire)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve.json"))
    a = ap.parse_args(argv)
    if a.quick:
        a.clients, a.requests, a.overhead_requests, a.fuzz = 4, 50, 50, 200
    torch.set_num_threads(1)
    obs = observations(64)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    }
    if a.costly_only:
        with tempfile.TemporaryDirectory() as tmp:
            srv = Server(make_checkpoint(Path(tmp)), "--token", TOKEN)
            try:
                results["costly"] = costly(srv.port)
            finally:
                srv.stop()
        print_costly(results["costly"])
        write_json(a.out, results)
        return results
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp))
        policy = Policy.from_pretrained(ckpt)
        rows = {}
        for name, flags in (
            ("batched", ["--max-batch", "8", "--max-wait-ms", "5"]),
            ("unbatched", ["--max-batch", "1"]),
        ):
            srv = Server(ckpt, *flags)
            try:
                r = load(srv.url, obs, a.clients, a.requests)
                if name == "unbatched":
                    results["overhead_batch1"] = overhead(srv.url, policy, obs, a.overhead_requests)
            finally:
                stats = srv.stop()
            r["max_abs_diff_vs_in_process"] = max_diff(policy, obs, r.pop("_replies"))
            r["server_said"] = stats.strip().splitlines()[-1] if stats.strip() else ""
            rows[name] = r
        results["load"] = rows
        results["fuzz"] = fuzz(ckpt, policy, obs, a.fuzz)

    print(
        f"\nload: {a.clients} clients x {a.requests} requests, tiny preset, loopback, server with 1 torch thread"
    )
    head = f"{'server':<42}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}{'max|diff|':>11}"
    print(head + "\n" + "-" * len(head))
    for name, flags in (("batched", "--max-batch 8 --max-wait-ms 5"), ("unbatched", "--max-batch 1")):
        r = rows[name]
        print(
            f"{name + ' (' + flags + ')':<42}"
            + f"{r['throughput_rps']:>8.1f}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}"
            f"{r['max_abs_diff_vs_in_process']:>11.1e}"
        )
    o = results["overhead_batch1"]
    print(
        f"\nwire overhead at batch 1 (one client, {o['requests']} requests, medians): round trip {o['wire_p50_ms']} ms "
        f"vs in-process predict_action {o['in_process_p50_ms']} ms -> {o['overhead_ms']} ms"
    )
    f = results["fuzz"]
    print(
        f"fuzz: {f['cases']} malformed messages / bad tokens in {f['seconds']} s, {f['crashes']} crashes, "
        f"server still answers exactly: {f['still_answers_exactly']}; {json.dumps(f['per_protocol'])}"
    )
    print_costly(f["costly"])
    out = Path(a.out)
    write_json(out, results)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
