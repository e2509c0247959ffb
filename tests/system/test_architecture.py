"""The import contract in pyproject.toml holds: imports point down, from the commands and
blueprints through what joins the capabilities, each capability above the ones it uses, to
the ground floor and the models; the portal and the API import nothing of each other."""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]


def test_imports_point_down(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    status = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert status == 0, report
    assert "1 kept, 0 broken" in report
