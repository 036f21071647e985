"""Blue/green for chunked vectorizers and the switch's edges (issue 23 item 3): a shadow chunk table filled
from a second service while queries keep the live chunk table, one switch of both, the way back, the
switch's bounded lock wait.

Two real services on two tiny checkpoints of the same name and shape (another seed), real Postgres, the
real worker (``shadow=True`` fills the shadows only), the real SQL functions.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import numpy as np
import psycopg
import pytest

from connectors.client import Client
from qvl_proto import vectorizer_pb2 as pb
from tests.integration.postgres.conftest import cosines, drain, running, served, vec, wait_until
from tests.support.doc_snippets import ROOT, run_by
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service, pytest.mark.lifecycle]

BODY = " ".join(f"Section {p}: the ferry left the harbour at {p + 6} o'clock with {p * 13} passengers. "
                for p in range(12))
V2 = "articles_chunks_v2"
DOC = ROOT / "docs" / "model-upgrades.md"  # the chunked recipe's SQL: back, make the shadow, switch, drop


def articles(conn: psycopg.Connection[Any], rows: range) -> None:
    if conn.execute("SELECT to_regclass('articles')").fetchone() == (None,):
        conn.execute("CREATE TABLE articles (id int PRIMARY KEY, title text, body text)")
        conn.execute("DO $$ BEGIN IF to_regrole('reader_bg') IS NULL THEN CREATE ROLE reader_bg; END IF; END $$")
        conn.execute("GRANT SELECT ON articles TO reader_bg")
        conn.execute("SELECT qvl.create_vectorizer('articles', text_columns => '{title, body}', dimensions => 32, "
                     "chunking => qvl.chunk_text(tokens => 32, overlap => 4))")
        conn.execute("GRANT SELECT ON articles_chunks, articles_chunks_view TO reader_bg")
    conn.execute("INSERT INTO articles SELECT i, 'Ferry log ' || i, %s || i FROM generate_series(%s::int, %s::int) i",
                 (BODY, rows.start, rows.stop - 1))


def chunk_rows(conn: psycopg.Connection[Any], table: str) -> dict[tuple[int, int], tuple[Any, np.ndarray]]:
    return {(i, seq): (loc, vec(e)) for i, seq, loc, e in
            conn.execute(f"SELECT id, chunk_seq, locator, embedding::text FROM {table}").fetchall()}


def acl(conn: psycopg.Connection[Any], table: str) -> list[str]:
    return sorted(str(a) for (a,) in conn.execute(
        "SELECT format('%%s:%%s', pg_get_userbyid(grantee), privilege_type) FROM pg_class c, aclexplode(c.relacl) "
        "WHERE c.oid = %s::regclass", (table,)).fetchall())


def test_a_chunked_shadow_is_a_chunk_table_of_its_own_switched_in_one_step(
        qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess, new_service: ServiceProcess) -> None:
    articles(conn, range(1, 4))
    drain(qvl_db, service.grpc_target)
    old = chunk_rows(conn, "articles_chunks")
    assert conn.execute("SELECT qvl.reembed('articles', service => %s, shadow => %s)",
                        (new_service.http_url, V2)).fetchone() == (3,)
    # The same shape, the new model's size, an HNSW index, the owner and the grants of the live table.
    assert conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
                        "AND attname = 'embedding'", (V2,)).fetchone() == ("vector(32)",)
    assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%hnsw%%'",
                        (V2,)).fetchone() == (1,)
    assert acl(conn, V2) == acl(conn, "articles_chunks") and "qvl_worker:INSERT" in acl(conn, V2)
    assert acl(conn, V2 + "_view") == acl(conn, "articles_chunks_view")
    drain(qvl_db, service.grpc_target)  # the live worker: the shadow is not its to fill
    assert conn.execute(f"SELECT count(*) FROM {V2}").fetchone() == (0,)
    drain(qvl_db, new_service.grpc_target, shadow=True)
    new = chunk_rows(conn, V2)
    assert {i for i, _ in new} == {i for i, _ in old} == {1, 2, 3}  # (each model's tokenizer cuts its own passages)
    texts = dict(conn.execute("SELECT id, title FROM articles").fetchall())
    bodies = dict(conn.execute("SELECT id, body FROM articles").fetchall())
    keys = sorted(new)
    items = [pb.Item(parts=[pb.Part(text=texts[i]), pb.Part(text=bodies[i][new[(i, s)][0]["char_start"]:
                                                                             new[(i, s)][0]["char_end"]])])
             for i, s in keys]
    with Client(new_service.grpc_target) as client:
        alone = client.embed(items, dimensions=32)
    assert cosines(np.stack([new[k][1] for k in keys]), alone).min() >= 0.9999
    # A deleted row's, a re-keyed row's and a truncated table's shadow chunks go as the live ones do.
    conn.execute("DELETE FROM articles WHERE id = 1")
    conn.execute("UPDATE articles SET id = 30 WHERE id = 2")
    assert conn.execute(f"SELECT DISTINCT id FROM {V2} ORDER BY id").fetchall() == [(3,)]
    drain(qvl_db, service.grpc_target)
    drain(qvl_db, new_service.grpc_target, shadow=True)
    assert conn.execute(f"SELECT DISTINCT id FROM {V2} ORDER BY id").fetchall() == [(3,), (30,)]
    # The switch: the shadow table, its view, service and model are the vectorizer's at once.
    conn.execute("SELECT qvl.switch_vectorizer('articles')")
    assert conn.execute("SELECT chunk_table::text, chunk_view::text, model_fingerprint, service_url "
                        "FROM qvl.vectorizer").fetchone() == (V2, V2 + "_view", served(new_service),
                                                              new_service.http_url)
    q = vec(conn.execute("SELECT qvl.query_embedding('articles', 'harbour')::text").fetchone()[0])  # type: ignore[index]
    new = chunk_rows(conn, V2)
    with psycopg.connect(qvl_db, autocommit=True) as reader:
        reader.execute("SET ROLE reader_bg")
        got = reader.execute("SELECT pk, chunk_seq, distance FROM qvl.search_chunks('articles', 'harbour', k => 4, "
                             "rerank => false)").fetchall()
    assert len(got) == 4
    for pk, seq, distance in got:
        assert abs(distance - (1 - cosines(q, new[(int(pk), seq)][1]))) < 1e-4
    conn.execute("DELETE FROM articles WHERE id = 3")  # the new live table's triggers follow it now
    assert conn.execute(f"SELECT DISTINCT id FROM {V2}").fetchall() == [(30,)]
    assert conn.execute("SELECT DISTINCT id FROM articles_chunks").fetchall() == [(30,)]
    conn.execute("TRUNCATE articles")
    assert conn.execute(f"SELECT count(*) FROM {V2}").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM articles_chunks").fetchone() == (0,)
    conn.execute("SELECT qvl.drop_old_column('articles')")
    assert conn.execute("SELECT to_regclass('articles_chunks'), to_regclass('articles_chunks_view')").fetchone() == (
        None, None)


def test_a_chunked_switch_under_inserts_and_searches_shows_no_error_and_no_mixed_answer(
        qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess, new_service: ServiceProcess) -> None:
    """As test_blue_green's one-vector test, over qvl.search_chunks: every answer's distances are one model's
    query vector against that model's chunk table, old answers first, then only new ones."""
    articles(conn, range(1, 9))
    drain(qvl_db, service.grpc_target)
    q_old = vec(conn.execute("SELECT qvl.query_embedding('articles', 'harbour')::text").fetchone()[0])  # type: ignore[index]
    conn.execute("SELECT qvl.reembed('articles', service => %s, shadow => %s)", (new_service.http_url, V2))
    stop = threading.Event()
    answers: list[tuple[str, list[tuple[int, int, float]]]] = []
    errors: list[str] = []
    inserted = [8]

    def insert() -> None:
        with psycopg.connect(qvl_db, autocommit=True) as c:
            while not stop.is_set():
                inserted[0] += 1
                c.execute("INSERT INTO articles VALUES (%s, 'Crane', %s)",
                          (inserted[0], f"a harbour crane {inserted[0]}"))
                time.sleep(0.1)

    def search() -> None:
        with psycopg.connect(qvl_db, autocommit=True) as c:
            while not stop.is_set():
                try:
                    rows = c.execute("SELECT pk, chunk_seq, distance FROM qvl.search_chunks('articles', 'harbour', "
                                     "k => 5, rerank => false)").fetchall()
                    answers.append((threading.current_thread().name, [(int(p), s, float(d)) for p, s, d in rows]))
                except psycopg.Error as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=f, daemon=True) for f in (insert, search, search)]
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(running(qvl_db, service.grpc_target))
        stack.enter_context(running(qvl_db, new_service.grpc_target, shadow=True))
        for t in threads:
            t.start()
        wait_until(lambda: len({thread for thread, _ in answers}) == 2, timeout=60, every=0.05)
        switched = False
        deadline = time.monotonic() + 120
        while not switched and time.monotonic() < deadline:
            try:
                conn.execute("SELECT qvl.switch_vectorizer('articles')")
                switched = True
            except psycopg.errors.ObjectNotInPrerequisiteState:
                time.sleep(0.2)
        assert switched, "the shadow never completed under the inserts"
        live.stop()
        stack.enter_context(running(qvl_db, new_service.grpc_target))
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(30)
        assert conn.execute("SELECT qvl.wait_for_embeddings('articles', '60 seconds')").fetchone() == (True,)
    assert not errors, errors[:5]
    q_new = vec(conn.execute("SELECT qvl.query_embedding('articles', 'harbour')::text").fetchone()[0])  # type: ignore[index]
    old, new = chunk_rows(conn, "articles_chunks"), chunk_rows(conn, V2)

    def fits(answer: list[tuple[int, int, float]], q: np.ndarray, table: dict[tuple[int, int], Any]) -> bool:
        return all((pk, s) in table and abs(d - (1 - float(cosines(q, table[(pk, s)][1])))) < 1e-4
                   for pk, s, d in answer)

    kinds: dict[str, list[str]] = {}
    for thread, answer in answers:
        assert answer, "a search found nothing"
        by_old, by_new = fits(answer, q_old, old), fits(answer, q_new, new)
        assert by_old != by_new, (answer, by_old, by_new)
        kinds.setdefault(thread, []).append("old" if by_old else "new")
    for seen in kinds.values():
        assert "old" in seen and "new" in seen, seen
        assert seen == sorted(seen, key=lambda k: k == "new"), "an old answer after a new one"
    print(f"searches: {len(answers)} ({sum(k.count('old') for k in kinds.values())} old, "
          f"{sum(k.count('new') for k in kinds.values())} new), rows inserted meanwhile: {inserted[0] - 8}")
    assert conn.execute(f"SELECT count(*) FROM articles a WHERE NOT EXISTS (SELECT 1 FROM {V2} c "
                        "WHERE c.id = a.id)").fetchone() == (0,)


