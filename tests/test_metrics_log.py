"""metrics.jsonl, the log every training command appends to: torn lines are not rows, a resume keeps the
rows up to its checkpoint."""

import json

from vlaforge import metrics_log


def test_rows_skip_torn_lines_and_keep_only_rewrites(tmp_path):
    path = tmp_path / metrics_log.FILE
    assert metrics_log.read(path) == []
    metrics_log.keep_only(path, lambda r: True)  # no file: nothing to do
    assert not path.exists()
    for step in (1, 2, 3):
        metrics_log.append(path, {"step": step, "loss": 1.0 / step})
    with path.open("a") as f:
        f.write('\n[1, 2]\n{"step": 4, "lo')  # a blank line, a non-object, a line cut short
    assert [r["step"] for r in metrics_log.read(path)] == [1, 2, 3]
    metrics_log.keep_only(path, lambda r: r["step"] <= 2)
    assert [json.loads(x) for x in path.read_text().splitlines()] == [
        {"step": 1, "loss": 1.0},
        {"step": 2, "loss": 0.5},
    ]
    metrics_log.append(path, {"step": 3})
    assert [r["step"] for r in metrics_log.read(path)] == [1, 2, 3]
    inode = path.stat().st_ino
    metrics_log.keep_only(path, lambda r: True)  # nothing to drop: the file is left as it is
    assert path.stat().st_ino == inode
