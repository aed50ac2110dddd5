"""How long `vlaforge --help` and `vlaforge train --help` take, as whole processes, beside `python -c pass`.

    .venv/bin/python bench/bench_cli.py [--runs 10] [--src DIR]

Each command runs `--runs` times in a fresh interpreter (`python -m vlaforge.cli ...`, so the source tree
on PYTHONPATH is the one measured; `--src` measures another checkout's `src/`); the table gives the median
and the fastest run in seconds. `python -c pass` is the interpreter's own start-up on this machine, the
floor under every command. Writes bench/results/cli.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vlaforge.atomic import write_json

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "vlaforge --help": ["-m", "vlaforge.cli", "--help"],
    "vlaforge train --help": ["-m", "vlaforge.cli", "train", "--help"],
}


def time_command(args: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """Wall-clock seconds of `runs` runs of `python ARGS` (each must exit 0)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cli.json"))
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": a.src, "OMP_NUM_THREADS": "1"}
    rows = []
    for name, args in COMMANDS.items():
        times = time_command(args, a.runs, env)
        rows.append(
            {"command": name, "median_s": statistics.median(times), "min_s": min(times), "runs": a.runs}
        )
    print(f"{'command':<24} {'median s':>9} {'min s':>7}")
    for r in rows:
        print(f"{r['command']:<24} {r['median_s']:>9.3f} {r['min_s']:>7.3f}")
    report = {"src": a.src, "python": platform.python_version(), "machine": platform.machine(), "rows": rows}
    out = Path(a.out)
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
