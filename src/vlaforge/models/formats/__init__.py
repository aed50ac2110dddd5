"""Checkpoint formats, in one table.

Each format is one module with `detect(path)`, `read(path, dtype) -> Bundle` and `write(bundle, directory,
**options)`, and one row in `FORMATS`. `Policy.from_pretrained` reads through the first format that
detects the path; `Policy.save_pretrained(format=...)` and `vlaforge export --format` write through the
named one. LeRobot's pi0 / SmolVLA layout is `formats.lerobot`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlaforge.errors import InputError, did_you_mean
from vlaforge.format_specs import FORMAT_SPECS
from vlaforge.models.formats import lerobot as lerobot_format
from vlaforge.models.formats import openvla as openvla_format
from vlaforge.models.formats import vlaforge as vlaforge_format
from vlaforge.models.formats.base import Bundle, CheckpointFormat

# Order matters for detection: LeRobot's hub ids (lerobot/pi0, lerobot/smolvla_base) before OpenVLA's, which
# takes any other hub id.
FORMATS: dict[str, CheckpointFormat] = {
    f.name: f for f in (vlaforge_format.FORMAT, lerobot_format.FORMAT, openvla_format.FORMAT)
}
assert set(FORMATS) == set(FORMAT_SPECS), (
    "every format in vlaforge.format_specs.FORMAT_SPECS needs its module here"
)
DEFAULT_FORMAT = "vlaforge"  # reads what no format detects, so its errors say what a policy directory needs


def get_format(name: str) -> CheckpointFormat:
    """The format called `name`; a typo gets a "did you mean"."""
    if name in FORMATS:
        return FORMATS[name]
    raise InputError(
        f"unknown checkpoint format {name!r}{did_you_mean(name, FORMATS)} (known: {', '.join(FORMATS)})"
    )


def detect_format(path: str | Path) -> CheckpointFormat:
    """The first format that recognises `path` (vlaforge's when none does)."""
    for fmt in FORMATS.values():
        if fmt.detect(path):
            return fmt
    return FORMATS[DEFAULT_FORMAT]


def write_bundle(bundle: Bundle, directory: str | Path, format: str = DEFAULT_FORMAT, **options: Any) -> Path:
    """Writes `bundle` as `format` into `directory`, which is replaced whole.

    A symlink (e.g. RUN/last) is followed to the directory it names. Only a new path, an empty directory
    or a checkpoint a format recognises is replaced: anything else is refused, never deleted.
    """
    fmt = get_format(format)
    unknown = sorted(set(options) - set(fmt.write_options))
    if unknown:
        raise InputError(
            f"options {unknown} do not apply to format {fmt.name!r} (its options: {list(fmt.write_options) or 'none'})"
        )
    directory = Path(directory)
    if directory.is_symlink():
        directory = directory.resolve()
    if directory.exists():
        if not directory.is_dir():
            raise InputError(f"{directory} is a file; give a directory to write the checkpoint to")
        entries = sorted(p.name for p in directory.iterdir())
        if entries and not any(f.detect(directory) for f in FORMATS.values()):
            raise InputError(
                f"{directory} holds {len(entries)} entries ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}) "
                "and no checkpoint; a save replaces its directory whole: choose a new or empty directory"
            )
    return fmt.write(bundle, directory, **options)


def describe_formats() -> str:
    """One line per format, for `--help`."""
    return "; ".join(f"{f.name}: {f.doc}" for f in FORMATS.values())


__all__ = [
    "DEFAULT_FORMAT",
    "FORMATS",
    "Bundle",
    "CheckpointFormat",
    "describe_formats",
    "detect_format",
    "get_format",
    "write_bundle",
]
