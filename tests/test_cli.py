import pytest

from vlaforge.cli import main


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VLAFORGE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["dataset", "info", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "vlaforge dataset: error:" in err and "meta/info.json is missing" in err
    assert "Traceback" not in err
    monkeypatch.setenv("VLAFORGE_DEBUG", "1")
    with pytest.raises(ValueError, match="info.json is missing"):
        main(["dataset", "info", str(tmp_path)])
