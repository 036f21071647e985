"""Issue 22 items 2-3, the chunks: `qvl.search_chunks(vectorizer, query_vector, k, offset)` in PL/pgSQL
(both installs) and `connectors.postgres.search_chunks` / `qvl pg search --chunks` (the query embedded
and each candidate's part reranked over gRPC): on a full install the same chunks, distances and scores
as the PL/Python `qvl.search_chunks`; on the managed install, how an application searches chunks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from connectors.client import Client
from connectors.postgres.installer import install
from connectors.postgres.search import ChunkHit, Hit, SearchError, search, search_chunks
from tests.document_factory import pdf_of, pictures
from tests.integration.postgres.conftest import drain, role_dsn
from tests.support.cli import run_qvl
from tests.support.managed_postgres import managed_database
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]

PICTURES = pictures(5, seed=11)
PDF3, PDF2 = pdf_of(PICTURES[:3]), pdf_of(PICTURES[3:5])
QUERY = "a pump with a blue housing"


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Iterator[Client]:
    with Client(service.grpc_target) as c:
        yield c


def manuals(conn: psycopg.Connection[Any], dsn: str, target: str) -> None:
    conn.execute("CREATE TABLE manuals (id int PRIMARY KEY, title text, pdf bytea, note text)")
    conn.execute("SELECT qvl.create_vectorizer('manuals', text_columns => '{title}', document_columns => '{pdf}', "
                 "chunking => qvl.chunk_pages(), destination => 'manual_pages', dimensions => 32)")
    conn.execute("INSERT INTO manuals VALUES (1, 'crane manual', %s, 'a'), (2, 'pump manual', %s, 'b'), "
                 "(3, 'winch manual', %s, 'b')", (PDF3, PDF2, PDF3))
    drain(dsn, target)


def in_sql(conn: psycopg.Connection[Any], call: str, *args: Any) -> list[ChunkHit]:
    rows = conn.execute(f"SELECT pk, chunk_seq, locator, distance, score FROM qvl.search_chunks('manuals', {call})",
                        args).fetchall()
    return [ChunkHit(*r) for r in rows]


def same(got: list[ChunkHit], want: list[ChunkHit]) -> None:
    assert [(h.pk, h.chunk_seq, h.locator) for h in got] == [(h.pk, h.chunk_seq, h.locator) for h in want]
    for g, w in zip(got, want, strict=True):
        assert g.distance == pytest.approx(w.distance, abs=1e-6)
        assert (g.score is None) == (w.score is None)
        if w.score is not None:
            assert g.score == pytest.approx(w.score, abs=1e-5)


def query_literal(client: Client, query: str) -> str:
    served = next(m for m in client.info().models if m.task == "embed")
    qvec = client.embed([query], dimensions=32, instruction=served.query_instruction)[0]
    return "[" + ",".join(repr(float(x)) for x in qvec) + "]"


def test_the_application_side_gives_the_chunks_and_scores_of_qvl_search_chunks(
        conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess, client: Client) -> None:
    manuals(conn, qvl_db, service.grpc_target)
    reranked = search_chunks(conn, "manuals", QUERY, client=client, k=4, candidates=6)
    assert len(reranked) == 4 and all(h.score is not None for h in reranked)
    same(reranked, in_sql(conn, "%s, k => 4, candidates => 6", QUERY))
    same(search_chunks(conn, "manuals", QUERY, client=client, k=5, rerank=False),
         in_sql(conn, "%s, k => 5, rerank => false", QUERY))
    same(search_chunks(conn, "manuals", QUERY, client=client, k=3, filter="note = 'b' AND id > 1"),
         in_sql(conn, "%s, k => 3, filter => 'note = ''b'' AND id > 1'", QUERY))
    structured = {"column": "title", "op": "like", "value": "crane%"}
    same(search_chunks(conn, "manuals", QUERY, client=client, k=3, filter=structured),
         in_sql(conn, "%s, %s::jsonb, k => 3", QUERY, json.dumps(structured)))
    # The SQLAlchemy helper, with a SQLAlchemy condition as the filter: the same chunks.
    from sqlalchemy import column, create_engine

    from connectors.postgres.sqlalchemy import application_search_chunks

    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(qvl_db))
    with engine.connect() as sa_conn:
        same(application_search_chunks(sa_conn, "manuals", QUERY, client=client, k=3,
                                       filter=column("title").like("crane%")),
             in_sql(conn, "%s, %s::jsonb, k => 3", QUERY, json.dumps(structured)))
    engine.dispose()

    # In PL/pgSQL, by the query's vector: the nearest chunks, as qvl.search_chunks finds them without rerank.
    literal = query_literal(client, QUERY)
    same(in_sql(conn, "%s::vector, k => 4, \"offset\" => 2", literal),
         in_sql(conn, "%s, k => 6, rerank => false", QUERY)[2:])
    with pytest.raises(psycopg.errors.DataException) as wrong:
        conn.execute("SELECT * FROM qvl.search_chunks('manuals', '[1,2,3]'::vector)")
    assert "dimensions => 32" in (wrong.value.diag.message_hint or "")

    # qvl.search on a chunked vectorizer ranks rows by their best part: the application side as well.
    for call, kwargs in (("k => 2", {"k": 2}), ("k => 3, rerank => false", {"k": 3, "rerank": False}),
                         ("k => 2, \"offset\" => 1, candidates => 4", {"k": 2, "offset": 1, "candidates": 4})):
        rows = conn.execute(f"SELECT pk, distance, score FROM qvl.search('manuals', %s, {call})", (QUERY,)).fetchall()
        got = search(conn, "manuals", QUERY, client=client, **kwargs)  # type: ignore[arg-type]
        assert [(h.pk, h.score is None) for h in got] == [(r[0], r[2] is None) for r in rows]
        for h, (_, distance, score) in zip(got, rows, strict=True):
            assert h.distance == pytest.approx(distance, abs=1e-6)
            assert h.score == (None if score is None else pytest.approx(score, abs=1e-5))
    assert all(isinstance(h, Hit) for h in got)
    # By a query vector, qvl.search refuses a chunked vectorizer, naming the overload that reads chunks.
    with pytest.raises(psycopg.errors.FeatureNotSupported) as chunky:
        conn.execute("SELECT * FROM qvl.search('manuals', %s::vector)", (literal,))
    assert "qvl.search_chunks('manuals', query_vector" in (chunky.value.diag.message_hint or "")

    # A vectorizer with one vector per row is refused by both, naming qvl.search.
    conn.execute("CREATE TABLE plain (id int PRIMARY KEY, body text)")
    conn.execute("SELECT qvl.create_vectorizer('plain', text_columns => '{body}', dimensions => 32)")
    with pytest.raises(psycopg.errors.InvalidParameterValue) as in_db:
        conn.execute("SELECT * FROM qvl.search_chunks('plain', %s::vector)", (literal,))
    assert "qvl.search" in (in_db.value.diag.message_hint or "")
    # Both overloads check k, offset and the vector's size alike (qvl._vector_probe), each in its own words.
    plain = query_literal(client, "a plain query")
    for name, table, unit, via in (("search", "plain", "rows", "connectors.postgres.search"),
                                   ("search_chunks", "manuals", "chunks", "connectors.postgres.search_chunks")):
        for call, error, words in (("%s::vector, k => NULL", psycopg.errors.NullValueNotAllowed, "k is NULL"),
                                   ("%s::vector, \"offset\" => -1", psycopg.errors.InvalidParameterValue,
                                    "offset must be 0 or more, got -1"),
                                   ("'[1,2,3]'::vector", psycopg.errors.DataException, "has 3 dimensions")):
            with pytest.raises(error) as bad:
                conn.execute(f"SELECT * FROM qvl.{name}('{table}', {call})", (plain,) if "%s" in call else ())
            hint = bad.value.diag.message_hint or ""
            assert words in bad.value.diag.message_primary, (name, call)
            assert (unit in hint) if "dimensions" not in words else (via + " does" in hint), (name, call, hint)
        none = conn.execute(f"SELECT count(*) FROM qvl.{name}('{table}', %s::vector, k => 0)", (plain,)).fetchone()
        assert none == (0,)
    with pytest.raises(SearchError) as app:
        search_chunks(conn, "plain", QUERY, client=client)
    assert app.value.sqlstate == "22023" and "not chunks" in app.value.message


def test_the_vector_overload_and_the_application_side_read_with_the_callers_rights(
        conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess, client: Client) -> None:
    """Row-level security on the table holds for both; without SELECT on the chunk table, both are refused."""
    manuals(conn, qvl_db, service.grpc_target)
    literal = query_literal(client, QUERY)
    role = f"chunk_app_{uuid.uuid4().hex[:8]}"  # roles are the cluster's: one of this test's own
    conn.execute(f"CREATE ROLE {role} LOGIN; GRANT SELECT ON manuals TO {role}; "
                 "ALTER TABLE manuals ENABLE ROW LEVEL SECURITY; "
                 f"CREATE POLICY only_winches ON manuals TO {role} USING (title LIKE 'winch%')")
    try:
        with psycopg.connect(role_dsn(qvl_db, role), autocommit=True) as reader:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="manual_pages"):
                reader.execute("SELECT * FROM qvl.search_chunks('manuals', %s::vector)", (literal,))
            with pytest.raises(SearchError) as app:
                search_chunks(reader, "manuals", QUERY, client=client)
            assert app.value.sqlstate == "42501" and "manual_pages" in app.value.message
            conn.execute(f"GRANT SELECT ON manual_pages TO {role}")
            near = in_sql(reader, "%s::vector, k => 10", literal)
            assert sorted((h.pk, h.chunk_seq) for h in near) == [("3", 0), ("3", 1), ("3", 2)]
            assert [h.distance for h in near] == sorted(h.distance for h in near)
            hits = search_chunks(reader, "manuals", QUERY, client=client, k=10)
            assert sorted((h.pk, h.chunk_seq) for h in hits) == [("3", 0), ("3", 1), ("3", 2)]
    finally:
        conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_chunks_on_the_managed_install_and_qvl_pg_search_chunks(
        pg_server: PostgresServer, service: ServiceProcess, client: Client) -> None:
    db = managed_database(pg_server, "app_chunks")
    install(db.dsn)
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        manuals(conn, db.dsn, service.grpc_target)
        pages = conn.execute("SELECT count(*) FROM manual_pages").fetchone()
        assert pages == (8,)
        hits = search_chunks(conn, "manuals", QUERY, client=client, k=3, filter={"column": "note", "op": "=",
                                                                                  "value": "b"})
        assert len(hits) == 3 and all(h.pk in ("2", "3") for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)  # type: ignore[misc]
        assert all(h.locator == {"page": h.chunk_seq + 1} for h in hits)
        literal = query_literal(client, QUERY)
        same(in_sql(conn, "%s::vector, k => 8", literal),
             search_chunks(conn, "manuals", QUERY, client=client, k=8, rerank=False))
    ran = run_qvl("pg", "search", "--dsn", db.dsn, "--service", service.grpc_target, "manuals", QUERY, "--chunks",
                  "--k", "3", "--filter-json", '{"column": "note", "op": "=", "value": "b"}')
    assert ran.returncode == 0, ran.stderr.decode()
    lines = [json.loads(line) for line in ran.stdout.decode().splitlines()]
    assert [(d["pk"], d["chunk_seq"], d["locator"], d["distance"], d["score"]) for d in lines] == \
        [(h.pk, h.chunk_seq, h.locator, pytest.approx(h.distance, abs=1e-6), pytest.approx(h.score, abs=1e-5))
         for h in hits]
    refused = run_qvl("pg", "search", "--dsn", db.dsn, "--service", service.grpc_target, "manuals", "x", "--chunks",
                      "--offset", "1")
    assert refused.returncode == 2
    assert "--offset" in refused.stderr.decode()
