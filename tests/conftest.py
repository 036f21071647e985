"""Session-wide real servers. A missing binary makes the fixture fail (never skip): run `make setup`.

Under pytest-xdist (`make test`, `make test-fast`: ``-n 3 --dist loadgroup``) fixtures are per
worker, so the tests of one file of tests/integration go to one worker together
(``tests.support.xdist_groups``, the scheduler for loadgroup) and start its servers once; the soak
tests are handed out first, so they overlap everything else.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess
from tests.support.service_pool import ServicePool
from tests.support.tls import TlsFiles, readable_tls_files
from tests.support.xdist_groups import pytest_xdist_make_scheduler
from vectorizer_service.core.settings import Settings

if TYPE_CHECKING:  # torch, transformers and the Weaviate client load in the fixtures that need them: every
    # pytest process reads this file first (the xdist controller too, before it starts the workers)
    from tests.support.weaviate import WeaviateServer
    from vectorizer_service.model.served_models import Models

__all__ = ["pytest_xdist_make_scheduler"]  # a hook of this conftest: loadgroup's scheduler

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers share the cores: one torch thread per model (each service's model process and the
    # in-process models) instead of each taking every core and fighting the other worker's.
    os.environ.setdefault("QVL_TORCH_THREADS", "1")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # The longest first: xdist hands out work in collection order (every worker sorts alike).
        items.sort(key=lambda item: item.get_closest_marker("soak") is None)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def weaviate_server() -> Iterator[WeaviateServer]:
    """A plain Weaviate with no modules enabled (vectors are supplied by the caller)."""
    from tests.support.weaviate import WeaviateServer

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
    from vectorizer_service.model.served_models import load_models

    if tiny_settings.torch_threads is not None:  # QVL_TORCH_THREADS, as the model process reads it
        import torch

        torch.set_num_threads(tiny_settings.torch_threads)
    return load_models(tiny_settings)


@pytest.fixture(scope="session")
def service_pool() -> Iterator[ServicePool]:
    """Real services shared by the tests that merely need one with given settings."""
    pool = ServicePool()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="session")
def service(service_pool: ServicePool) -> ServiceProcess:
    """`qvl serve` on the tiny fixture (both models), shared by the tests that only call it."""
    return service_pool.get()


@pytest.fixture(scope="session")
def tls_files() -> Iterator[TlsFiles]:
    """A self-signed certificate for localhost, readable by the database server's user."""
    folder = Path(tempfile.mkdtemp(prefix="qvl-tls-"))
    try:
        yield readable_tls_files(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_service(service_pool: ServicePool, tls_files: TlsFiles) -> ServiceProcess:
    """`qvl serve` with TLS on both listeners (``tls_files``), shared like ``service``."""
    return service_pool.get(env=tls_files.env)
