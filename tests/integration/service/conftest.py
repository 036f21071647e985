"""Fixtures of the service tests that start their own service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.service.dialect_support import JPEG, PNG, start_service
from tests.support.service import ServiceProcess


@pytest.fixture(scope="session")
def dialect_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the dialect service may read media URLs from (file://), with two images in it."""
    folder = tmp_path_factory.mktemp("dialect-media")
    (folder / "a.png").write_bytes(PNG)
    (folder / "b.jpg").write_bytes(JPEG)
    return folder


@pytest.fixture(scope="session")
def dialect_service(dialect_media: Path) -> Iterator[ServiceProcess]:
    """`qvl serve` behind a token, with profiles, at most 16 items a request, file URLs allowed
    under ``dialect_media``."""
    yield from start_service(dialect_media)
