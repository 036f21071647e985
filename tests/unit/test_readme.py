"""The README stays true to the code: the settings table and every subcommand."""

from __future__ import annotations

from pathlib import Path

from qvl_cli.main import build_parser
from vectorizer_service.core.settings import settings_markdown

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_the_settings_table_is_current() -> None:
    assert settings_markdown() in README, "regenerate it: python -m vectorizer_service.core.settings"


def test_every_subcommand_is_in_the_readme() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"qvl {name}" in README, name
    assert "make demo" in README and "make test" in README
