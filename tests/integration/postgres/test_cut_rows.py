"""Rows whose text the service cut (issue 24.3): a vectorizer without text chunking embeds text past
QVL_EMBED_MAX_LENGTH cut at the end, and its status says how many of its rows are stored cut, so the
operator learns it (the remedy, text chunking, is in docs/postgres.md)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from connectors.postgres.installer import install
from tests.integration.postgres.conftest import drain, new_database
from tests.support.cli import run_qvl
from tests.support.postgres import PostgresServer
from tests.support.service_pool import ServicePool

pytestmark = [pytest.mark.postgres, pytest.mark.service]

MAX = 256  # the service's QVL_EMBED_MAX_LENGTH here: the tiny tokenizer is byte-level, ~150 bytes of text
LONG = "lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 12  # ~700 tokens: cut
SHORT = "a short note"


def cut(conn: psycopg.Connection[Any]) -> Any:
    row = conn.execute("SELECT cut FROM qvl.vectorizer_status WHERE name = 'notes'").fetchone()
    assert row is not None
    return row[0]


def test_rows_the_service_cut_are_counted_in_the_status(pg_server: PostgresServer, service_pool: ServicePool,
                                                        request: pytest.FixtureRequest) -> None:
    svc = service_pool.get(env={"QVL_EMBED_MAX_LENGTH": str(MAX)})
    dsn = new_database(pg_server, request.node.name)
    install(dsn, service_url=svc.http_url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => ARRAY['body'])")
        conn.execute("INSERT INTO notes VALUES (1, %s), (2, %s), (3, %s), (4, %s)", (SHORT, LONG, LONG, SHORT))
        worker = drain(dsn, svc.grpc_target)
        assert conn.execute("SELECT count(*) FROM notes WHERE embedding IS NOT NULL").fetchone() == (4,)
        assert cut(conn) == 2
        assert worker.counters()["notes"].cut == 2

        done = run_qvl("pg", "status", "--dsn", dsn)
        assert done.returncode == 0, done.stderr
        header, line = done.stdout.decode().splitlines()
        assert dict(zip(header.split("\t"), line.split("\t"), strict=True))["cut"] == "2"

        # Embedded again, the same row counts once; a row shortened counts no more.
        conn.execute("UPDATE notes SET body = body || ' again' WHERE id = 2")
        conn.execute("UPDATE notes SET body = %s WHERE id = 3", (SHORT,))
        drain(dsn, svc.grpc_target)
        assert cut(conn) == 1
        # Nor does a deleted one, once the worker has pruned (as it does failed rows of deleted rows).
        conn.execute("DELETE FROM notes WHERE id = 2")
        drain(dsn, svc.grpc_target)  # a worker prunes as it starts
        assert cut(conn) == 0


def test_a_sync_vectorizer_counts_the_rows_it_stored_cut(pg_server: PostgresServer, service_pool: ServicePool,
                                                         request: pytest.FixtureRequest) -> None:
    """Issue 24 leftover: mode => 'sync' embeds inside the trigger, and its cut rows count alike."""
    svc = service_pool.get(env={"QVL_EMBED_MAX_LENGTH": str(MAX)})
    dsn = new_database(pg_server, request.node.name)
    install(dsn, service_url=svc.http_url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => ARRAY['body'], mode => 'sync')")
        conn.execute("INSERT INTO notes VALUES (1, %s), (2, %s), (3, %s)", (SHORT, LONG, LONG))
        assert conn.execute("SELECT count(*) FROM notes WHERE embedding IS NOT NULL").fetchone() == (3,)
        assert cut(conn) == 2
        assert conn.execute("SELECT key, tokens > 0 FROM qvl.cut_rows ORDER BY key").fetchall() == [
            (["2"], True), (["3"], True)]
        # A row shortened, or left without text, counts no more; one made long counts.
        conn.execute("UPDATE notes SET body = %s WHERE id = 2", (SHORT,))
        conn.execute("UPDATE notes SET body = NULL WHERE id = 3")
        conn.execute("UPDATE notes SET body = %s WHERE id = 1", (LONG,))
        assert conn.execute("SELECT key FROM qvl.cut_rows ORDER BY key").fetchall() == [(["1"],)]
        assert cut(conn) == 1
