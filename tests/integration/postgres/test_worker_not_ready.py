"""Issue 19 finding 3: the worker tells "the service was not ready for this row" from the row's own
failure by the service's typed reason (ItemError.reason), never by the words of its message.

A path holding "is not running" (the words of the service's old not-ready message) outside the
allowed roots is bad input: the row fails with its attempt counted, and the worker never pauses.
Real Postgres, the real service (file URIs allowed under one root), the real worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.postgres.installer import install
from tests.integration.postgres.conftest import new_database, running, wait_until
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]

WORDS = "uploads/is not running.png"  # relative: the service reads it from its own folder, outside the root


@pytest.fixture(scope="module")
def uri_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The service with file URIs allowed under one root (the finding's setup)."""
    root = tmp_path_factory.mktemp("allowed-media")
    with ServiceProcess(env={"QVL_ALLOW_URI_SCHEMES": "file", "QVL_ALLOW_URI_ROOTS": str(root)}) as svc:
        yield svc


def test_a_path_with_the_not_ready_words_fails_its_row_and_never_pauses_the_worker(
        pg_server: PostgresServer, uri_service: ServiceProcess, tmp_path: Path) -> None:
    dsn = new_database(pg_server, "not_ready_words")
    install(dsn, service_url=uri_service.http_url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE pics (id int PRIMARY KEY, caption text, image text)")
        created = conn.execute("SELECT qvl.create_vectorizer('pics', text_columns => ARRAY['caption'], "
                               "image_columns => ARRAY['image'], dimensions => 32)").fetchone()
        assert created is not None
        queue = f"qvl.queue_{int(created[0])}"
        conn.execute("INSERT INTO pics VALUES (1, 'a harbour at dusk', NULL), (2, 'an upload', %s)", (WORDS,))

        def settled() -> bool:
            failed = conn.execute("SELECT count(*) FROM qvl.failed_items('pics')").fetchone()
            return failed is not None and failed[0] == 1

        with running(dsn, uri_service.grpc_target, max_attempts=3) as worker:
            try:
                wait_until(settled, timeout=30, every=0.1)
            except TimeoutError:
                state = conn.execute("SELECT state, reason FROM qvl.worker_status").fetchall()
                queued = conn.execute(f"SELECT id, attempts FROM {queue}").fetchall()
                batches = sum(c.batches for c in worker.counters().values())
                pytest.fail(f"row 2 was never failed; worker status {state}, queued {queued}, {batches} batches")
            time.sleep(1.0)  # a paused worker would say so by now
            statuses: list[tuple[Any, ...]] = conn.execute("SELECT state, reason FROM qvl.worker_status").fetchall()
            batches = sum(c.batches for c in worker.counters().values())
        [(pk, error, code, attempts)] = conn.execute(
            "SELECT pk, error, code, attempts FROM qvl.failed_items('pics')").fetchall()
        assert (pk, code, attempts) == ("2", "INVALID_ARGUMENT", 1)
        assert "outside the allowed roots" in error and "row 2 of" in error, error
        assert statuses and all(state == "running" for state, _ in statuses), statuses
        assert batches <= 3, f"{batches} batches for two rows"  # no claim-and-release loop
        row = conn.execute("SELECT embedding IS NOT NULL FROM pics WHERE id = 1").fetchone()
        assert row == (True,)
        assert conn.execute("SELECT count(*) FROM pics WHERE id = 2 AND embedding IS NOT NULL").fetchone() == (0,)
