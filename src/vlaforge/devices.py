"""`resolve_device`: a `--device` name checked against this machine, before anything is loaded or written.

Every command with `--device` goes through it (`vlaforge.cli` checks the flag before running the command),
so a missing GPU is one line ("no CUDA device ...") instead of torch's "Torch not compiled with CUDA enabled"
traceback from deep inside model loading. torch is imported only for names other than "cpu".
"""

from __future__ import annotations

from vlaforge.errors import InputError, did_you_mean

KINDS = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str) -> str:
    """The torch device for `name`: "auto" -> "cuda" when a GPU is visible, else "cpu"; "cpu", "cuda",
    "cuda:N" and "mps" are checked to exist.

    Raises:
        InputError: an unknown name, or a device this machine does not have.
    """
    name = str(name).strip().lower()
    kind, _, index = name.partition(":")
    if kind not in KINDS or (index and (kind != "cuda" or not index.isdigit())):
        raise InputError(
            f"--device {name!r} is not a device{did_you_mean(kind, KINDS)} (choose from {', '.join(KINDS)})"
        )
    if kind == "cpu":
        return "cpu"
    import torch

    if kind == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError("--device mps: no Apple GPU (MPS) is available here; use --device cpu")
        return "mps"
    if not torch.cuda.is_available():
        if kind == "auto":
            return "cpu"
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise InputError(f"--device {name}: no CUDA device is available ({why}); use --device cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        raise InputError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0 ...)"
        )
    return "cuda" if kind == "auto" else name


__all__ = ["KINDS", "resolve_device"]
