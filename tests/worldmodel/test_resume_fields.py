"""A run started before a setting existed resumes under that setting's default, and only under it.

A resumable command saves its config beside the run and compares it with the one it resumes under; a
field added to vlaforge since is missing from the saved file, and the run effectively used its default
(train and dagger: tests/train, tests/dagger; rl compares only the settings given on the command line).
"""

from __future__ import annotations

import pytest

from vlaforge.errors import InputError
from vlaforge.worldmodel.config import WorldModelConfig
from vlaforge.worldmodel.train import _check_continues


def test_worldmodel_resume_fills_a_missing_field_with_its_default(tmp_path):
    cfg = WorldModelConfig(dataset="d", out=str(tmp_path))
    saved = cfg.to_dict()
    del saved["context"]  # a run from before `context` existed
    _check_continues(cfg, saved, tmp_path)  # it used the default: continues
    with pytest.raises(InputError, match=r"context: 4 -> 3"):
        _check_continues(WorldModelConfig(dataset="d", out=str(tmp_path), context=3), saved, tmp_path)