def test_a_chunked_switch_goes_back_to_the_old_chunk_table_kept_complete(
        qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess, new_service: ServiceProcess) -> None:
    """After a switch the old chunk table is the shadow: a row written since gets its chunks there from the
    old model's --shadow worker, a deleted row's go, and back => true makes it live again."""
    articles(conn, range(1, 3))
    drain(qvl_db, service.grpc_target)
    fp_old = served(service)
    back, make, switch, drop = run_by(DOC, __file__, "sql")
    conn.execute(make.replace("http://qvl-new:8080", new_service.http_url))
    drain(qvl_db, new_service.grpc_target, shadow=True)
    conn.execute(switch)
    articles(conn, range(3, 4))
    conn.execute("DELETE FROM articles WHERE id = 1")
    drain(qvl_db, new_service.grpc_target)
    assert conn.execute("SELECT DISTINCT id FROM articles_chunks ORDER BY id").fetchall() == [(2,)]
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        conn.execute(back)
    drain(qvl_db, service.grpc_target, shadow=True)
    assert conn.execute("SELECT DISTINCT id FROM articles_chunks ORDER BY id").fetchall() == [(2,), (3,)]
    conn.execute(back)
    assert conn.execute("SELECT chunk_table::text, chunk_view::text, model_fingerprint, service_url "
                        "FROM qvl.vectorizer").fetchone() == ("articles_chunks", "articles_chunks_view", fp_old, None)
    q = vec(conn.execute("SELECT qvl.query_embedding('articles', 'harbour')::text").fetchone()[0])  # type: ignore[index]
    old = chunk_rows(conn, "articles_chunks")
    got = conn.execute("SELECT pk, chunk_seq, distance FROM qvl.search_chunks('articles', 'harbour', k => 3, "
                       "rerank => false)").fetchall()
    assert got and all(abs(d - (1 - cosines(q, old[(int(pk), s)][1]))) < 1e-4 for pk, s, d in got)
    conn.execute("DELETE FROM articles WHERE id = 2")  # the live triggers follow the old table again
    assert conn.execute("SELECT DISTINCT id FROM articles_chunks").fetchall() == [(3,)]
    assert conn.execute(f"SELECT DISTINCT id FROM {V2}").fetchall() == [(3,)]
    conn.execute(drop)
    assert conn.execute("SELECT to_regclass(%s), to_regclass(%s)", (V2, V2 + "_view")).fetchone() == (None, None)


