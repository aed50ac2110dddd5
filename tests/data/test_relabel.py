"""The episode choice shared by `idm label` and `latent label`, and the CLI groups built from configs."""

from __future__ import annotations

import argparse

import pytest

from vlaforge.cli_group import ConfigCommand, add_group
from vlaforge.data.relabel import parse_episodes
from vlaforge.errors import InputError
from vlaforge.idm.config import parse_episodes as idm_parse
from vlaforge.latent.config import LabelConfig
from vlaforge.latent.config import parse_episodes as latent_parse


def test_episode_forms(tmp_path):
    assert idm_parse is parse_episodes and latent_parse is parse_episodes
    assert parse_episodes(None, 3) == [0, 1, 2] and parse_episodes(" ", 2) == [0, 1]
    assert parse_episodes("2:", 5) == [2, 3, 4] and parse_episodes(":2", 5) == [0, 1]
    assert parse_episodes("4,1,1", 5) == [1, 4]
    f = tmp_path / "eps.txt"
    f.write_text("3\n0,2\n")
    assert parse_episodes(f"@{f}", 4) == [0, 2, 3]


@pytest.mark.parametrize(
    ("spec", "message"),
    [("1-3", "give A:B"), ("0,7", r"\[7\] out of range \(the dataset has 4"), ("3:3", "no episode"),
     ("@/nowhere/eps.txt", "no file /nowhere/eps.txt")],
)  # fmt: skip
def test_episode_errors_say_what_was_wrong(spec, message):
    with pytest.raises(InputError, match=message):
        parse_episodes(spec, 4)


def test_group_builds_config_commands_and_runs_them(monkeypatch):
    seen = []
    monkeypatch.setattr("vlaforge.cli_group.load", lambda path: lambda cfg: seen.append((path, cfg)))
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    commands = {"label": ConfigCommand("label", LabelConfig, "pkg.mod:fn", positional=("src",))}
    assert add_group(sub, "grp", "a group", False, commands.copy) is None
    p = argparse.ArgumentParser()
    gsub = add_group(p.add_subparsers(dest="cmd"), "grp", "a group", True, commands.copy)
    assert gsub is not None
    a = p.parse_args(["grp", "label", "SRC", "--lam", "L", "--out", "O", "--episodes", "1:3"])
    assert a.grp_cmd == "label"
    a.func(a)
    ((path, cfg),) = seen
    assert path == "pkg.mod:fn" and (cfg.src, cfg.lam, cfg.out, cfg.episodes) == ("SRC", "L", "O", "1:3")
