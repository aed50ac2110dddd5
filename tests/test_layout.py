"""The policy directory is parsed in one place: only `vlaforge.policy_files` reads a policy's config.json
(the model loader, evaluation and training all go through `read_policy_dir`)."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "vlaforge"
NAMES = re.compile(r"CONFIG_FILE|[\"']config\.json[\"']")
READS = re.compile(r"read_text|json\.load|open\(|_read_json\(")


def reads_config(line: str) -> bool:
    """A line that names a policy config file and reads something."""
    return bool(NAMES.search(line) and READS.search(line))


def test_only_policy_files_reads_a_policy_config():
    readers = sorted(
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if any(reads_config(line) for line in p.read_text().splitlines())
    )
    assert readers == ["policy_files.py"], readers


def test_the_pattern_catches_a_direct_read():
    assert reads_config('cfg = json.loads((path / "config.json").read_text())')
    assert reads_config("config = _read_json(root / CONFIG_FILE)")
    assert not reads_config("(directory / CONFIG_FILE).write_text(json.dumps(self.config))")
    assert not reads_config('ckpt.write_json(run / "config.json", cfg.to_dict())')


MAX_LINES = 800


def test_no_source_file_is_over_800_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by concern (over {MAX_LINES} lines): {long}"
