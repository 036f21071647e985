"""The PostgreSQL stack the connectors rely on: pgvector >= 0.7 (halfvec + HNSW) and plpython3u."""

from __future__ import annotations

import hashlib

import psycopg
import pytest

from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.postgres

DIM = 2048


def halfvec_literal(hot: int, *, weight: float = 1.0) -> str:
    """A unit-ish vector pointing mostly along axis `hot`, as pgvector's text form."""
    values = [0.01] * DIM
    values[hot] = weight
    return "[" + ",".join(f"{v:g}" for v in values) + "]"


def test_pgvector_halfvec_hnsw(pg_server: PostgresServer) -> None:
    dsn = pg_server.create_database("smoke_pgvector")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        assert row is not None
        major, minor = (int(part) for part in row[0].split(".")[:2])
        assert (major, minor) >= (0, 7), f"pgvector {row[0]} lacks halfvec/HNSW on halfvec"

        conn.execute(f"CREATE TABLE items (id int PRIMARY KEY, embedding halfvec({DIM}) NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO items (id, embedding) VALUES (%s, %s::halfvec)",
                [(i, halfvec_literal(i)) for i in range(8)],
            )
        conn.execute("CREATE INDEX items_embedding_hnsw ON items USING hnsw (embedding halfvec_cosine_ops)")

        query = "SELECT id FROM items ORDER BY embedding <=> %s::halfvec LIMIT 3"
        probe = halfvec_literal(5, weight=0.9)
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, (probe,)).fetchall())
        assert "items_embedding_hnsw" in plan, plan

        ids = [r[0] for r in conn.execute(query, (probe,)).fetchall()]
        assert len(ids) == 3
        assert ids[0] == 5
        assert set(ids) <= set(range(8))


def test_plpython3u_runs_python(pg_server: PostgresServer) -> None:
    dsn = pg_server.create_database("smoke_plpython")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION plpython3u")
        conn.execute(
            """
            CREATE FUNCTION py_digest(payload text) RETURNS text LANGUAGE plpython3u AS $$
            import hashlib
            import sys
            return f"{sys.version_info.major}:{hashlib.sha256(payload.encode()).hexdigest()}"
            $$
            """
        )
        row = conn.execute("SELECT py_digest(%s)", ("qvl",)).fetchone()
    assert row is not None
    assert row[0] == "3:" + hashlib.sha256(b"qvl").hexdigest()
