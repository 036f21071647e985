"""The README stays true to the code: every setting and every subcommand is documented."""

from __future__ import annotations

from pathlib import Path

from vectorizer_service.cli import build_parser
from vectorizer_service.settings import Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [f"QVL_{name.upper()}" for name in Settings.model_fields if f"`QVL_{name.upper()}`" not in README]
    assert not missing


def test_every_subcommand_is_in_the_readme() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"qvl {name}" in README, name
    assert "make demo" in README and "make test" in README
