"""Fixtures of the serving tests (the helpers live in serve_helpers.py)."""

from __future__ import annotations

import pytest
import torch
from serve_helpers import make_policy

from vlaforge.serve.server import ServeConfig, ServerThread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # One intra-op thread (as the model tests): on a busy 2-core machine a second one only spin-waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policy():
    """The tiny chunk-head policy (one camera, a state of 6, 4-D actions, chunks of 8)."""
    return make_policy()


@pytest.fixture(scope="module")
def server(policy):
    """A server of `policy` on a free loopback port, no token."""
    with ServerThread(policy, ServeConfig(policy="tiny", port=0, max_wait_ms=20)) as s:
        yield s
