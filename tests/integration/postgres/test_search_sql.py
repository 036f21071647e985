"""Issue 13: search as pieces that fit pgvector's idiom, filters, keys in the table's own type,
hybrid search, row-level security and what a filter may read. Real Postgres, the real service."""

from __future__ import annotations

import urllib.request
import uuid
from typing import Any

import numpy as np
import psycopg
import pytest

from connectors.client import Client
from tests.integration.postgres.conftest import cosines, drain, vec
from tests.integration.postgres.test_security_and_upgrade import role_dsn
from tests.media_factory import image_bytes, video_bytes
from tests.support.service import ServiceProcess
from vectorizer_service.core.settings import DEFAULT_QUERY_INSTRUCTION

pytestmark = [pytest.mark.postgres, pytest.mark.service]

COLOURS = ("red", "green", "blue", "grey")
THINGS = ("boat", "house", "car", "tree", "bird")


def caption(i: int) -> str:
    return f"{COLOURS[i % 4]} {THINGS[i % 5]} number {i}"


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Any:
    with Client(service.grpc_target) as c:
        yield c


def embed_calls(service: ServiceProcess) -> float:
    """POST /v1/embed calls the service has answered (its /metrics)."""
    with urllib.request.urlopen(service.http_url + "/metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("qvl_requests_total{")
               and 'endpoint="http /v1/embed"' in line and 'code="200"' in line)


def plan(conn: psycopg.Connection[Any], sql: str, *args: Any) -> str:
    return "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, args))


def index_scans(conn: psycopg.Connection[Any], index: str) -> int:
    """Scans of an index this backend has not yet reported (grows within a transaction)."""
    return conn.execute("SELECT pg_stat_get_xact_numscans(%s::regclass)", (index,)).fetchone()[0]  # type: ignore[index]


# -- qvl.query_embedding ----------------------------------------------------------------------------
def test_query_embedding_is_one_service_call_per_statement_and_serves_the_index(
        conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess, client: Client) -> None:
    conn.execute("CREATE TABLE v (id int PRIMARY KEY, caption text)")
    conn.execute("CREATE TABLE h (id int PRIMARY KEY, caption text)")
    conn.execute("CREATE TABLE b (id int PRIMARY KEY, caption text)")
    for table in ("v", "h", "b"):
        conn.execute(f"INSERT INTO {table} SELECT g, 'caption ' || g FROM generate_series(1, 200) g")
    conn.execute("SELECT qvl.create_vectorizer('v', text_columns => ARRAY['caption'], dimensions => 32, "
                 "query_instruction => 'Find the caption.')")
    conn.execute("SELECT qvl.create_vectorizer('h', text_columns => ARRAY['caption'], storage => 'halfvec')")
    conn.execute("SELECT qvl.create_vectorizer('b', text_columns => ARRAY['caption'], storage => 'bit')")
    drain(qvl_db, service.grpc_target)
    conn.execute("ANALYZE v, h, b")

    # The vectorizer's own size and query instruction.
    got = vec(conn.execute("SELECT qvl.query_embedding('v', 'red shoes')::text").fetchone()[0])  # type: ignore[index]
    assert got.shape == (32,)
    assert cosines(got, client.embed(["red shoes"], instruction="Find the caption.", dimensions=32)[0]) >= 0.9999
    got = vec(conn.execute("SELECT qvl.query_embedding_halfvec('h', 'red shoes')::text").fetchone()[0])  # type: ignore[index]
    assert cosines(got, client.embed(["red shoes"], instruction=DEFAULT_QUERY_INSTRUCTION)[0]) >= 0.999
    bits = conn.execute("SELECT qvl.query_embedding_bit('b', 'red shoes')::text").fetchone()[0]  # type: ignore[index]
    want = client.embed(["red shoes"], instruction=DEFAULT_QUERY_INSTRUCTION)[0]
    assert bits == "".join("1" if x > 0 else "0" for x in want)  # binary_quantize's rule
    assert conn.execute("SELECT qvl.query_embedding_bit('v', 'red shoes') = "
                        "binary_quantize(qvl.query_embedding('v', 'red shoes'))").fetchone() == (True,)
    # An image, or a caption with a video, as the query.
    pic, clip = image_bytes("PNG", (64, 48), seed=5), video_bytes()
    got = vec(conn.execute("SELECT qvl.query_embedding('v', %s::bytea)::text", (pic,)).fetchone()[0])  # type: ignore[index]
    assert cosines(got, client.embed([{"image": pic}], instruction="Find the caption.", dimensions=32)[0]) >= 0.9999
    got = vec(conn.execute("SELECT qvl.query_embedding('v', 'a clip', video => %s)::text",
                           (clip,)).fetchone()[0])  # type: ignore[index]
    want = client.embed([{"video": clip, "text": "a clip"}], instruction="Find the caption.", dimensions=32)[0]
    assert cosines(got, want) >= 0.9999

    # The natural query uses each column's HNSW index: vector, halfvec (vector casts to halfvec), bit.
    idiom = {
        "v": "SELECT id FROM v ORDER BY embedding <=> qvl.query_embedding('v', %s) LIMIT 10",
        "h": "SELECT id FROM h ORDER BY embedding <=> qvl.query_embedding('h', %s) LIMIT 10",
        "b": "SELECT id FROM b ORDER BY embedding <~> qvl.query_embedding_bit('b', %s) LIMIT 10",
    }
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # 200 rows: the planner would rather read them all
        for table, sql in idiom.items():
            assert f"Index Scan using {table}_embedding_hnsw" in plan(conn, sql, "q"), table
        assert "Index Scan using h_embedding_hnsw" in plan(
            conn, "SELECT id FROM h ORDER BY embedding <=> qvl.query_embedding_halfvec('h', %s) LIMIT 10", "q")
        # The InitPlan form (one call even when the plan reads every row) keeps the index too.
        assert "Index Scan using v_embedding_hnsw" in plan(
            conn, "SELECT id FROM v ORDER BY embedding <=> (SELECT qvl.query_embedding('v', %s)) LIMIT 10", "q")

    # One service call per statement: through the index (11 evaluations for LIMIT 10) and under a
    # filter that sorts every row a sequential scan reads (150 evaluations).
    before = embed_calls(service)
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        for n in range(3):
            assert len(conn.execute(idiom["v"], (f"query {n}",)).fetchall()) == 10
    assert embed_calls(service) - before == 3
    before = embed_calls(service)
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        sql = "SELECT id FROM v WHERE id > 50 ORDER BY embedding <=> qvl.query_embedding('v', %s) LIMIT 10"
        assert "Seq Scan on v" in plan(conn, sql, "q")
        rows = conn.execute(sql, ("one call",)).fetchall()
        assert len(rows) == 10 and all(i > 50 for (i,) in rows)
    assert embed_calls(service) - before == 1
    # The next statement with the same query asks again: remembered for one statement only.
    before = embed_calls(service)
    conn.execute(idiom["v"], ("one call",))
    assert embed_calls(service) - before == 1

    assert conn.execute("SELECT qvl.query_embedding('v', NULL::text)").fetchone() == (None,)
    with pytest.raises(psycopg.errors.DatatypeMismatch) as caught:
        conn.execute("SELECT qvl.query_embedding('b', 'q')")
    assert "qvl.query_embedding_bit('b', ...)" in (caught.value.diag.message_hint or "")
    with pytest.raises(psycopg.errors.DatatypeMismatch):
        conn.execute("SELECT qvl.query_embedding_halfvec('v', 'q')")
    with pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("SELECT qvl.query_embedding('nope', 'q')")


# -- filters ------------------------------------------------------------------------------------------
def random_vectors(conn: psycopg.Connection[Any], n: int, dims: int) -> None:
    """Rows whose vectors are written directly (seeded random): searching them needs no worker."""
    rng = np.random.default_rng(13)
    values = rng.normal(size=(n, dims)).astype(np.float32)
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany("INSERT INTO r (id, bucket, caption, embedding) VALUES (%s, %s, %s, %s::vector)",
                        [(i, i % 1000, caption(i), "[" + ",".join(map(str, values[i])) + "]") for i in range(n)])


def exact_ids(conn: psycopg.Connection[Any], qvec: str, where: str, limit: int) -> list[int]:
    return [r[0] for r in conn.execute(
        f"SELECT id FROM (SELECT id, embedding FROM r WHERE {where} OFFSET 0) s "
        "ORDER BY embedding <=> %s::vector LIMIT %s", (qvec, limit))]


def test_filtered_search_keeps_recall_at_every_selectivity(conn: psycopg.Connection[Any]) -> None:
    """Many rows pass (half of 5,000): the HNSW index with an iterative scan; few pass (5 %, 0.4 %):
    every passing row compared. Either way the rows are the exact nearest of the filtered set."""
    conn.execute("CREATE TABLE r (id int PRIMARY KEY, bucket int NOT NULL, caption text)")
    conn.execute("SELECT qvl.create_vectorizer('r', text_columns => ARRAY['caption'], dimensions => 32)")
    random_vectors(conn, 5000, 32)  # the queue holds them; nobody needs to drain it
    conn.execute("CREATE INDEX ON r (bucket)")
    conn.execute("ANALYZE r")
    queries = ["a red boat", "green house", "a bird in a tree"]
    for where, passing, index_used in (("bucket < 500", 2500, True), ("bucket < 50", 250, False),
                                       ("bucket IN (1, 2, 3, 4)", 20, False)):
        assert conn.execute(f"SELECT count(*) FROM r WHERE {where}").fetchone() == (passing,)
        recalls = []
        for q in queries:
            qvec = conn.execute("SELECT qvl.query_embedding('r', %s)::text", (q,)).fetchone()[0]  # type: ignore[index]
            want = exact_ids(conn, qvec, where, 10)
            with conn.transaction():  # counts pending in this backend: no flush inside a transaction
                scans = index_scans(conn, "r_embedding_hnsw")
                got = [int(pk) for pk, in conn.execute(
                    "SELECT pk FROM qvl.search('r', %s, k => 10, rerank => false, filter => %s)", (q, where))]
                assert (index_scans(conn, "r_embedding_hnsw") > scans) == index_used, where
            recalls.append(len(set(got) & set(want)) / len(want))
            if not index_used:
                assert got == want
        assert np.mean(recalls) >= 0.95, (where, recalls)
    # An estimate far off (an opaque function: the planner guesses a third of the rows for each
    # call, 10 rows pass): an index scan that comes back short is redone exactly.
    conn.execute("CREATE FUNCTION rare(x int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS "
                 "$$ BEGIN RETURN x % 1000 = 7; END $$")
    qvec = conn.execute("SELECT qvl.query_embedding('r', 'rare')::text").fetchone()[0]  # type: ignore[index]
    got = [int(pk) for pk, in conn.execute(
        "SELECT pk FROM qvl.search('r', 'rare', k => 10, rerank => false, filter => 'rare(id) OR rare(id + 1)')")]
    assert got == exact_ids(conn, qvec, "rare(id) OR rare(id + 1)", 10) and len(got) == 10
    # Without a filter, and a filter nothing passes.
    assert len(conn.execute("SELECT * FROM qvl.search('r', 'q', k => 7, rerank => false)").fetchall()) == 7
    assert conn.execute("SELECT * FROM qvl.search('r', 'q', filter => 'bucket < 0')").fetchall() == []


def test_offset_pages_through_the_same_order(conn: psycopg.Connection[Any], qvl_db: str,
                                             service: ServiceProcess) -> None:
    conn.execute("CREATE TABLE p (id int PRIMARY KEY, caption text, kind int)")
    conn.execute("INSERT INTO p SELECT g, 'caption ' || g, g % 3 FROM generate_series(1, 60) g")
    conn.execute("SELECT qvl.create_vectorizer('p', text_columns => ARRAY['caption'], dimensions => 32)")
    drain(qvl_db, service.grpc_target)
    for rerank in (False, True):
        whole = conn.execute("SELECT pk, score FROM qvl.search('p', 'caption 7', k => 10, candidates => 20, "
                             "rerank => %s, filter => 'kind <> 1')", (rerank,)).fetchall()
        pages = [conn.execute("SELECT pk, score FROM qvl.search('p', 'caption 7', k => 5, candidates => 20, "
                              "rerank => %s, filter => 'kind <> 1', \"offset\" => %s)", (rerank, o)).fetchall()
                 for o in (0, 5)]
        assert pages[0] + pages[1] == whole and len(whole) == 10
        assert all(int(pk) % 3 != 1 for pk, _ in whole)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT * FROM qvl.search('p', 'q', \"offset\" => -1)")


# -- keys in the table's own type -----------------------------------------------------------------------
KEYED_TABLES = {  # name: (key columns DDL, key value SQL of row g, key_type)
    "k_int": ("id int PRIMARY KEY", "g", "int"),
    "k_bigint": ("id bigint PRIMARY KEY", "g * 10000000000", "bigint"),
    "k_uuid": ("id uuid PRIMARY KEY", "md5(g::text)::uuid", "uuid"),
    "k_text": ("id text PRIMARY KEY", "'doc-' || g", "text"),
}


def test_keys_come_back_in_the_tables_own_type(conn: psycopg.Connection[Any], qvl_db: str,
                                               service: ServiceProcess) -> None:
    for table, (ddl, key, _) in KEYED_TABLES.items():
        conn.execute(f"CREATE TABLE {table} ({ddl}, caption text)")
        conn.execute(f"INSERT INTO {table} SELECT {key}, 'caption ' || g FROM generate_series(1, 8) g")
        conn.execute(f"SELECT qvl.create_vectorizer('{table}', text_columns => ARRAY['caption'], dimensions => 32, "
                     "fulltext => 'simple')")
    conn.execute("CREATE TABLE k_pair (tenant int, slug text, caption text, PRIMARY KEY (tenant, slug))")
    conn.execute("INSERT INTO k_pair SELECT g % 2, 'c' || g, 'caption ' || g FROM generate_series(1, 8) g")
    conn.execute("SELECT qvl.create_vectorizer('k_pair', text_columns => ARRAY['caption'], dimensions => 32, "
                 "fulltext => 'simple')")
    conn.execute("CREATE TYPE pair_key AS (tenant int, slug text)")
    drain(qvl_db, service.grpc_target)
    keyed = {**KEYED_TABLES, "k_pair": ("", "", "pair_key")}

    for table, (_, _, key_type) in keyed.items():
        on = "(t.tenant, t.slug) = ((s.key).tenant, (s.key).slug)" if table == "k_pair" else "t.id = s.key"
        text_keys = conn.execute(f"SELECT pk FROM qvl.search('{table}', 'caption 3', k => 5)").fetchall()
        typed = conn.execute(
            f"SELECT pg_typeof(s.key)::text, s.key::text, t.caption FROM qvl.search('{table}', 'caption 3', "
            f"NULL::{key_type}, k => 5) AS s JOIN {table} t ON {on}").fetchall()
        assert [k for _, k, _ in typed] == [k for k, in text_keys]  # same rows, same order
        assert {t for t, _, _ in typed} == {key_type if key_type != "int" else "integer"}
        hybrid = conn.execute(
            f"SELECT s.key, t.caption FROM qvl.hybrid_search('{table}', 'caption 3', NULL::{key_type}, k => 5, "
            f"rerank => false) AS s JOIN {table} t ON {on}").fetchall()
        assert hybrid[0][1] == "caption 3"  # the full-text match, first of both lists
        keys = (f"ARRAY(SELECT (tenant, slug)::pair_key FROM {table} WHERE caption <> 'caption 4')"
                if table == "k_pair" else f"ARRAY(SELECT id FROM {table} WHERE caption <> 'caption 4')")
        ranked = conn.execute(f"SELECT s.key, s.score, t.caption FROM qvl.rerank_rows('{table}', 'caption 3', "
                              f"{keys}) AS s JOIN {table} t ON {on}").fetchall()
        assert len(ranked) == 7 and "caption 4" not in {c for _, _, c in ranked}
        assert [s for _, s, _ in ranked] == sorted((s for _, s, _ in ranked), reverse=True)

    # rerank_rows: a key given twice is one row; keys of no row (or NULL) are left out; top_k.
    rows = conn.execute("SELECT key FROM qvl.rerank_rows('k_int', 'q', ARRAY[3, 3, 99, NULL, 5], top_k => 1)"
                        ).fetchall()
    assert len(rows) == 1 and rows[0][0] in (3, 5)
    assert len(conn.execute("SELECT * FROM qvl.rerank_rows('k_int', 'q', ARRAY[3, 3, 99, NULL, 5])").fetchall()) == 2
    assert conn.execute("SELECT * FROM qvl.rerank_rows('k_int', 'q', ARRAY[]::int[])").fetchall() == []
    with pytest.raises(psycopg.errors.DatatypeMismatch) as caught:  # bigint key, int keys
        conn.execute("SELECT * FROM qvl.rerank_rows('k_bigint', 'q', ARRAY[1, 2])")
    assert "ARRAY[...]::bigint[]" in (caught.value.diag.message_hint or "")
    with pytest.raises(psycopg.errors.DatatypeMismatch) as caught:
        conn.execute("SELECT * FROM qvl.search('k_pair', 'q', key_type => NULL::int)")
    assert "CREATE TYPE k_pair_key AS (tenant integer, slug text)" in (caught.value.diag.message_hint or "")
    # Positionally NULL::int is k (an int parameter of the same place): refused, with the way to say key_type.
    with pytest.raises(psycopg.errors.NullValueNotAllowed) as caught:
        conn.execute("SELECT * FROM qvl.search('k_int', 'q', NULL::int)")
    assert "key_type => NULL::int" in (caught.value.diag.message_hint or "")


# -- hybrid search ---------------------------------------------------------------------------------------
def test_hybrid_search_fuses_full_text_and_vector_rankings(conn: psycopg.Connection[Any], qvl_db: str,
                                                         service: ServiceProcess, client: Client) -> None:
    conn.execute("CREATE TABLE hy (id int PRIMARY KEY, caption text, tags text[], shop int)")
    conn.execute("INSERT INTO hy SELECT g, 'a ' || (ARRAY['red', 'green', 'blue'])[1 + g % 3] || ' thing ' || g, "
                 "CASE WHEN g % 10 = 0 THEN ARRAY['lighthouse', 'coast'] END, g % 2 FROM generate_series(1, 80) g")
    conn.execute("SELECT qvl.create_vectorizer('hy', text_columns => ARRAY['caption', 'tags'], dimensions => 32, "
                 "fulltext => 'english')")
    drain(qvl_db, service.grpc_target)
    q = "lighthouses"  # english stems it: the tags of every tenth row
    text_only = conn.execute("SELECT pk, score, rrf, vector_rank, text_rank FROM qvl.hybrid_search('hy', %s, "
                             "k => 20, weights => ARRAY[0, 1], rerank => false)", (q,)).fetchall()
    assert sorted(int(pk) for pk, *_ in text_only) == list(range(10, 81, 10))
    assert all(vr is None and tr is not None and s is None for _, s, _, vr, tr in text_only)
    vector_only = conn.execute("SELECT pk, vector_rank FROM qvl.hybrid_search('hy', %s, k => 10, "
                               "weights => ARRAY[1, 0], rerank => false)", (q,)).fetchall()
    searched = conn.execute("SELECT pk FROM qvl.search('hy', %s, k => 10, rerank => false)", (q,)).fetchall()
    assert [pk for pk, _ in vector_only] == [pk for pk, in searched] and [r for _, r in vector_only] == list(
        range(1, 11))

    both = conn.execute("SELECT pk, rrf, vector_rank, text_rank FROM qvl.hybrid_search('hy', %s, k => 80, "
                        "weights => ARRAY[1, 2], rerank => false, filter => 'shop = 0')", (q,)).fetchall()
    assert all(int(pk) % 2 == 0 for pk, *_ in both)  # the filter holds in both lists
    for _, rrf, vr, tr in both:
        want = (1 / (60 + vr) if vr else 0) + (2 / (60 + tr) if tr else 0)
        assert rrf == pytest.approx(want, rel=1e-5)
    assert [r for _, r, _, _ in both] == sorted((r for _, r, _, _ in both), reverse=True)
    assert {int(pk) for pk, _, _, tr in both if tr} == {10, 20, 30, 40, 50, 60, 70, 80}

    # Reranked: the reranker's order of the fused best, scored on each row's own columns.
    fused = conn.execute("SELECT pk FROM qvl.hybrid_search('hy', %s, k => 12, rerank => false, candidates => 12)",
                         (q,)).fetchall()
    reranked = conn.execute("SELECT pk, score FROM qvl.hybrid_search('hy', %s, k => 5, candidates => 12)",
                            (q,)).fetchall()
    rows = {i: (c, t) for i, c, t in conn.execute("SELECT id, caption, tags FROM hy")}
    docs = [{"text": [rows[int(pk)][0], *(rows[int(pk)][1] or [])]} for pk, in fused]  # one joint item per row
    want = client.rerank(q, docs, top_k=5)
    assert [pk for pk, _ in reranked] == [fused[i][0] for i, _ in want.ranking]
    np.testing.assert_allclose([s for _, s in reranked], [s for _, s in want.ranking], atol=1e-4)

    # The GIN index answers the full-text match.
    document = conn.execute("SELECT qvl._fulltext_document(id) FROM qvl.vectorizer WHERE name = 'hy'"
                            ).fetchone()[0]  # type: ignore[index]
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        assert "hy_embedding_fulltext" in plan(
            conn, f"SELECT id FROM hy WHERE {document} @@ websearch_to_tsquery('english', %s)", q)

    # Whoever writes the table runs the index expression (EXECUTE on qvl._fulltext_join is checked),
    # also when the query functions are not PUBLIC's (--no-public-grant).
    writer = f"writer_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {writer} LOGIN; GRANT INSERT ON hy TO {writer}")
    conn.execute("SELECT qvl._apply_grants(false)")
    with psycopg.connect(role_dsn(qvl_db, writer), autocommit=True) as c:
        c.execute("INSERT INTO hy VALUES (81, 'a new thing', ARRAY['lighthouse'], 1)")

    # Errors, and the index's life.
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT * FROM qvl.hybrid_search('hy', 'q', weights => ARRAY[0, 0])")
    assert conn.execute("SELECT * FROM qvl.hybrid_search('hy', 'the', weights => ARRAY[0, 1])").fetchall() == []
    conn.execute("SELECT qvl.set_fulltext('hy', NULL)")
    assert conn.execute("SELECT to_regclass('hy_embedding_fulltext')").fetchone() == (None,)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as caught:
        conn.execute("SELECT * FROM qvl.hybrid_search('hy', 'q')")
    assert "qvl.set_fulltext('hy', 'english')" in (caught.value.diag.message_hint or "")
    with pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("SELECT qvl.set_fulltext('hy', 'klingon')")
    conn.execute("SELECT qvl.set_fulltext('hy', 'simple')")
    assert conn.execute("SELECT fulltext FROM qvl.vectorizer WHERE name = 'hy'").fetchone() == ("pg_catalog.simple",)
    conn.execute("SELECT qvl.drop_vectorizer('hy')")
    assert conn.execute("SELECT to_regclass('hy_embedding_fulltext')").fetchone() == (None,)


