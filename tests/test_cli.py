import pytest

from vlaforge.cli import main
from vlaforge.errors import InputError


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VLAFORGE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["dataset", "info", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "vlaforge dataset: error:" in err and "is not a dataset vlaforge can" in err
    assert "Traceback" not in err
    monkeypatch.setenv("VLAFORGE_DEBUG", "1")
    with pytest.raises(InputError, match="is not a dataset vlaforge can"):
        main(["dataset", "info", str(tmp_path)])


def test_cli_keeps_the_traceback_of_internal_errors(tmp_path, monkeypatch, capsys):
    """Only vlaforge's InputError is bad input; an internal RuntimeError or KeyError is not reworded."""
    import vlaforge.data.synth as synth

    monkeypatch.delenv("VLAFORGE_DEBUG", raising=False)
    for exc in (RuntimeError("CUDA out of memory"), KeyError("internal bug")):

        def boom(cfg, exc=exc):
            raise exc

        monkeypatch.setattr(synth, "write_synthetic", boom)
        with pytest.raises(type(exc)):
            main(["dataset", "synth", "--out", str(tmp_path / "ds")])
        assert "error:" not in capsys.readouterr().err


def test_every_config_field_is_a_documented_flag():
    """Each command's flags are exactly its config's fields, with the field's doc and default."""
    import dataclasses

    from vlaforge.cli import CONFIG_COMMANDS, _load, build_parser
    from vlaforge.config import field_docs

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "cmd").choices
    for name, (_, config_path, _) in CONFIG_COMMANDS.items():
        cls = _load(config_path)
        docs = field_docs(cls)
        actions = {a.dest: a for a in subparsers[name]._actions if a.dest != "help"}
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        assert set(actions) == set(fields), name
        for fname, f in fields.items():
            assert docs[fname] and docs[fname].replace("%", "%%") in actions[fname].help, (name, fname)
            if f.default is not dataclasses.MISSING:
                assert actions[fname].default == f.default, (name, fname)


def test_train_flags_build_the_same_config_as_the_library(tmp_path):
    from vlaforge.cli import build_parser
    from vlaforge.config import config_from_args
    from vlaforge.train.loop import TrainConfig

    args = build_parser("train").parse_args(
        ["train", "--dataset", "d", "--out", "o", "--head", "chunk", "--head-options", "bidirectional=false"]
        + ["--lora-rank", "32", "--freeze", "frozen-vision", "--no-resume"]
    )
    cfg = config_from_args(TrainConfig, args)
    want = TrainConfig(
        dataset="d",
        out="o",
        head="chunk",
        head_options={"bidirectional": False},
        lora_rank=32,
        freeze="frozen-vision",
    )
    assert cfg == want
    assert cfg.head_options == {"bidirectional": False}  # converted from the string by the registry


def test_transformers_version_is_checked():
    from vlaforge.models import check_transformers_version

    check_transformers_version("5.23.0")
    check_transformers_version("5.0.0.dev0")
    for old in ("4.57.1", "4.50.0", "6.0.0"):
        with pytest.raises(InputError, match=r"transformers >= 5.0, < 6.0"):
            check_transformers_version(old)


def test_tokenizer_train_command_writes_a_fast_tokenizer(tmp_path, capsys):
    import json

    from vlaforge.actions.fast import FASTTokenizer

    main(["dataset", "synth", "--out", str(tmp_path / "d"), "--episodes", "3", "--length", "20"])
    main(
        [
            "tokenizer",
            "train",
            "--dataset",
            str(tmp_path / "d"),
            "--out",
            str(tmp_path / "tok"),
            "--vocab-size",
            "256",
        ]
    )
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the synth line
    tok = FASTTokenizer.load(tmp_path / "tok")
    assert report["chunks"] > 0 and report["naive_tokens_per_chunk"] == 10 * report["action_dim"]
    assert tok.vocab_size == report["vocab_size"] <= 256


def _vlaforge(*args, env=None, timeout=120):
    """The real command in a subprocess: (exit status, stdout, stderr)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("VLAFORGE_DEBUG", None)
    r = subprocess.run(
        [sys.executable, "-m", "vlaforge.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["train", "--dataset", "d", "--out", "o", "--head", "chunks"], "did you mean 'chunk'?"),
        (["dataset", "convert", "src", "--to", "RLDS", "--out", "o"], "did you mean 'rlds'?"),
        (["train", "--dataset", "d", "--out", "o", "--recipe", "mt5"], "did you mean 'mt50'?"),
        (["export", "p", "--out", "o", "--format", "OpenVLA"], "did you mean 'openvla'?"),
        (["trian"], "did you mean 'train'?"),
    ],
)
def test_a_choice_typo_is_one_line_with_a_suggestion(args, hint, tmp_path):
    code, _, err = _vlaforge(*args)
    assert code == 2 and hint in err, err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err, err


def test_version_and_help_do_not_import_torch():
    import subprocess
    import sys

    code, out, _ = _vlaforge("--version")
    assert code == 0 and out.startswith("vlaforge ") and "torch" in out
    code, out, _ = _vlaforge("--help")
    assert code == 0 and "train" in out and "serve" in out
    check = (
        "import sys, contextlib, io\n"
        "import vlaforge.cli as c\n"
        "for cmd in ['', 'collect', 'dataset', 'train', 'eval', 'serve', 'export', 'tokenizer', 'demo', 'latent', 'idm', 'rl', 'dagger']:\n"
        "    argv = [cmd, '--help'] if cmd else ['--help']\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        c.main(argv)\n"
        "    assert 'torch' not in sys.modules, f'{cmd} --help imported torch'\n"
        "    assert 'transformers' not in sys.modules, f'{cmd} --help imported transformers'\n"
    )
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_a_missing_gpu_is_one_line_before_anything_is_written(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for args in (
        ["serve", "--policy", str(tmp_path / "p"), "--device", "cuda"],
        ["train", "--dataset", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--device", "cuda"],
        ["demo", "--out", str(tmp_path / "demo"), "--device", "cuda"],
    ):
        code, _, err = _vlaforge(*args)
        assert code == 2 and "--device cuda: no CUDA device is available" in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_third_party_warnings_are_printed_once_after_the_output():
    import io
    import warnings

    from vlaforge.warnlog import deferred_warnings

    stream = io.StringIO()
    with deferred_warnings(stream):
        for _ in range(3):  # a library warning on every batch
            warnings.warn_explicit("old api", FutureWarning, "/x/site-packages/transformers/fake.py", 1)
        stream.write("progress done\n")
    lines = stream.getvalue().splitlines()
    assert lines == [
        "progress done",
        "warning (shown once, raised in transformers): FutureWarning: old api",
    ], lines