def test_dropping_a_vectorizer_takes_its_shadow_along(
        qvl_db: str, conn: psycopg.Connection[Any], service: ServiceProcess, new_service: ServiceProcess) -> None:
    """qvl.drop_vectorizer with a shadow: its triggers, queue and count go (nothing keeps queueing rows for a
    vectorizer that is gone); its chunk table stays unless drop_column, like the live one."""
    articles(conn, range(1, 3))
    vid = conn.execute("SELECT id FROM qvl.vectorizer").fetchone()[0]  # type: ignore[index]
    conn.execute("SELECT qvl.reembed('articles', service => %s, shadow => %s)", (new_service.http_url, V2))
    conn.execute("SELECT qvl.drop_vectorizer('articles')")
    assert conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'articles'::regclass").fetchall() == []
    assert conn.execute("SELECT to_regclass(%s), to_regclass(%s)",
                        (f"qvl.shadow_queue_{vid}", f"qvl.shadow_rows_{vid}")).fetchone() == (None, None)
    articles(conn, range(3, 4))  # the table is written as any other now
    assert conn.execute("SELECT to_regclass(%s) IS NOT NULL", (V2,)).fetchone() == (True,)
    conn.execute(f"DROP TABLE {V2} CASCADE")
    conn.execute("DROP TABLE articles_chunks CASCADE")
    conn.execute("SELECT qvl.create_vectorizer('articles', text_columns => '{title, body}', dimensions => 32, "
                 "chunking => qvl.chunk_text(tokens => 32, overlap => 4))")
    vid = conn.execute("SELECT id FROM qvl.vectorizer").fetchone()[0]  # type: ignore[index]
    conn.execute("SELECT qvl.reembed('articles', service => %s, shadow => %s)", (new_service.http_url, V2))
    conn.execute("SELECT qvl.drop_vectorizer('articles', drop_column => true)")
    assert conn.execute("SELECT to_regclass(%s), to_regclass(%s), to_regclass(%s)",
                        (V2, V2 + "_view", f"qvl.shadow_queue_{vid}")).fetchone() == (None, None, None)
