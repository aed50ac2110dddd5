"""The settings of `vlaforge ui` (torch- and FastAPI-free, so `vlaforge ui --help` is instant)."""

from __future__ import annotations

from dataclasses import dataclass

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(kw_only=True)
class UIConfig:
    """What `vlaforge ui` serves (one field per flag).

    Attributes:
        root: the directory whose datasets, evaluations (eval_info.json) and training runs (metrics.jsonl)
            are listed, searched recursively; teleop recordings and jobs write under it.
        host: the address to bind; anything but loopback (127.0.0.1, localhost, ::1) needs --token.
        port: the TCP port.
        token: the access token every request must carry (?token= or the X-Token header); required when
            --host is not loopback, optional otherwise.
    """

    root: str = "."
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
