"""Lanes rotate between vectorizers (issue 10 item 8): one whose claims fail cannot starve the
others, and a big backlog cannot hold up a small one."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg
import pytest

from tests.integration.postgres.conftest import role_dsn, running, wait_until
from tests.support.fake_service import FakeService

pytestmark = [pytest.mark.postgres, pytest.mark.service]


def make(conn: psycopg.Connection[Any], table: str, rows: int) -> int:
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, caption text)")
    conn.execute(f"INSERT INTO {table} SELECT g, '{table} ' || g FROM generate_series(1, {rows}) g")
    row = conn.execute(f"SELECT qvl.create_vectorizer('{table}', text_columns => ARRAY['caption'], "
                       f"dimensions => 32)").fetchone()
    assert row is not None
    return int(row[0])


def embedded(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table} WHERE embedding IS NOT NULL").fetchone()
    assert row is not None
    return int(row[0])


def worker_role(conn: psycopg.Connection[Any], vids: list[int], tables: list[str]) -> str:
    """A role that may run the worker for these vectorizers (docs/postgres.md, "Running it")."""
    role = f"worker_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {role} LOGIN")
    conn.execute(f"GRANT USAGE ON SCHEMA qvl TO {role}; GRANT SELECT ON qvl.vectorizer TO {role}; "
                 f"GRANT EXECUTE ON FUNCTION qvl._vector_schema() TO {role}; "
                 f"GRANT SELECT, INSERT, UPDATE, DELETE ON qvl.worker_status TO {role}")
    for vid in vids:
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON qvl.queue_{vid}, qvl.failed_{vid} TO {role}")
    for table in tables:
        conn.execute(f"GRANT SELECT, UPDATE ON {table} TO {role}")
    return role


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_vectorizer_whose_claims_fail_does_not_starve_the_others(
        conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService, concurrency: int,
        caplog: pytest.LogCaptureFixture) -> None:
    """The worker's role may not read one table (its owner revoked it): every claim of that
    vectorizer fails. Today the lane retries that vectorizer first, for ever, and the other waits."""
    broken = make(conn, "aaa", 5)  # first in every lane's order
    fine = make(conn, "bbb", 20)
    role = worker_role(conn, [broken, fine], ["aaa", "bbb"])
    conn.execute(f"REVOKE SELECT ON aaa FROM {role}")
    with caplog.at_level(logging.WARNING, logger="qvl.worker"), \
            running(role_dsn(qvl_db, role), fake.target, concurrency=concurrency, batch=4):
        wait_until(lambda: embedded(conn, "bbb") == 20, timeout=15, every=0.1)
        assert embedded(conn, "aaa") == 0
        conn.execute(f"GRANT SELECT ON aaa TO {role}")  # fixed: it catches up on its own
        wait_until(lambda: embedded(conn, "aaa") == 5, timeout=15, every=0.1)
    said = [r.getMessage() for r in caplog.records if "aaa" in r.getMessage()]
    assert said and "permission denied" in said[0], said


def test_a_big_backlog_does_not_hold_up_a_small_one(conn: psycopg.Connection[Any], qvl_db: str,
                                                   fake: FakeService) -> None:
    big = make(conn, "aaa", 400)
    make(conn, "bbb", 6)
    fake.fake.delay_s = 0.002
    with running(qvl_db, fake.target, concurrency=1, batch=8):
        wait_until(lambda: embedded(conn, "bbb") == 6, timeout=30, every=0.02)
        row = conn.execute(f"SELECT count(*) FROM qvl.queue_{big}").fetchone()
    assert row is not None and row[0] >= 350, f"the small table waited for {400 - row[0]} rows of the big one"
