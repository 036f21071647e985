"""Issue 22, item 3: the application side of a query. `connectors.postgres.search` (and `qvl pg search`)
embeds the query and reranks over gRPC, and runs the candidate stage in the database as the caller:
on a full install it gives the same rows, distances and scores as `qvl.search` on one data set; on
the managed install, where qvl.search cannot call the model, it is how an application searches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import column, create_engine

from connectors.client import Client
from connectors.postgres.installer import install
from connectors.postgres.search import Hit, SearchError, search
from connectors.postgres.sqlalchemy import application_search
from tests.integration.postgres.conftest import drain, images
from tests.support.cli import run_qvl
from tests.support.managed_postgres import managed_database
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]

COLOURS = ("red", "green", "blue", "grey")
THINGS = ("boat", "house", "car", "tree", "bird")


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Iterator[Client]:
    with Client(service.grpc_target) as c:
        yield c


def fill(conn: psycopg.Connection[Any], n: int = 60) -> None:
    conn.execute("CREATE TABLE photos (id int PRIMARY KEY, shop int, caption text, image bytea)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO photos VALUES (%s, %s, %s, %s)",
                        [(i, i % 3, f"{COLOURS[i % 4]} {THINGS[i % 5]} number {i}", img)
                         for i, img in enumerate(images(n), 1)])
    conn.execute("SELECT qvl.create_vectorizer('photos', text_columns => '{caption}', image_columns => '{image}', "
                 "dimensions => 32)")


def in_sql(conn: psycopg.Connection[Any], query: str, call: str, *args: Any) -> list[Hit]:
    rows = conn.execute(f"SELECT pk, distance, score FROM qvl.search('photos', %s, {call})", (query, *args))
    return [Hit(*r) for r in rows.fetchall()]


def same(got: list[Hit], want: list[Hit]) -> None:
    assert [h.pk for h in got] == [h.pk for h in want]
    for g, w in zip(got, want, strict=True):
        assert g.distance == pytest.approx(w.distance, abs=1e-6)
        assert (g.score is None) == (w.score is None)
        if w.score is not None:
            assert g.score == pytest.approx(w.score, abs=1e-5)


def test_the_application_side_gives_the_rows_and_scores_of_qvl_search(
        conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess, client: Client) -> None:
    fill(conn)
    drain(qvl_db, service.grpc_target)
    conn.execute("ANALYZE photos")
    q = "a red boat"
    same(search(conn, "photos", q, client=client, k=5, candidates=20), in_sql(conn, q, "k => 5, candidates => 20"))
    same(search(conn, "photos", q, client=client, k=7, rerank=False), in_sql(conn, q, "k => 7, rerank => false"))
    same(search(conn, "photos", q, client=client, k=4, candidates=30, filter="shop = 1 AND id > 10"),
         in_sql(conn, q, "k => 4, candidates => 30, filter => 'shop = 1 AND id > 10'"))
    picture = images(1, offset=7)[0]  # an image query
    same(search(conn, "photos", picture, client=client, k=5, candidates=20),
         [Hit(*r) for r in conn.execute("SELECT pk, distance, score FROM qvl.search('photos', %s::bytea, k => 5, "
                                        "candidates => 20)", (picture,)).fetchall()])
    structured = {"and": [{"column": "shop", "op": "in", "value": [0, 2]}, {"column": "id", "op": "<", "value": 40}]}
    same(search(conn, "photos", q, client=client, k=5, filter=structured, offset=2),
         conn_hits(conn, q, structured))
    # The same refusal of a filter that reads another table, with the same words.
    with pytest.raises(psycopg.errors.SyntaxError) as in_db:
        conn.execute("SELECT * FROM qvl.search('photos', 'x', filter => 'id IN (SELECT 1 FROM pg_class)')")
    with pytest.raises(SearchError) as app:
        search(conn, "photos", "x", client=client, filter="id IN (SELECT 1 FROM pg_class)")
    assert app.value.sqlstate == in_db.value.diag.sqlstate
    # (PL/Python puts "plpy.Error: " before its messages.)
    assert app.value.message == (in_db.value.diag.message_primary or "").removeprefix("plpy.Error: ")
    assert app.value.hint == in_db.value.diag.message_hint
    # The caller's transaction is as it was: writable, not aborted.
    conn.execute("BEGIN")
    search(conn, "photos", q, client=client, k=1)
    conn.execute("UPDATE photos SET shop = shop WHERE id = 1")
    conn.execute("COMMIT")


def conn_hits(conn: psycopg.Connection[Any], query: str, structured: dict[str, Any]) -> list[Hit]:
    rows = conn.execute("SELECT pk, distance, score FROM qvl.search('photos', %s, %s::jsonb, k => 5, \"offset\" => 2)",
                        (query, json.dumps(structured)))
    return [Hit(*r) for r in rows.fetchall()]


def test_search_on_the_managed_install_and_qvl_pg_search(
        pg_server: PostgresServer, service: ServiceProcess, client: Client) -> None:
    db = managed_database(pg_server, "app_search")
    install(db.dsn)
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        fill(conn, 50)
        drain(db.dsn, service.grpc_target)
        hits = search(conn, "photos", "a green house", client=client, k=3, filter={"column": "shop", "op": "=",
                                                                                     "value": 2})
        assert len(hits) == 3 and all(h.score is not None for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)  # type: ignore[misc]
        shops = conn.execute("SELECT shop FROM photos WHERE id = ANY(%s)", ([int(h.pk) for h in hits],)).fetchall()
        assert shops == [(2,)] * 3
        # In SQL: qvl.search by the query's vector (no PL/Python needed), the nearest rows as the
        # application side finds them without rerank.
        served = next(m for m in client.info().models if m.task == "embed")
        qvec = client.embed(["a green house"], dimensions=32, instruction=served.query_instruction)[0]
        literal = "[" + ",".join(repr(float(x)) for x in qvec) + "]"
        rows = conn.execute("SELECT pk, distance, score FROM qvl.search('photos', %s::vector, k => 6, "
                            "\"offset\" => 1)", (literal,)).fetchall()
        same([Hit(*r) for r in rows], search(conn, "photos", "a green house", client=client, k=6, offset=1,
                                              rerank=False))
        # Past hnsw.ef_search (40) through the index: every row asked for, and the setting as it was.
        conn.execute("BEGIN")
        conn.execute("SET LOCAL enable_seqscan = off")
        many = conn.execute("SELECT count(*) FROM qvl.search('photos', %s::vector, k => 50)", (literal,)).fetchone()
        assert many == (50,)
        assert conn.execute("SELECT current_setting('hnsw.ef_search')").fetchone() == ("40",)
        conn.execute("ROLLBACK")
        with pytest.raises(psycopg.errors.DataException) as wrong:
            conn.execute("SELECT * FROM qvl.search('photos', '[1,2,3]'::vector)")
        assert "dimensions => 32" in (wrong.value.diag.message_hint or "")
    # The SQLAlchemy helper, a SQLAlchemy condition as the filter.
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(db.dsn))
    with engine.connect() as sa_conn:
        again = application_search(sa_conn, "photos", "a green house", client=client, k=3,
                                   filter=column("shop") == 2)
    engine.dispose()
    same(again, hits)
    ran = run_qvl("pg", "search", "--dsn", db.dsn, "--service", service.grpc_target, "photos", "a green house",
                  "--k", "3", "--filter-json", '{"column": "shop", "op": "=", "value": 2}')
    assert ran.returncode == 0, ran.stderr.decode()
    lines = [json.loads(line) for line in ran.stdout.decode().splitlines()]
    assert [(d["pk"], d["distance"], d["score"]) for d in lines] == \
        [(h.pk, pytest.approx(h.distance, abs=1e-6), pytest.approx(h.score, abs=1e-5)) for h in hits]
    refused = run_qvl("pg", "search", "--dsn", db.dsn, "--service", service.grpc_target, "photos", "x",
                      "--filter", "id IN (SELECT 1 FROM pg_class)")
    assert refused.returncode == 2
    assert "subquery" in refused.stderr.decode()


def test_hybrid_search_by_the_query_vector_fuses_as_qvl_hybrid_search(
        conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess, client: Client) -> None:
    """The PL/pgSQL overload (the managed install's hybrid search) against qvl.hybrid_search without
    rerank on a full install: the same rows, fused scores and ranks."""
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO notes SELECT i, (ARRAY['red', 'green', 'blue'])[1 + i % 3] || ' ' || "
                 "(ARRAY['boat', 'house', 'car', 'tree'])[1 + i % 4] || ' number ' || i FROM generate_series(1, 40) i")
    conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => '{body}', dimensions => 32, "
                 "fulltext => 'english')")
    drain(qvl_db, service.grpc_target)
    served = next(m for m in client.info().models if m.task == "embed")
    qvec = client.embed(["red car"], dimensions=32, instruction=served.query_instruction)[0]
    literal = "[" + ",".join(repr(float(x)) for x in qvec) + "]"
    want = conn.execute("SELECT pk, rrf, vector_rank, text_rank FROM qvl.hybrid_search('notes', 'red car', k => 8, "
                        "rerank => false, candidates => 15, weights => '{1,0.5}')").fetchall()
    got = conn.execute("SELECT pk, rrf, vector_rank, text_rank FROM qvl.hybrid_search('notes', 'red car', %s::vector, "
                       "k => 8, candidates => 15, weights => '{1,0.5}')", (literal,)).fetchall()
    assert got == want, "\n".join(f"{g} | {w}" for g, w in zip(got, want, strict=False))
    assert [(r[2], r[3]) for r in got] == [(r[2], r[3]) for r in want]
    assert [r[1] for r in got] == pytest.approx([r[1] for r in want], abs=1e-7)


def test_the_python_of_managed_postgres_md_runs(conn: psycopg.Connection[Any], qvl_db: str,
                                                 service: ServiceProcess, client: Client) -> None:
    """docs/managed-postgres.md, "Searching from the application": the block as written, with this
    test's database and service for `dsn` and the host; it finds what connectors.postgres.search finds."""
    from pathlib import Path

    from tests.support.doc_snippets import run_by

    fill(conn)
    drain(qvl_db, service.grpc_target)
    (block,) = run_by(Path(__file__).parents[3] / "docs" / "managed-postgres.md", __file__, "python")
    scope: dict[str, Any] = {"dsn": qvl_db}
    exec(block.replace("qvl-host:50051", service.grpc_target), scope)
    want = search(conn, "photos", "a dog on a beach", client=client, k=5,
                  filter={"column": "shop", "op": "=", "value": 1})
    assert len(want) == 5
    same(scope["hits"], want)  # two rerank calls: the same rows, scores within float noise
