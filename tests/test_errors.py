"""The hints bad input gets: "did you mean", devices, and messages in the command line's words."""

import os
import subprocess
import sys

import pytest

from vlaforge.devices import resolve_device
from vlaforge.errors import InputError, closest, did_you_mean


def test_closest_prefers_a_case_insensitive_match():
    assert closest("RLDS", ["rlds", "lerobot"]) == "rlds"
    assert closest("chunks", ["tokens", "chunk", "diffusion"]) == "chunk"
    assert closest("Chunks", ["tokens", "chunk"]) == "chunk"
    assert closest("zzz", ["tokens", "chunk"]) is None
    assert did_you_mean("tiy", ["tiny", "openvla-7b"]) == "; did you mean 'tiny'?"
    assert did_you_mean("zzz", ["tiny"]) == ""


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(InputError, match="did you mean 'cuda'"):
        resolve_device("cdua")
    with pytest.raises(InputError, match="not a device"):
        resolve_device("cpu:1")


def test_an_existing_output_is_reported_in_flags(tmp_path):
    """The command line's message names --overwrite first; Python's keyword comes second."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("VLAFORGE_DEBUG", None)
    cmd = [
        sys.executable,
        "-m",
        "vlaforge.cli",
        "dataset",
        "synth",
        "--out",
        str(tmp_path / "ds"),
        "--episodes",
        "1",
    ]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "already exists; use --overwrite to replace it (overwrite=True from Python)" in r.stderr