# -- whose rows, whose rights -----------------------------------------------------------------------------
def test_row_level_security_holds_through_search_hybrid_and_rerank_rows(conn: psycopg.Connection[Any], qvl_db: str,
                                                                        service: ServiceProcess) -> None:
    alice, bob = (f"{who}_{uuid.uuid4().hex[:8]}" for who in ("alice", "bob"))
    conn.execute(f"CREATE ROLE {alice} LOGIN; CREATE ROLE {bob} LOGIN")
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, owner name NOT NULL, body text)")
    conn.execute(f"INSERT INTO notes SELECT g, CASE WHEN g % 4 = 0 THEN '{alice}' ELSE '{bob}' END, "
                 "'note about boats ' || g FROM generate_series(1, 40) g")
    conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => ARRAY['body'], dimensions => 32, "
                 "fulltext => 'english')")
    drain(qvl_db, service.grpc_target)
    conn.execute("ALTER TABLE notes ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY mine ON notes USING (owner = current_user)")
    conn.execute(f"GRANT SELECT ON notes TO {alice}, {bob}")
    mine = {i for i in range(1, 41) if i % 4 == 0}
    with psycopg.connect(role_dsn(qvl_db, alice), autocommit=True) as c:
        for sql in ("SELECT pk::int FROM qvl.search('notes', 'boats', k => 40, rerank => false)",
                    "SELECT pk::int FROM qvl.search('notes', 'boats', k => 40, candidates => 40)",
                    "SELECT pk::int FROM qvl.hybrid_search('notes', 'boats', k => 40, rerank => false)",
                    "SELECT pk::int FROM qvl.hybrid_search('notes', 'boats', k => 40)",
                    "SELECT key FROM qvl.rerank_rows('notes', 'boats', ARRAY(SELECT g FROM generate_series(1, 40) g))",
                    "SELECT id FROM notes ORDER BY embedding <=> qvl.query_embedding('notes', 'boats') LIMIT 40"):
            assert {i for i, in c.execute(sql)} == mine, sql
        # A filter cannot widen what the policy shows.
        assert {int(pk) for pk, in c.execute("SELECT pk FROM qvl.search('notes', 'boats', k => 40, "
                                             "rerank => false, filter => 'true OR owner <> current_user')")} == mine


def test_a_filter_reads_nothing_its_caller_cannot(conn: psycopg.Connection[Any], qvl_db: str,
                                                  service: ServiceProcess) -> None:
    app = f"app_{uuid.uuid4().hex[:8]}"
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, price int)")
    conn.execute("INSERT INTO docs SELECT g, 'doc ' || g, g FROM generate_series(1, 20) g")
    conn.execute("SELECT qvl.create_vectorizer('docs', text_columns => ARRAY['body'], dimensions => 32)")
    drain(qvl_db, service.grpc_target)
    conn.execute("CREATE TABLE secret (id int)")
    conn.execute("INSERT INTO secret VALUES (3), (4)")
    conn.execute("CREATE FUNCTION public.in_secret(x int) RETURNS boolean LANGUAGE sql STABLE "
                 "AS 'SELECT EXISTS (SELECT 1 FROM public.secret WHERE id = x)'")
    conn.execute(f"CREATE ROLE {app} LOGIN; GRANT SELECT (id, body, embedding) ON docs TO {app}")
    search = "SELECT pk FROM qvl.search('docs', 'doc', k => 20, rerank => false, filter => %s)"
    # The installing superuser may read secret: the same filter works for it.
    assert {int(pk) for pk, in conn.execute(search, ("public.in_secret(id)",))} == {3, 4}
    with psycopg.connect(role_dsn(qvl_db, app), autocommit=True) as c:
        assert len(c.execute(search, ("id < 5",)).fetchall()) == 4
        for refused in ("id = ANY(ARRAY(VALUES (1)))", "true) UNION SELECT id::text, 0, 0 FROM secret --",
                        "true; DELETE FROM docs", "true) OR (true"):
            with pytest.raises(psycopg.errors.SyntaxError) as caught:
                c.execute(search, (refused,))
            assert caught.value.diag.message_hint == (
                "A filter is one condition on the table's own columns, as after WHERE: \"taken_on >= '2024-01-01' "
                "AND tenant_id = 7\". It runs read-only, with your rights and search_path; a subquery, ORDER BY, "
                "LIMIT or a second statement is refused. For values from your users pass a structured filter: "
                "filter => '{\"column\": \"tenant_id\", \"op\": \"=\", \"value\": 7}'::jsonb.")
        with pytest.raises(psycopg.errors.UndefinedParameter):  # values go in the text, or a structured filter
            c.execute(search, ("id = $1",))
        # Confined to the caller's rights: through a function, a column it may not read, a query string,
        # a subquery of a table it may not read (refused by its rights before its shape: nothing is read).
        for confined in ("public.in_secret(id)", "price > 3",
                         "query_to_xml('SELECT * FROM public.secret', true, false, '') IS NOT NULL",
                         "id IN (SELECT id FROM secret)", "EXISTS (TABLE secret)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(search, (confined,))
        with pytest.raises(psycopg.errors.UndefinedColumn) as caught:
            c.execute(search, ("nocol = 1",))
        assert "qvl: the filter is not a condition on public.docs" in (caught.value.diag.message_primary or "")
        assert conn.execute("SELECT count(*) FROM docs").fetchone() == (20,)
