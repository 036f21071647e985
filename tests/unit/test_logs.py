"""qvl's log lines (vectorizer_service/core/logs.py), as `qvl serve` writes them for uvicorn's records."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import uvicorn

from vectorizer_service.core.logs import setup_logging


@pytest.fixture
def root_logging() -> Iterator[None]:
    """setup_logging replaces the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def uvicorn_says_where_it_listens() -> None:
    """What `qvl serve`'s HTTP listener logs when it binds (uvicorn's own code, log_config=None as
    server.py configures it): the record carries an ANSI-coloured copy in ``color_message``."""
    config = uvicorn.Config(lambda scope, receive, send: None, host="127.0.0.1", port=0, log_config=None)
    config.bind_socket().close()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_uvicorn_records_carry_no_ansi_color_message(fmt: str, root_logging: None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", fmt)
    uvicorn_says_where_it_listens()
    [line] = capsys.readouterr().err.splitlines()
    assert "Uvicorn running on http://127.0.0.1:" in line
    assert "color_message" not in line and "\x1b[" not in line and "\\u001b" not in line, line
    if fmt == "json":
        assert json.loads(line)["logger"] == "uvicorn.error"


def test_other_extras_stay(root_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    logging.getLogger("qvl.test").info("installed", extra={"version": 10})
    assert json.loads(capsys.readouterr().err)["version"] == 10
