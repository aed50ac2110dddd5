"""Evaluation does not depend on training: `vlaforge.demo`, above both, is what drives the two."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import vlaforge.eval

EVAL_DIR = Path(vlaforge.eval.__file__).parent


def test_importing_evaluation_loads_no_training_module():
    code = (
        "import json, sys\n"
        "import vlaforge.eval.run, vlaforge.eval.rollout, vlaforge.eval.baselines, vlaforge.eval.report\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('vlaforge'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "vlaforge.eval.run" in loaded and "vlaforge.eval.rollout" in loaded  # the check saw them
    assert [m for m in loaded if m == "vlaforge.train" or m.startswith("vlaforge.train.")] == []
    assert "vlaforge.demo" not in loaded


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_evaluation_module_imports_training_even_lazily():
    """Function-level imports count too (a lazy `from vlaforge.train...` inside a function is a dependency)."""
    files = sorted(EVAL_DIR.glob("*.py"))
    assert {"run.py", "rollout.py", "baselines.py"} <= {f.name for f in files}
    offenders = {
        f.name: sorted(m for m in _imported_modules(f) if m.startswith(("vlaforge.train", "vlaforge.demo")))
        for f in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}
