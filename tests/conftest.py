"""Session-wide real servers. A missing binary makes the fixture fail (never skip): run `make setup`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresServer
from tests.support.weaviate import WeaviateServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def weaviate_server() -> Iterator[WeaviateServer]:
    """A plain Weaviate with no modules enabled (vectors are supplied by the caller)."""
    with WeaviateServer() as server:
        yield server
