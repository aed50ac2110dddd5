"""Marks the tests that must run alone: `make test` runs the rest in two worker processes (pytest-xdist),
then these one after another, on an otherwise idle machine. The tests marked slow are collected first, so
that the two processes start on them and share the short ones at the end, rather than one process running
a minutes-long test while the other has nothing left."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# Property tests check values, not speed: hypothesis's per-example deadline (200 ms) fails an example that
# a busy machine (two test processes on two cores) slowed down, and a test that passes when run again.
settings.register_profile("vlaforge", deadline=None)
settings.load_profile("vlaforge")

HERE = Path(__file__).resolve().parent
# Node-id prefixes (relative to tests/) of the tests that time themselves or count the busy cores: beside
# another test process their limits would measure that process.
SERIAL = (
    "serve/",  # latency limits, a client that resumes after a lapse of a set length
    "test_ui_browser.py",  # a real browser waiting on pages and videos
    "test_teleop.py",  # key presses through a pseudo-terminal at the control rate
    "train/test_runtime.py::test_default_threads",  # threads sized to the cores other processes keep busy
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        node = f"{item.path.resolve().relative_to(HERE).as_posix()}::{item.name}"
        if node.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise
