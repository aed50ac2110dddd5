"""Shared checks for the evaluation tests."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from vlaforge.envs.metaworld import configure_rendering

configure_rendering()  # the tests render; pick the GL backend before anything imports mujoco


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse_report(path: Path) -> dict:
    """Parses report.html and checks it needs nothing outside itself.

    Returns the tags, the visible text and the decoded video payloads.
    """
    import av

    page = Path(path).read_text(encoding="utf-8")
    p = _Collector()
    p.feed(page)
    for tag, attrs in p.tags:
        for key in ("src", "href", "data", "poster", "srcset"):
            value = attrs.get(key)
            if value is None:
                continue
            assert not value.startswith(("http:", "https:", "//", "file:")), (
                f"<{tag} {key}={value[:60]}> fetches"
            )
            if tag in ("video", "source", "img", "script", "link", "iframe"):
                assert value.startswith("data:"), f"<{tag} {key}={value[:60]}> is not embedded"
    assert not any(t == "script" and "src" in a for t, a in p.tags)
    assert not any(t == "link" and a.get("rel") == "stylesheet" for t, a in p.tags)
    videos = []
    for tag, attrs in p.tags:
        if tag == "video":
            assert {"controls", "autoplay", "muted", "loop"} <= set(attrs), attrs.keys()
            head, payload = attrs["src"].split(",", 1)
            assert head == "data:video/mp4;base64"
            data = base64.b64decode(payload)
            with av.open(io.BytesIO(data)) as c:
                stream = c.streams.video[0]
                n = sum(1 for _ in c.decode(stream))
                videos.append(
                    {"codec": stream.codec_context.name, "frames": n, "pix_fmt": stream.format.name}
                )
    return {"tags": p.tags, "text": " ".join(p.text), "videos": videos, "html": page}


@pytest.fixture
def report_parser():
    return parse_report


def make_stats(action_dim: int = 4, state_dim: int = 4):
    """Plausible statistics for a policy that has not seen data (actions in [-1, 1], gripper unmasked)."""
    from vlaforge.types import FeatureStats, NormStats

    def fs(d, mask=None):
        return FeatureStats(
            min=-np.ones(d), max=np.ones(d), mean=np.zeros(d), std=np.full(d, 0.5),
            q01=np.full(d, -0.9), q99=np.full(d, 0.9), mask=mask,
        )  # fmt: skip

    feats = {"action": fs(action_dim, [True] * (action_dim - 1) + [False])}
    if state_dim:
        feats["observation.state"] = fs(state_dim)
    return NormStats(feats)


def save_tiny_policy(directory: Path, embodiment, **overrides) -> Path:
    """An untrained tiny chunk-head policy for `embodiment` (`overrides`: preset fields such as history),
    saved as a checkpoint directory."""
    import torch

    from vlaforge.models.policy import Policy

    torch.manual_seed(0)
    policy = Policy.from_preset(
        "tiny", "chunk", embodiment, make_stats(embodiment.action_dim, embodiment.state_dim), **overrides
    )
    policy.save_pretrained(directory)
    return Path(directory)


@pytest.fixture
def policy_stats():
    """`policy_stats(action_dim, state_dim) -> NormStats` (`make_stats`)."""
    return make_stats


@pytest.fixture
def tiny_policy():
    """`tiny_policy(directory, embodiment) -> Path`: saves an untrained tiny policy checkpoint."""
    return save_tiny_policy
