"""Issue 22, item 7: the managed suite. On a database that looks like a managed one (no superuser, no
PL/Python: tests/support/managed_postgres.py) the whole auto-embed path works through `qvl worker`
running as a login granted qvl_worker and nothing else: inserts, updates and deletes, the status view
and wait_for_embeddings; the worker holds a vectorizer whose table changed (no schema guard there) or
whose dimensions the service cannot give, failing no row."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from connectors.client import Client
from connectors.postgres.installer import ensure_worker_login, install
from tests.integration.postgres.conftest import cosines, running, vec, wait_until
from tests.support.managed_postgres import ManagedDatabase, managed_database
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]


@pytest.fixture(scope="module")
def managed_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
def managed(managed_server: PostgresServer, request: pytest.FixtureRequest) -> ManagedDatabase:
    db = managed_database(managed_server, request.node.name[5:25])
    install(db.dsn)
    return db


def worker_login(db: ManagedDatabase) -> str:
    """A login granted qvl_worker, made by the CREATEROLE role (as `qvl pg install --worker-login` does)."""
    login = f"{db.role}_worker"
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        ensure_worker_login(conn, login)
    return db.dsn.replace(f"user={db.role}", f"user={login}")


def service_vectors(service: ServiceProcess, texts: list[str]) -> np.ndarray:
    with Client(service.grpc_target) as client:
        return client.embed(texts, dimensions=32)


def held_reason(conn: psycopg.Connection[Any], vectorizer: str) -> str:
    """The reason the running worker shows in qvl.worker_status for holding ``vectorizer``."""
    said: list[str] = []

    def held() -> bool:
        row = conn.execute("SELECT reason FROM qvl.worker_status").fetchone()
        if row is not None and row[0] is not None and f"vectorizer {vectorizer}:" in row[0]:
            said.append(row[0])
        return bool(said)
    wait_until(held, 30)
    return said[0]


def _one(conn: psycopg.Connection[Any], query: str, *args: Any) -> Any:
    row = conn.execute(query, args or None).fetchone()
    assert row is not None
    return row[0]


def test_the_worker_embeds_inserts_updates_and_deletes_as_a_qvl_worker_login(
        managed: ManagedDatabase, service: ServiceProcess) -> None:
    dsn = worker_login(managed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
        granted = conn.execute("SELECT b.rolname FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid "
                               "WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user)").fetchall()
        assert granted == [("qvl_worker",)]
    with psycopg.connect(managed.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes SELECT i, 'note number ' || i FROM generate_series(1, 5) i")
        conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => '{body}', dimensions => 32)")
        with running(dsn, service.grpc_target):
            assert _one(conn, "SELECT qvl.wait_for_embeddings('notes', '60 seconds')") is True
            conn.execute("INSERT INTO notes VALUES (6, 'a new note')")
            conn.execute("UPDATE notes SET body = 'an edited note' WHERE id = 2")
            conn.execute("DELETE FROM notes WHERE id = 3")
            assert _one(conn, "SELECT qvl.wait_for_embeddings('notes', '60 seconds')") is True
        rows = conn.execute("SELECT id, body, embedding::text FROM notes ORDER BY id").fetchall()
        assert [r[0] for r in rows] == [1, 2, 4, 5, 6]
        want = service_vectors(service, [r[1] for r in rows])
        got = np.stack([vec(r[2]) for r in rows])
        assert cosines(got, want).min() > 0.999
        status = conn.execute("SELECT pending, failed FROM qvl.vectorizer_status WHERE name = 'notes'").fetchone()
        assert status == (0, 0)


def test_a_renamed_input_column_holds_the_vectorizer_with_the_reason_and_fails_no_row(
        managed: ManagedDatabase, service: ServiceProcess) -> None:
    dsn = worker_login(managed)
    with psycopg.connect(managed.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => '{body}', dimensions => 32)")
        conn.execute("CREATE TABLE other (id int PRIMARY KEY, body text)")
        conn.execute("SELECT qvl.create_vectorizer('other', text_columns => '{body}', dimensions => 32)")
        # No schema guard on the managed install: PostgreSQL lets the rename through.
        conn.execute("ALTER TABLE notes RENAME COLUMN body TO text_body")
        conn.execute("INSERT INTO notes VALUES (1, 'a note')")
        conn.execute("INSERT INTO other VALUES (1, 'another note')")
        with running(dsn, service.grpc_target):
            assert _one(conn, "SELECT qvl.wait_for_embeddings('other', '60 seconds')") is True

            reason = held_reason(conn, "notes")
        assert "body" in reason, reason
        assert _one(conn, "SELECT count(*) FROM qvl.failed_items('notes')") == 0
        assert _one(conn, "SELECT pending FROM qvl.vectorizer_status WHERE name = 'notes'") == 1


def test_dimensions_the_service_cannot_give_hold_the_vectorizer_with_the_reason(
        managed: ManagedDatabase, service: ServiceProcess) -> None:
    dsn = worker_login(managed)
    with psycopg.connect(managed.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        # Accepted here (the database cannot ask the service); the tiny model gives 64.
        conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => '{body}', dimensions => 1000)")
        conn.execute("INSERT INTO notes VALUES (1, 'a note')")
        conn.execute("CREATE TABLE other (id int PRIMARY KEY, body text)")
        conn.execute("SELECT qvl.create_vectorizer('other', text_columns => '{body}', dimensions => 32)")
        conn.execute("INSERT INTO other VALUES (1, 'another note')")
        with running(dsn, service.grpc_target):
            assert _one(conn, "SELECT qvl.wait_for_embeddings('other', '60 seconds')") is True

            reason = held_reason(conn, "notes")
        assert "1000 dimensions" in reason, reason
        assert _one(conn, "SELECT count(*) FROM qvl.failed_items('notes')") == 0


def test_a_chunked_vectorizer_embeds_each_page_through_the_worker(
        managed: ManagedDatabase, service: ServiceProcess) -> None:
    """Chunk tables need no PL/Python: each page of a PDF becomes a chunk row, written by a qvl_worker
    login, equal to that page embedded alone; `dimensions => NULL` is refused here as for one vector."""
    from qvl_proto import vectorizer_pb2 as pb
    from tests.document_factory import pdf_of, pictures

    pdf = pdf_of(pictures(3, seed=40))
    dsn = worker_login(managed)
    with psycopg.connect(managed.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE manuals (id int PRIMARY KEY, title text, pdf bytea)")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
            conn.execute("SELECT qvl.create_vectorizer('manuals', text_columns => '{title}', "
                         "document_columns => '{pdf}', chunking => qvl.chunk_pages(), destination => 'pages')")
        assert "dimensions => N" in (refused.value.diag.message_hint or "")
        conn.execute("SELECT qvl.create_vectorizer('manuals', text_columns => '{title}', document_columns => '{pdf}', "
                     "chunking => qvl.chunk_pages(), destination => 'pages', dimensions => 32)")
        conn.execute("INSERT INTO manuals VALUES (1, 'crane manual', %s)", (pdf,))
        with running(dsn, service.grpc_target):
            assert _one(conn, "SELECT qvl.wait_for_embeddings('manuals', '90 seconds')") is True
        rows = conn.execute("SELECT chunk_seq, locator, embedding::text FROM pages WHERE id = 1 "
                            "ORDER BY chunk_seq").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(i, {"page": i + 1}) for i in range(3)]
    items = [pb.Item(parts=[pb.Part(document=pdf, page=i + 1), pb.Part(text="crane manual")]) for i in range(3)]
    with Client(service.grpc_target) as client:
        want = client.embed(items, dimensions=32)
    got = np.stack([vec(r[2]) for r in rows])
    assert cosines(got, want).min() > 0.9999
