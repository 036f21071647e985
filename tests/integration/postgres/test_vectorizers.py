"""Vectorizers: backfill + triggers + worker embed every row exactly as gRPC would; updates,
poison rows, storage kinds, limits, drop and re-embed."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import psycopg
import pytest

from connectors.client import Client
from tests.integration.postgres.conftest import cosines, drain, images, vec, wait_until, write_log
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Any:
    with Client(service.grpc_target) as c:
        yield c


def vectors(conn: psycopg.Connection[Any], table: str = "items") -> dict[int, np.ndarray | None]:
    rows = conn.execute(f"SELECT id, embedding::text FROM {table} ORDER BY id").fetchall()
    return {i: (vec(e) if e is not None else None) for i, e in rows}


def status(conn: psycopg.Connection[Any], name: str = "items") -> tuple[int, int]:
    row = conn.execute("SELECT pending, failed FROM qvl.vectorizer_status WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_thousand_rows_with_images_and_captions(conn: psycopg.Connection[Any], qvl_db: str,
                                                 service: ServiceProcess, client: Client) -> None:
    n = 1000
    pics = images(n)
    captions = [f"photo {i}: {'sunset' if i % 3 else 'harbour'} number {i * 7 % 101}" for i in range(n)]
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text, image bytea, note text)")
    with conn.cursor() as cur:  # half before the vectorizer exists (backfill), half after (triggers)
        cur.executemany("INSERT INTO items VALUES (%s, %s, %s, 'x')", [(i, captions[i], pics[i]) for i in range(500)])
        cur.execute("SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'], "
                    "image_columns => ARRAY['image'])")
        cur.executemany("INSERT INTO items VALUES (%s, %s, %s, 'x')",
                        [(i, captions[i], pics[i]) for i in range(500, n)])
    assert status(conn) == (n, 0)
    assert conn.execute("SELECT qvl.wait_for_embeddings('items', '50 ms')").fetchone() == (False,)

    drain(qvl_db, service.grpc_target, batch=64, concurrency=2)

    assert status(conn) == (0, 0)
    assert conn.execute("SELECT qvl.wait_for_embeddings('items', '1 s')").fetchone() == (True,)
    got = vectors(conn)
    assert all(v is not None for v in got.values())
    direct = np.concatenate([client.embed([{"image": pics[i], "text": captions[i]} for i in range(s, s + 250)])
                             for s in range(0, n, 250)])
    stored = np.stack([got[i] for i in range(n)])  # type: ignore[misc]
    assert cosines(stored, direct).min() >= 0.9999


def test_only_changes_of_embedded_columns_reembed(conn: psycopg.Connection[Any], qvl_db: str,
                                                  service: ServiceProcess, client: Client) -> None:
    pics = images(20, offset=100)
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text, image bytea, note text)")
    conn.execute("SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'], "
                 "image_columns => ARRAY['image'])")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO items VALUES (%s, %s, %s, 'n')", [(i, f"cap {i}", pics[i]) for i in range(20)])
    drain(qvl_db, service.grpc_target)
    before = vectors(conn)
    write_log(conn, "items")

    conn.execute("UPDATE items SET note = 'changed'")  # not an embedded column
    conn.execute("UPDATE items SET caption = caption, image = image")  # named, but no real change
    assert status(conn) == (0, 0)

    conn.execute("UPDATE items SET caption = 'new caption ' || id WHERE id < 5")
    conn.execute("UPDATE items SET image = %s WHERE id = 5", (pics[19],))
    assert status(conn) == (6, 0)
    conn.execute("DELETE FROM items WHERE id = 19")  # deletes need no work
    assert status(conn) == (6, 0)
    drain(qvl_db, service.grpc_target)

    after = vectors(conn)
    written = sorted(i for (i,) in conn.execute("SELECT id FROM items_writes").fetchall())
    assert written == [0, 1, 2, 3, 4, 5]
    for i in range(6, 19):
        np.testing.assert_array_equal(after[i], before[i])
    want = client.embed([{"image": pics[i], "text": f"new caption {i}"} for i in range(5)]
                        + [{"image": pics[19], "text": "cap 5"}])
    assert cosines(np.stack([after[i] for i in range(6)]), want).min() >= 0.9999  # type: ignore[misc]


def test_poison_row_fails_alone(conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess) -> None:
    pics = images(30, offset=200)
    pics[7] = b"this is not an image"
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text, image bytea)")
    conn.execute("SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'], "
                 "image_columns => ARRAY['image'])")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO items VALUES (%s, %s, %s)", [(i, f"c{i}", pics[i]) for i in range(30)])
        cur.execute("INSERT INTO items VALUES (30, NULL, NULL)")  # nothing to embed: NULL, no model call
    drain(qvl_db, service.grpc_target, batch=16)

    got = vectors(conn)
    assert got[7] is None and got[30] is None
    assert all(got[i] is not None for i in range(30) if i != 7)
    assert status(conn) == (0, 1)
    failed = conn.execute("SELECT pk, error, code, attempts FROM qvl.failed_items('items')").fetchall()
    assert len(failed) == 1 and failed[0][0] == "7" and failed[0][2] == "INVALID_ARGUMENT"
    assert "not a recognised image" in failed[0][1]

    assert conn.execute("SELECT qvl.retry_failed('items')").fetchone() == (1,)  # still bad: fails again
    drain(qvl_db, service.grpc_target)
    assert status(conn) == (0, 1)  # refused again, after a fresh set of attempts

    conn.execute("UPDATE items SET image = %s WHERE id = 7", (images(1)[0],))  # fixing the row re-queues it
    drain(qvl_db, service.grpc_target)
    assert vectors(conn)[7] is not None
    assert status(conn) == (0, 0)


def test_storage_kinds_and_index(conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess,
                                 client: Client) -> None:
    texts = [f"text {i}" for i in range(10)]
    for table, storage, dims in (("h", "halfvec", 48), ("b", "bit", None), ("v", "vector", 32)):
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text)")
        conn.execute(f"SELECT qvl.create_vectorizer('{table}', text_columns => ARRAY['body'], storage => %s, "
                     "dimensions => %s)", (storage, dims))
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)", list(enumerate(texts)))
    drain(qvl_db, service.grpc_target)

    types = dict(conn.execute("SELECT attrelid::regclass::text, format_type(atttypid, atttypmod) FROM pg_attribute "
                              "WHERE attname = 'embedding' AND attrelid IN ('h'::regclass, 'b'::regclass, "
                              "'v'::regclass)").fetchall())
    assert types == {"h": "halfvec(48)", "b": "bit(64)", "v": "vector(32)"}
    indexes = " ".join(r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname LIKE '%hnsw'"))
    for opclass in ("halfvec_cosine_ops", "bit_hamming_ops", "vector_cosine_ops"):
        assert opclass in indexes

    half = np.stack([vec(e) for (e,) in conn.execute("SELECT embedding::text FROM h ORDER BY id")])
    assert cosines(half, client.embed(texts, dimensions=48)).min() >= 0.999
    bits = [e for (e,) in conn.execute("SELECT embedding::text FROM b ORDER BY id")]
    want = client.embed(texts, encoding="binary")
    assert bits == ["".join(map(str, np.unpackbits(w)[:64])) for w in want]
    for table in ("h", "b", "v"):  # two-stage search works on every storage kind (hamming for bit)
        hits = conn.execute(f"SELECT pk, distance, score FROM qvl.search('{table}', 'text 3', k => 3)").fetchall()
        assert len(hits) == 3 and all(s is not None for _, _, s in hits)
    small = np.stack([vec(e) for (e,) in conn.execute("SELECT embedding::text FROM v ORDER BY id")])
    assert cosines(small, client.embed(texts, dimensions=32)).min() >= 0.9999


def test_create_vectorizer_refuses_with_a_hint(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE nopk (body text)")
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, body text, n int, pic bytea)")
    cases = [
        ("SELECT qvl.create_vectorizer('nopk', text_columns => ARRAY['body'])", "no primary key", "ADD PRIMARY KEY"),
        ("SELECT qvl.create_vectorizer('t', text_columns => ARRAY['bdy'])", "has no column bdy", "body"),
        ("SELECT qvl.create_vectorizer('t', image_columns => ARRAY['n'])", "cannot be a image input", "bytea"),
        ("SELECT qvl.create_vectorizer('t', text_columns => ARRAY['body'], dimensions => 2048)",
         "at most 2000 dimensions", "halfvec"),
        ("SELECT qvl.create_vectorizer('t', text_columns => ARRAY['body'], storage => 'halfvec', "
         "dimensions => 4096)", "at most 4000 dimensions", "dimensions =>"),
        ("SELECT qvl.create_vectorizer('t')", "at least one column", "text_columns"),
    ]
    for statement, message, hint in cases:
        with pytest.raises(psycopg.Error) as err:
            conn.execute(statement)
        assert message in str(err.value), statement
        assert hint in (err.value.diag.message_hint or ""), statement
    # halfvec indexes 2048 (the 2B model's size); the tiny model here gives 64.
    assert conn.execute("SELECT qvl._vector_type('halfvec', 2048, 'hnsw')").fetchone() == ("public.halfvec(2048)",)
    conn.execute("SELECT qvl.create_vectorizer('t', text_columns => ARRAY['body'], image_columns => ARRAY['pic'], "
                 "storage => 'halfvec')")
    with pytest.raises(psycopg.errors.DuplicateObject):
        conn.execute("SELECT qvl.create_vectorizer('t', text_columns => ARRAY['body'])")


def test_create_vectorizer_refuses_dimensions_the_model_cannot_give(conn: psycopg.Connection[Any]) -> None:
    """Issue 11 item 4 (and 10.6): asked of the service at creation; the tiny model gives 64."""
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
    for dims in (16, 100, 65):
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT qvl.create_vectorizer('t', text_columns => ARRAY['body'], dimensions => %s)",
                         (dims,))
        assert err.value.sqlstate == "22023", dims
        assert f"cannot give {dims} dimensions" in (err.value.diag.message_primary or ""), dims
        assert "The model has 64 dimensions" in (err.value.diag.message_hint or ""), dims
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT qvl.create_vectorizer('t', text_columns => ARRAY['body'], dimensions => 5000)")
    assert err.value.sqlstate == "54000"
    assert "model gives 64" in (err.value.diag.message_primary or "")
    assert conn.execute("SELECT count(*) FROM qvl.vectorizer").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass "
                        "AND attname = 'embedding'").fetchone() == (0,)  # nothing left behind
    conn.execute("SELECT qvl.create_vectorizer('t', text_columns => ARRAY['body'], dimensions => 32)")
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT qvl.reembed('t', dimensions => 100)")
    assert "The model has 64 dimensions" in (err.value.diag.message_hint or "")


def test_drop_reembed_and_composite_keys(conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess,
                                         client: Client) -> None:
    conn.execute("CREATE TABLE docs (shelf int, slot text, body text, PRIMARY KEY (shelf, slot))")
    conn.execute("INSERT INTO docs SELECT g % 3, 'slot' || g, 'document ' || g FROM generate_series(1, 12) g")
    conn.execute("SELECT qvl.create_vectorizer('docs', 'd', text_columns => ARRAY['body'])")
    drain(qvl_db, service.grpc_target)
    assert conn.execute("SELECT count(*) FROM docs WHERE embedding IS NULL").fetchone() == (0,)

    assert conn.execute("SELECT qvl.reembed('d', dimensions => 32)").fetchone() == (12,)
    assert conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'docs'::regclass "
                        "AND attname = 'embedding'").fetchone() == ("vector(32)",)
    drain(qvl_db, service.grpc_target)
    row = conn.execute("SELECT embedding::text FROM docs WHERE shelf = 1 AND slot = 'slot1'").fetchone()
    assert row is not None
    assert cosines(vec(row[0]), client.embed(["document 1"], dimensions=32)[0]) >= 0.9999

    hits = conn.execute("SELECT pk FROM qvl.search('d', 'document 4', k => 3)").fetchall()
    assert len(hits) == 3 and all(h[0].startswith("(") for h in hits)  # composite keys as ROW text

    assert conn.execute("SELECT qvl.drop_vectorizer('d')").fetchone() == (True,)
    conn.execute("INSERT INTO docs VALUES (9, 'late', 'after the drop')")
    assert conn.execute("SELECT count(*) FROM qvl.vectorizer").fetchone() == (0,)
    assert conn.execute("SELECT to_regclass('qvl.queue_1')").fetchone() == (None,)
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM docs WHERE embedding IS NOT NULL").fetchone() == (12,)  # kept


def test_a_destination_column_belongs_to_one_vectorizer(conn: psycopg.Connection[Any]) -> None:
    """Issue 11 item 1: a second vectorizer on the same column would overwrite the first one's vectors
    (caption-only over caption+image) and qvl.search would read them: it is refused, naming the owner."""
    conn.execute("CREATE TABLE photos (id int PRIMARY KEY, caption text, image bytea)")
    conn.execute("SELECT qvl.create_vectorizer('photos', text_columns => ARRAY['caption'], "
                 "image_columns => ARRAY['image'])")
    with pytest.raises(psycopg.errors.DuplicateObject) as err:
        conn.execute("SELECT qvl.create_vectorizer('photos', name => 'other', text_columns => ARRAY['caption'])")
    assert "photos.embedding is written by vectorizer photos" in (err.value.diag.message_primary or "")
    hint = err.value.diag.message_hint or ""
    assert "destination => " in hint and "SELECT qvl.drop_vectorizer('photos');" in hint
    # Another column of the same table is another vectorizer's to own.
    conn.execute("SELECT qvl.create_vectorizer('photos', name => 'other', text_columns => ARRAY['caption'], "
                 "destination => 'caption_embedding')")
    assert conn.execute("SELECT name, destination FROM qvl.vectorizer ORDER BY id").fetchall() == [
        ("photos", "embedding"), ("other", "caption_embedding")]

    # A partitioned table's column is its partitions' column: either way round is the same column.
    conn.execute("CREATE TABLE p (id int PRIMARY KEY, body text) PARTITION BY RANGE (id); "
                 "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100); "
                 "CREATE TABLE q (id int PRIMARY KEY, body text, embedding vector(64)) PARTITION BY RANGE (id); "
                 "CREATE TABLE q1 PARTITION OF q FOR VALUES FROM (0) TO (100)")
    conn.execute("SELECT qvl.create_vectorizer('p', text_columns => ARRAY['body'])")
    conn.execute("SELECT qvl.create_vectorizer('q1', text_columns => ARRAY['body'])")
    for statement, owner in (("SELECT qvl.create_vectorizer('p1', text_columns => ARRAY['body'])", "p"),
                             ("SELECT qvl.create_vectorizer('q', text_columns => ARRAY['body'])", "q1")):
        with pytest.raises(psycopg.errors.DuplicateObject) as err:
            conn.execute(statement)
        assert f"is written by vectorizer {owner} " in (err.value.diag.message_primary or ""), statement


def test_two_creations_at_once_cannot_both_take_a_column(qvl_db: str) -> None:
    """The check and the catalog row are one step: a creation waiting on another's uncommitted one
    sees it once it commits, and is refused."""
    with psycopg.connect(qvl_db, autocommit=True) as first, psycopg.connect(qvl_db, autocommit=True) as second:
        first.execute("CREATE TABLE photos (id int PRIMARY KEY, caption text)")
        outcome: list[BaseException | None] = []

        def create_second() -> None:
            try:
                second.execute("SELECT qvl.create_vectorizer('photos', 'second', text_columns => ARRAY['caption'])")
                outcome.append(None)
            except psycopg.Error as exc:
                outcome.append(exc)

        with first.transaction():
            first.execute("SELECT qvl.create_vectorizer('photos', 'first', text_columns => ARRAY['caption'])")
            thread = threading.Thread(target=create_second)
            thread.start()
            pid = second.info.backend_pid
            wait_until(lambda: first.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                             (pid,)).fetchone() == ("Lock",), timeout=30)
        thread.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.DuplicateObject), outcome
        assert first.execute("SELECT name FROM qvl.vectorizer").fetchall() == [("first",)]


def test_drop_leaves_no_stale_vector_and_says_what_it_kept(conn: psycopg.Connection[Any], qvl_db: str,
                                                           service: ServiceProcess) -> None:
    """Issue 11 item 1: once dropped, nothing keeps the column in step. A row whose last embedding
    failed, or that changed and still waits in the queue, holds a vector of what it was: those are
    cleared; the others stay, and a NOTICE says how many and what removes them."""
    pics = images(4, offset=300)
    conn.execute("CREATE TABLE photos (id int PRIMARY KEY, caption text, image bytea)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO photos VALUES (%s, %s, %s)", [(i, f"photo {i}", pics[i]) for i in range(4)])
    conn.execute("SELECT qvl.create_vectorizer('photos', text_columns => ARRAY['caption'], "
                 "image_columns => ARRAY['image'])")
    drain(qvl_db, service.grpc_target)
    conn.execute("UPDATE photos SET image = 'not an image'::bytea WHERE id = 1")
    drain(qvl_db, service.grpc_target)
    assert status(conn, "photos") == (0, 1)
    conn.execute("UPDATE photos SET caption = 'changed' WHERE id = 2")  # queued, not embedded yet
    assert status(conn, "photos") == (1, 1)
    assert conn.execute("SELECT count(*) FROM photos WHERE embedding IS NOT NULL").fetchone() == (4,)

    notices: list[tuple[str, str, str]] = []  # a Diagnostic is valid only inside the handler
    conn.add_notice_handler(lambda d: notices.append((d.message_primary or "", d.message_detail or "",
                                                      d.message_hint or "")))
    assert conn.execute("SELECT qvl.drop_vectorizer('photos')").fetchone() == (True,)
    assert vectors(conn, "photos")[1] is None and vectors(conn, "photos")[2] is None
    assert all(vectors(conn, "photos")[i] is not None for i in (0, 3))
    assert len(notices) == 1, notices
    message, detail, hint = notices[0]
    assert message.startswith("qvl: vectorizer photos dropped; public.photos.embedding keeps 2 vectors"), message
    assert detail.startswith("2 vectors of rows still queued or failed were cleared"), detail
    assert "ALTER TABLE public.photos DROP COLUMN embedding" in hint and "drop_column => true" in hint, hint


def test_create_and_drop_say_nothing_of_objects_they_skip(conn: psycopg.Connection[Any]) -> None:
    """Issue 11: creating and dropping a vectorizer printed 2-4 "trigger ... does not exist,
    skipping" NOTICEs (the other mode's triggers, a sync vectorizer's missing function). Every
    NOTICE left is qvl's own."""
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO t VALUES (1, 'one')")
    for mode in ("async", "sync"):
        conn.execute("SELECT qvl.create_vectorizer('t', text_columns => ARRAY['body'], mode => %s)", (mode,))
        conn.execute("SELECT qvl.drop_vectorizer('t')")
        # Again on the column (and index) the first one left, then dropped with its column.
        conn.execute("SELECT qvl.create_vectorizer('t', text_columns => ARRAY['body'], mode => %s)", (mode,))
        conn.execute("SELECT qvl.reembed('t')")
        conn.execute("SELECT qvl.retry_failed('t')")
        conn.execute("SELECT qvl.drop_vectorizer('t', drop_column => true)")
    assert notices and all(n.startswith("qvl: ") for n in notices), notices
