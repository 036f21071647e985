"""Session-wide real servers. A missing binary makes the fixture fail (never skip): run `make setup`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess
from tests.support.weaviate import WeaviateServer
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.served_models import Models, load_models


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def weaviate_server() -> Iterator[WeaviateServer]:
    """A plain Weaviate with no modules enabled (vectors are supplied by the caller)."""
    with WeaviateServer() as server:
        yield server


FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-qwen3-vl"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_settings() -> Settings:
    return Settings(embedding_model=str(TINY), reranker_model=str(TINY), device="cpu")


@pytest.fixture(scope="session")
def models(tiny_settings: Settings) -> Models:
    """The real transformers Qwen3-VL classes on the tiny fixture checkpoint (random weights)."""
    return load_models(tiny_settings)


@pytest.fixture(scope="session")
def service() -> Iterator[ServiceProcess]:
    """`qvl serve` on the tiny fixture (both models), shared by the tests that only call it."""
    with ServiceProcess() as proc:
        yield proc
