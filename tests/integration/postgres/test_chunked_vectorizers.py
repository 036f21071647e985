"""Chunked vectorizers (issue 21 item 5): a PDF's pages, a video's windows and a text's passages as rows
of a destination table, kept in step with their rows by the real worker and the real service.

Each chunk's vector must be the service's embedding of its part sent alone (the page with the row's
title, the text slice, the clip), compared by cosine as tests/integration/service/test_documents.py
does (pages and passages >= 0.9999, clips >= 0.998).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from connectors.client import Client
from qvl_proto import vectorizer_pb2 as pb
from tests.document_factory import encrypted_pdf, pdf_of, pictures, video_of
from tests.integration.postgres.conftest import cosines, drain, role_dsn, running, vec, wait_until
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]

PICTURES = pictures(5, seed=11)
PDF3, PDF2, PDF5 = pdf_of(PICTURES[:3]), pdf_of(PICTURES[3:5]), pdf_of(PICTURES)
ARTICLE = " ".join(f"Section {p}: the ferry left the harbour at {p + 6} o'clock with {p * 13} passengers aboard. "
                   f"Each sentence differs a little ({p})." + ("\n\n" if p % 4 == 3 else "") for p in range(24))


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Iterator[Client]:
    with Client(service.grpc_target) as c:
        yield c


def chunks(conn: psycopg.Connection[Any], table: str, key: int) -> list[tuple[int, dict[str, Any], np.ndarray]]:
    rows = conn.execute(f"SELECT chunk_seq, locator, embedding::text FROM {table} WHERE id = %s ORDER BY chunk_seq",
                        (key,)).fetchall()
    return [(seq, loc, vec(e)) for seq, loc, e in rows]


def manuals(conn: psycopg.Connection[Any], max_pages: int | None = None) -> None:
    conn.execute("CREATE TABLE manuals (id int PRIMARY KEY, title text, pdf bytea, note text)")
    conn.execute("SELECT qvl.create_vectorizer('manuals', text_columns => '{title}', document_columns => '{pdf}', "
                 "chunking => qvl.chunk_pages(max_pages => %s), destination => 'manual_pages')", (max_pages,))


def page_item(pdf: bytes, page: int, title: str) -> pb.Item:
    """A page sent alone, as the worker sends the row (document, then the title)."""
    return pb.Item(parts=[pb.Part(document=pdf, page=page), pb.Part(text=title)])


def test_chunk_configurations_and_their_refusals(conn: psycopg.Connection[Any]) -> None:
    assert conn.execute("SELECT qvl.chunk_pages()").fetchone() == ({"type": "pages"},)
    assert conn.execute("SELECT qvl.chunk_pages(max_pages => 500)").fetchone() == ({"type": "pages",
                                                                                     "max_pages": 500},)
    assert conn.execute("SELECT qvl.chunk_video(seconds => 10, overlap => 2)").fetchone() == (
        {"type": "video", "seconds": 10, "overlap": 2},)
    assert conn.execute("SELECT qvl.chunk_text()").fetchone() == ({"type": "text", "tokens": 512, "overlap": 64},)
    for call, words in [("qvl.chunk_pages(max_pages => 0)", "max_pages must be at least 1"),
                        ("qvl.chunk_video(seconds => 0)", "seconds must be a positive number"),
                        ("qvl.chunk_video(seconds => 5, overlap => 5)", "overlap must be at least 0 and less"),
                        ("qvl.chunk_text(tokens => 4)", "tokens must be at least 8"),
                        ("qvl.chunk_text(tokens => 64, overlap => 64)", "overlap must be at least 0 and less")]:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
            conn.execute(f"SELECT {call}")
        assert words in str(err.value) and err.value.diag.message_hint, call
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, title text, body text, pdf bytea, pics bytea[])")
    for args, words in [
        ("text_columns => '{body}', chunking => '{\"type\": \"pages\"}'", "none is given"),
        ("document_columns => '{pdf}'", "need chunking"),
        ("document_columns => '{pdf}', chunking => qvl.chunk_text()", "needs chunking => qvl.chunk_pages()"),
        ("document_columns => '{title}', chunking => '{\"type\": \"lines\"}'", "type must be pages, video or text"),
        ("video_columns => '{pics}', chunking => qvl.chunk_video()", "has no times to cut"),
        ("text_columns => '{title, body}', chunking => qvl.chunk_text(), chunk_context => false",
         "embeds each chunk alone"),
        ("text_columns => '{body}', chunking => qvl.chunk_text(), mode => 'sync'", "mode must be async"),
    ]:
        with pytest.raises(psycopg.Error) as err:
            conn.execute(f"SELECT qvl.create_vectorizer('t', {args})")
        assert words in str(err.value) or words in (err.value.diag.message_hint or ""), (args, str(err.value))


def test_each_page_is_its_page_sent_alone_and_bad_documents_fail_alone(
        conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess, client: Client) -> None:
    manuals(conn, max_pages=4)
    good = {1: (PDF3, "crane manual"), 2: (PDF2, "pump manual")}
    with conn.cursor() as cur:
        for key, (pdf, title) in good.items():
            cur.execute("INSERT INTO manuals VALUES (%s, %s, %s, 'n')", (key, title, pdf))
        cur.execute("INSERT INTO manuals VALUES (3, 'not a pdf', %s, 'n')", (b"GIF89a, not a PDF at all",))
        cur.execute("INSERT INTO manuals VALUES (4, 'too long', %s, 'n')", (PDF5,))
        cur.execute("INSERT INTO manuals VALUES (5, 'truncated', %s, 'n')", (PDF3[: len(PDF3) // 2],))
        cur.execute("INSERT INTO manuals VALUES (6, 'locked', %s, 'n')", (encrypted_pdf(),))
    drain(qvl_db, service.grpc_target)

    for key, (pdf, title) in good.items():
        got = chunks(conn, "manual_pages", key)
        pages = len(PICTURES[:3]) if key == 1 else 2
        assert [(seq, loc) for seq, loc, _ in got] == [(n - 1, {"page": n}) for n in range(1, pages + 1)]
        alone = client.embed([page_item(pdf, n, title) for n in range(1, pages + 1)])
        assert cosines(np.stack([v for _, _, v in got]), alone).min() >= 0.9999
    failed = dict(conn.execute("SELECT pk, error FROM qvl.failed_items('manuals')").fetchall())
    assert sorted(failed) == ["3", "4", "5", "6"], failed
    assert all(failed[k].startswith(f"row {k} of public.manuals") for k in failed), failed
    assert "not a PDF" in failed["3"]
    assert "max_pages" in failed["4"] and "5 pages" in failed["4"]
    assert "truncated or damaged" in failed["5"]
    assert "encrypted" in failed["6"]
    assert conn.execute("SELECT count(*) FROM manual_pages WHERE id > 2").fetchone() == (0,)
    # The view joins each chunk to its row.
    assert conn.execute("SELECT id, title, chunk_seq, locator FROM manual_pages_view ORDER BY id, chunk_seq"
                        ).fetchall() == [(1, "crane manual", 0, {"page": 1}), (1, "crane manual", 1, {"page": 2}),
                                         (1, "crane manual", 2, {"page": 3}), (2, "pump manual", 0, {"page": 1}),
                                         (2, "pump manual", 1, {"page": 2})]
    status = conn.execute("SELECT pending, failed FROM qvl.vectorizer_status WHERE name = 'manuals'").fetchone()
    assert status == (0, 4)
    # Fixed rows are embedded again after retry_failed.
    conn.execute("UPDATE manuals SET pdf = %s WHERE id = 3", (PDF2,))
    conn.execute("SELECT qvl.retry_failed('manuals')")
    drain(qvl_db, service.grpc_target)
    assert [loc for _, loc, _ in chunks(conn, "manual_pages", 3)] == [{"page": 1}, {"page": 2}]
    assert sorted(k for k, in conn.execute("SELECT pk FROM qvl.failed_items('manuals')").fetchall()) == ["4", "5", "6"]


def test_updates_replace_a_rows_chunks_at_once_and_deletes_take_them(
        conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess) -> None:
    manuals(conn)
    conn.execute("INSERT INTO manuals VALUES (1, 'crane manual', %s, 'n'), (2, 'pump manual', %s, 'n')",
                 (PDF3, PDF2))
    drain(qvl_db, service.grpc_target)
    old = {e for _, _, e in ((s, loc, v.tobytes()) for s, loc, v in chunks(conn, "manual_pages", 1))}
    assert len(old) == 3
    conn.execute("UPDATE manuals SET note = 'not embedded'")  # no input column changed: nothing queued
    assert conn.execute("SELECT pending FROM qvl.vectorizer_status WHERE name = 'manuals'").fetchone() == (0,)

    # A reader polls row 1's chunks while the worker replaces them: it sees the old set or the new one.
    seen: list[tuple[int, int]] = []  # (old vectors, new-or-other vectors) per read
    done = threading.Event()

    def reader() -> None:
        with psycopg.connect(qvl_db, autocommit=True) as c:
            while not done.is_set():
                got = [bytes(v.tobytes()) for _, _, v in chunks(c, "manual_pages", 1)]
                seen.append((sum(g in old for g in got), sum(g not in old for g in got)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with running(qvl_db, service.grpc_target):
            conn.execute("UPDATE manuals SET pdf = %s, title = 'crane manual, 2nd edition' WHERE id = 1", (PDF2,))
            wait_until(lambda: conn.execute("SELECT qvl.wait_for_embeddings('manuals', '1 s')").fetchone() == (True,))
    finally:
        done.set()
        thread.join()
    assert (3, 0) in seen and seen[-1] == (0, 2), seen[-5:]
    assert all(s in ((3, 0), (0, 2)) for s in seen), sorted(set(seen))
    assert [loc for _, loc, _ in chunks(conn, "manual_pages", 1)] == [{"page": 1}, {"page": 2}]

    # A deleted row's chunks go with it, in its own transaction; the worker then forgets its entry.
    conn.execute("DELETE FROM manuals WHERE id = 2")
    assert chunks(conn, "manual_pages", 2) == []
    drain(qvl_db, service.grpc_target)
    assert conn.execute("SELECT pending, failed FROM qvl.vectorizer_status WHERE name = 'manuals'").fetchone() == (0, 0)
    # A key change takes the old key's chunks; the new key is embedded.
    conn.execute("UPDATE manuals SET id = 7 WHERE id = 1")
    assert chunks(conn, "manual_pages", 1) == []
    drain(qvl_db, service.grpc_target)
    assert len(chunks(conn, "manual_pages", 7)) == 2
    conn.execute("UPDATE manuals SET pdf = %s WHERE id = 7", (PDF3,))  # the document alone changes
    drain(qvl_db, service.grpc_target)
    assert len(chunks(conn, "manual_pages", 7)) == 3
    conn.execute("UPDATE manuals SET pdf = NULL WHERE id = 7")  # no document: no chunks (the title alone is none)
    drain(qvl_db, service.grpc_target)
    assert chunks(conn, "manual_pages", 7) == []
    assert conn.execute("SELECT pending, failed FROM qvl.vectorizer_status WHERE name = 'manuals'").fetchone() == (0, 0)
    conn.execute("UPDATE manuals SET pdf = %s WHERE id = 7", (PDF2,))
    drain(qvl_db, service.grpc_target)
    conn.execute("TRUNCATE manuals")
    assert conn.execute("SELECT count(*) FROM manual_pages").fetchone() == (0,)


def test_each_passage_is_its_text_slice_sent_alone(conn: psycopg.Connection[Any], qvl_db: str,
                                                     service: ServiceProcess, client: Client) -> None:
    conn.execute("CREATE TABLE articles (id int PRIMARY KEY, title text, body text)")
    conn.execute("INSERT INTO articles VALUES (1, 'Ferry log', %s)", (ARTICLE,))
    conn.execute("SELECT qvl.create_vectorizer('articles', text_columns => '{title, body}', "
                 "chunking => qvl.chunk_text(tokens => 64, overlap => 8))")
    drain(qvl_db, service.grpc_target)
    got = chunks(conn, "articles_chunks", 1)
    assert len(got) > 3
    spans = [(loc["char_start"], loc["char_end"]) for _, loc, _ in got]
    assert spans[0][0] == 0 and all(a < b for a, b in spans)
    alone = client.embed([pb.Item(parts=[pb.Part(text="Ferry log"), pb.Part(text=ARTICLE[a:b])]) for a, b in spans])
    assert cosines(np.stack([v for _, _, v in got]), alone).min() >= 0.9999


def test_each_clip_is_its_span_sent_alone(conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess,
                                          client: Client) -> None:
    video = video_of(PICTURES[:4], fps=2, repeat=4)  # 16 frames: 8 s
    conn.execute("CREATE TABLE talks (id int PRIMARY KEY, clip bytea)")
    conn.execute("INSERT INTO talks VALUES (1, %s)", (video,))
    conn.execute("SELECT qvl.create_vectorizer('talks', video_columns => '{clip}', "
                 "chunking => qvl.chunk_video(seconds => 3, overlap => 1), destination => 'talk_clips')")
    drain(qvl_db, service.grpc_target)
    got = chunks(conn, "talk_clips", 1)
    spans = [(loc["start_s"], loc["end_s"]) for _, loc, _ in got]
    assert spans == [(0, 3), (2, 5), (4, 7), (6, 8)]
    alone = client.embed([{"video": video, "start_s": s, "end_s": e} for s, e in spans])
    assert cosines(np.stack([v for _, _, v in got]), alone).min() >= 0.998
    assert json.loads(json.dumps(got[0][1])) == {"start_s": 0, "end_s": 3}


# -- search ----------------------------------------------------------------------------------------
def test_search_chunks_reranks_each_candidate_part_and_search_ranks_rows_by_their_best(
        conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess, client: Client) -> None:
    manuals(conn)
    docs = {1: (PDF3, "crane manual"), 2: (PDF2, "pump manual")}
    conn.execute("INSERT INTO manuals VALUES (1, 'crane manual', %s, 'a'), (2, 'pump manual', %s, 'b')",
                 (PDF3, PDF2))
    drain(qvl_db, service.grpc_target)
    query = "a pump with a blue housing"

    got = conn.execute("SELECT pk, chunk_seq, locator, distance, score FROM qvl.search_chunks('manuals', %s, k => 4, "
                       "candidates => 5)", (query,)).fetchall()
    assert len(got) == 4
    scores = [r[4] for r in got]
    assert scores == sorted(scores, reverse=True)
    parts = [page_item(docs[int(pk)][0], loc["page"], docs[int(pk)][1]) for pk, _, loc, _, _ in got]
    assert [loc["page"] - 1 for _, _, loc, _, _ in got] == [seq for _, seq, _, _, _ in got]
    direct = client.rerank(query, parts).scores
    assert np.allclose(scores, direct, atol=1e-4), (scores, list(direct))

    # Without the reranker: the nearest chunks, nearest first; every candidate chunk among 5.
    near = conn.execute("SELECT pk, chunk_seq, distance, score FROM qvl.search_chunks('manuals', %s, k => 5, "
                        "rerank => false)", (query,)).fetchall()
    assert len(near) == 5 and all(r[3] is None for r in near)
    assert [r[2] for r in near] == sorted(r[2] for r in near)

    # The filter is a condition on the table's columns (the chunk table's key names do not clash).
    only = conn.execute("SELECT DISTINCT pk FROM qvl.search_chunks('manuals', %s, "
                        "filter => 'id = 2 AND note = ''b''')", (query,)).fetchall()
    assert only == [("2",)]
    structured = conn.execute("SELECT DISTINCT pk FROM qvl.search_chunks('manuals', %s, "
                              "'{\"column\": \"title\", \"op\": \"like\", \"value\": \"crane%%\"}'::jsonb)",
                              (query,)).fetchall()
    assert structured == [("1",)]
    with pytest.raises(psycopg.errors.SyntaxError):
        conn.execute("SELECT * FROM qvl.search_chunks('manuals', %s, filter => 'true) OR (true')", (query,))
    with pytest.raises(psycopg.Error, match="the filter"):
        conn.execute("SELECT * FROM qvl.search_chunks('manuals', %s, filter => 'id IN (SELECT c.oid::int FROM "
                     "pg_class c)')", (query,))

    # qvl.search: each row once, ranked by its best part's score.
    rows = conn.execute("SELECT pk, distance, score FROM qvl.search('manuals', %s, k => 2)", (query,)).fetchall()
    every = conn.execute("SELECT pk, distance, score FROM qvl.search_chunks('manuals', %s, k => 10)",
                         (query,)).fetchall()
    best = {pk: max(s for p, _, s in every if p == pk) for pk in ("1", "2")}
    nearest = {pk: min(d for p, d, _ in every if p == pk) for pk in ("1", "2")}
    assert [r[0] for r in rows] == sorted(best, key=lambda pk: -best[pk])
    for pk, distance, score in rows:
        assert abs(score - best[pk]) < 1e-5 and abs(distance - nearest[pk]) < 1e-5

    with pytest.raises(psycopg.errors.FeatureNotSupported, match="keeps chunks"):
        conn.execute("SELECT * FROM qvl.rerank_rows('manuals', 'x', ARRAY[1, 2])")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="keeps chunks"):
        conn.execute("SELECT * FROM qvl.hybrid_search('manuals', 'x')")
    conn.execute("CREATE TABLE plain (id int PRIMARY KEY, body text)")
    conn.execute("SELECT qvl.create_vectorizer('plain', text_columns => '{body}', dimensions => 32)")
    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        conn.execute("SELECT * FROM qvl.search_chunks('plain', 'x')")
    assert "one vector per row" in str(err.value) and "qvl.search('plain'" in (err.value.diag.message_hint or "")


def test_grants_schema_guard_reembed_and_drop_of_a_chunked_vectorizer(
        conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess) -> None:
    manuals(conn)
    conn.execute("INSERT INTO manuals VALUES (1, 'crane manual', %s, 'n')", (PDF2,))
    # The worker's role: the key and input columns to read, the chunk table to replace chunks in; not
    # one column of the table to write.
    rights = conn.execute("""
        SELECT has_column_privilege('qvl_worker', 'manuals', 'pdf', 'SELECT'),
               has_column_privilege('qvl_worker', 'manuals', 'note', 'SELECT'),
               has_any_column_privilege('qvl_worker', 'manuals', 'UPDATE'),
               has_table_privilege('qvl_worker', 'manual_pages', 'SELECT, INSERT, DELETE'),
               has_table_privilege('qvl_worker', 'manual_pages', 'UPDATE'),
               has_table_privilege('qvl_worker', 'manual_pages', 'TRUNCATE')""").fetchone()
    assert rights == (True, False, False, True, False, False)
    owner = conn.execute("SELECT c.relowner = t.relowner FROM pg_class c, pg_class t "
                         "WHERE c.oid = 'manual_pages'::regclass AND t.oid = 'manuals'::regclass").fetchone()
    assert owner == (True,)
    assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'manual_pages' AND indexdef LIKE '%hnsw%'"
                        ).fetchone() == (1,)
    drain(qvl_db, service.grpc_target)
    assert len(chunks(conn, "manual_pages", 1)) == 2
    fingerprint = conn.execute("SELECT model_fingerprint FROM qvl.vectorizer WHERE name = 'manuals'").fetchone()
    assert fingerprint is not None and fingerprint[0] is not None  # the first write recorded the model

    # The schema guard: other columns change freely; a renamed key is followed into the chunk table;
    # the document column may not go.
    conn.execute("ALTER TABLE manuals ADD COLUMN extra int")
    conn.execute("ALTER TABLE manuals RENAME COLUMN id TO manual_id")
    assert conn.execute("SELECT manual_id, chunk_seq FROM manual_pages ORDER BY 2").fetchall() == [(1, 0), (1, 1)]
    with pytest.raises(psycopg.errors.DependentObjectsStillExist, match="input column pdf"):
        conn.execute("ALTER TABLE manuals DROP COLUMN pdf CASCADE")
    # The view lists the table's columns: PostgreSQL refuses to drop one under it; with CASCADE the view
    # goes and the guard makes it again without the column.
    conn.execute("ALTER TABLE manuals DROP COLUMN extra CASCADE")
    assert "extra" not in [c.name for c in conn.execute("SELECT * FROM manual_pages_view LIMIT 0").description]
    conn.execute("UPDATE manuals SET title = 'crane manual v2'")
    drain(qvl_db, service.grpc_target)
    assert conn.execute("SELECT count(*) FROM manual_pages_view WHERE title = 'crane manual v2'").fetchone() == (2,)

    # reembed queues every row again (the chunks stay until replaced); a new size is refused with a hint.
    assert conn.execute("SELECT qvl.reembed('manuals')").fetchone() == (1,)
    with pytest.raises(psycopg.errors.FeatureNotSupported) as err:
        conn.execute("SELECT qvl.reembed('manuals', dimensions => 16)")
    assert "drop_vectorizer" in (err.value.diag.message_hint or "")
    drain(qvl_db, service.grpc_target)

    # Dropped: the chunks stay (no longer updated) unless drop_column, which drops the table and view.
    conn.execute("SELECT qvl.drop_vectorizer('manuals')")
    assert conn.execute("SELECT count(*) FROM manual_pages").fetchone() == (2,)
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'manuals'::regclass AND NOT tgisinternal"
                        ).fetchone() == (0,)
    conn.execute("DROP TABLE manual_pages CASCADE")
    conn.execute("SELECT qvl.create_vectorizer('manuals', document_columns => '{pdf}', "
                 "chunking => qvl.chunk_pages())")
    conn.execute("SELECT qvl.drop_vectorizer('manuals', drop_column => true)")
    assert conn.execute("SELECT to_regclass('manuals_chunks'), to_regclass('manuals_chunks_view')").fetchone() == (
        None, None)


def test_sqlalchemy_declares_a_chunked_vectorizer_and_searches_its_chunks(qvl_db: str, service: ServiceProcess,
                                                                          client: Client) -> None:
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table, Text, create_engine, select
    from sqlalchemy.engine import URL

    from connectors.postgres.sqlalchemy import Vectorizer, chunk_pages, search_chunks

    info = conninfo_to_dict(qvl_db)
    engine = create_engine(URL.create("postgresql+psycopg", username=str(info["user"]), host=str(info["host"]),
                                      port=int(info["port"]), database=str(info["dbname"])))
    table = Table("booklets", MetaData(), Column("id", Integer, primary_key=True), Column("title", Text),
                  Column("pdf", LargeBinary))
    booklets = Vectorizer(table, text=[table.c.title], documents=[table.c.pdf], chunking=chunk_pages(max_pages=10),
                          destination="booklet_pages")
    with engine.begin() as conn:
        table.create(conn)
        assert booklets.create(conn) is not None
        conn.execute(table.insert(), [{"id": 1, "title": "crane manual", "pdf": PDF3},
                                      {"id": 2, "title": "pump manual", "pdf": PDF2}])
    drain(qvl_db, service.grpc_target)
    with engine.connect() as conn:
        hits = booklets.search_chunks("a blue pump", k=3, candidates=5, filter=table.c.id == 2)
        got = conn.execute(select(hits.c.pk, hits.c.chunk_seq, hits.c.locator, hits.c.score)).all()
        assert {pk for pk, *_ in got} == {"2"} and sorted(loc["page"] for _, _, loc, _ in got) == [1, 2]
        assert [s for *_, s in got] == sorted((s for *_, s in got), reverse=True)
        direct = client.rerank("a blue pump", [page_item(PDF2, loc["page"], "pump manual") for _, _, loc, _ in got])
        assert np.allclose([s for *_, s in got], direct.scores, atol=1e-4)
        near = conn.execute(select(search_chunks("booklets", "a blue pump", k=5, rerank=False))).all()
        assert len(near) == 5 and all(r.score is None for r in near)


def test_the_sql_of_documents_md_in_postgres_runs(conn: psycopg.Connection[Any], qvl_db: str,
                                                  service: ServiceProcess) -> None:
    """docs/documents.md, "In Postgres": each block in order; after one that creates tables, the rows an
    application would insert, embedded; every statement of the other blocks returns rows."""
    from pathlib import Path

    from tests.support.doc_snippets import run_by

    blocks = run_by(Path(__file__).parents[3] / "docs" / "documents.md", __file__, "sql")
    assert len(blocks) >= 5
    rows = {"manuals": [(1, "crane manual", PDF3), (2, "pump manual", PDF2)],
            "talks": [(1, "squares", video_of(PICTURES[:3], fps=2, repeat=2))],
            "articles": [(1, "Ferry log", ARTICLE)]}
    for sql in blocks:
        created = [t for t in rows if f"CREATE TABLE {t} " in sql]
        cur = conn.execute(sql)
        if created:
            for table in created:
                with conn.cursor() as c:
                    c.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", rows[table])
            drain(qvl_db, service.grpc_target)
            continue
        while True:
            assert cur.fetchall(), sql
            if not cur.nextset():
                break


def test_a_document_column_of_uris_is_read_by_the_service(conn: psycopg.Connection[Any], qvl_db: str,
                                                          service_pool: Any, tmp_path: Any) -> None:
    """A text document column holds a URI the service may read (QVL_ALLOW_URI_SCHEMES / _ROOTS)."""
    folder = tmp_path / "manuals"
    folder.mkdir()
    (folder / "crane.pdf").write_bytes(PDF3)
    uri = (folder / "crane.pdf").as_uri()
    svc = service_pool.get(env={"QVL_ALLOW_URI_SCHEMES": "file", "QVL_ALLOW_URI_ROOTS": str(folder)})
    conn.execute("CREATE TABLE linked (id int PRIMARY KEY, title text, uri text)")
    conn.execute("INSERT INTO linked VALUES (1, 'crane manual', %s), (2, 'elsewhere', 'file:///etc/hostname')", (uri,))
    conn.execute("SELECT qvl.create_vectorizer('linked', text_columns => '{title}', document_columns => '{uri}', "
                 "chunking => qvl.chunk_pages())")
    drain(qvl_db, svc.grpc_target)
    got = chunks(conn, "linked_chunks", 1)
    assert [loc for _, loc, _ in got] == [{"page": n} for n in (1, 2, 3)]
    with Client(svc.grpc_target) as c:
        alone = c.embed([pb.Item(parts=[pb.Part(document_uri=uri, page=n), pb.Part(text="crane manual")])
                         for n in (1, 2, 3)])
    assert cosines(np.stack([v for _, _, v in got]), alone).min() >= 0.9999
    failed = conn.execute("SELECT pk, error FROM qvl.failed_items('linked')").fetchall()
    assert [pk for pk, _ in failed] == ["2"] and failed[0][1].startswith("row 2 of public.linked"), failed


def test_search_chunks_reads_with_the_callers_rights(conn: psycopg.Connection[Any], qvl_db: str,
                                                     service: ServiceProcess) -> None:
    """Row-level security on the table holds for qvl.search_chunks and the view; a role without SELECT on
    the chunk table is refused."""
    manuals(conn)
    conn.execute("INSERT INTO manuals VALUES (1, 'crane manual', %s, 'a'), (2, 'pump manual', %s, 'b')",
                 (PDF3, PDF2))
    drain(qvl_db, service.grpc_target)
    role = f"chunk_reader_{uuid.uuid4().hex[:8]}"  # roles are the cluster's: one of this test's own
    conn.execute(f"CREATE ROLE {role} LOGIN; GRANT SELECT ON manuals, manual_pages_view TO {role}; "
                 "ALTER TABLE manuals ENABLE ROW LEVEL SECURITY; "
                 f"CREATE POLICY only_cranes ON manuals TO {role} USING (title LIKE 'crane%')")
    with psycopg.connect(role_dsn(qvl_db, role), autocommit=True) as reader:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="manual_pages"):
            reader.execute("SELECT * FROM qvl.search_chunks('manuals', 'a pump')")
        conn.execute(f"GRANT SELECT ON manual_pages TO {role}")
        got = reader.execute("SELECT DISTINCT pk FROM qvl.search_chunks('manuals', 'a pump', k => 10)").fetchall()
        assert got == [("1",)]
        assert reader.execute("SELECT DISTINCT id FROM manual_pages_view").fetchall() == [(1,)]
        assert reader.execute("SELECT pk FROM qvl.search('manuals', 'a pump')").fetchall() == [("1",)]
    conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.mark.lifecycle  # a renderer process killed (and a service of its own)
def test_a_document_that_kills_its_renderer_fails_alone(conn: psycopg.Connection[Any], qvl_db: str,
                                                        service_pool: Any) -> None:
    """The service's test hook aborts the renderer on a marker in the file: that row fails with the
    reason, named by its key; its neighbours are embedded."""
    marker = "QVL-CRASH-THE-RENDERER"
    svc = service_pool.get(env={"QVL_TEST_RENDERER_CRASH_ON": marker})
    manuals(conn)
    conn.execute("INSERT INTO manuals VALUES (1, 'a', %s, 'n'), (2, 'b', %s, 'n'), (3, 'c', %s, 'n')",
                 (PDF2, PDF3 + f"% {marker}\n".encode(), PDF3))
    drain(qvl_db, svc.grpc_target, retry_delay_s=0.2, max_attempts=2)  # (a crash is tried again, alone)
    assert [len(chunks(conn, "manual_pages", k)) for k in (1, 2, 3)] == [2, 0, 3]
    failed = conn.execute("SELECT pk, error FROM qvl.failed_items('manuals')").fetchall()
    assert [pk for pk, _ in failed] == ["2"], failed
    assert failed[0][1].startswith("row 2 of public.manuals") and "renderer died" in failed[0][1], failed
