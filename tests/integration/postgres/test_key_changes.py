"""A row whose primary key changes keeps its place in the queue (issue 19 item 4).

The queue and failed tables refer to rows by primary key. Before, an UPDATE of the key alone fired no
trigger: the queue kept the old key, the worker dropped it as a deleted row, and the row kept whatever
vector it had (none, or one of other content). Now a key change drops the old key's queue and failed
entries and queues the new key, in both modes, for composite keys, for keys swapped in one statement,
and for rows an UPDATE moves to another partition; TRUNCATE empties the queue.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest

from tests.integration.postgres.conftest import drain, vec
from tests.support.fake_service import FakeService, good_vector

pytestmark = [pytest.mark.postgres, pytest.mark.service]

DIMS = 32


def scalar(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def queued(conn: psycopg.Connection[Any], vid: int, key: str = "id") -> list[Any]:
    return [r[0] for r in conn.execute(f"SELECT {key} FROM qvl.queue_{vid} ORDER BY 1").fetchall()]


def failed(conn: psycopg.Connection[Any], vid: int, key: str = "id") -> list[Any]:
    return [r[0] for r in conn.execute(f"SELECT {key} FROM qvl.failed_{vid} ORDER BY 1").fetchall()]


def vector_of(conn: psycopg.Connection[Any], table: str, where: str) -> np.ndarray | None:
    text = scalar(conn, f"SELECT embedding::text FROM {table} WHERE {where}")
    return None if text is None else vec(text)


def assert_embeds(conn: psycopg.Connection[Any], table: str, where: str, text: str) -> None:
    got = vector_of(conn, table, where)
    assert got is not None, f"{table} {where}: no vector"
    np.testing.assert_allclose(got, good_vector(text, DIMS), atol=1e-6, err_msg=f"{table} {where} is not {text!r}")


def vectorize(conn: psycopg.Connection[Any], table: str, **options: str) -> int:
    args = "".join(f", {k} => '{v}'" for k, v in options.items())
    return int(scalar(conn, f"SELECT qvl.create_vectorizer('{table}', text_columns => ARRAY['caption'], "
                            f"dimensions => {DIMS}{args})"))


def test_a_key_changed_before_the_worker_runs_is_queued_under_the_new_key(
        conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService) -> None:
    """The issue's first case: (1, 'hello') queued, then SET id = 2. Before: the queue held 1, the worker
    dropped it as deleted, and row 2 ended with a NULL vector and an empty queue."""
    conn.execute("CREATE TABLE photos (id int PRIMARY KEY, caption text)")
    vid = vectorize(conn, "photos")
    conn.execute("INSERT INTO photos VALUES (1, 'hello')")
    conn.execute("UPDATE photos SET id = 2")
    assert queued(conn, vid) == [2]
    drain(qvl_db, fake.target)
    assert_embeds(conn, "photos", "id = 2", "hello")
    assert queued(conn, vid) == []


def test_a_moved_row_never_keeps_a_vector_of_other_content(conn: psycopg.Connection[Any], qvl_db: str,
                                                           fake: FakeService) -> None:
    """The issue's second case: row 10 'cat' embedded, caption set to 'dog' (queued as 10), then SET id = 11.
    Before: row 11 said 'dog' and held the 'cat' vector for good."""
    conn.execute("CREATE TABLE photos (id int PRIMARY KEY, caption text)")
    vid = vectorize(conn, "photos")
    conn.execute("INSERT INTO photos VALUES (10, 'cat')")
    drain(qvl_db, fake.target)
    conn.execute("UPDATE photos SET caption = 'dog' WHERE id = 10")
    conn.execute("UPDATE photos SET id = 11 WHERE id = 10")
    assert queued(conn, vid) == [11]
    drain(qvl_db, fake.target)
    assert_embeds(conn, "photos", "id = 11", "dog")


def test_a_composite_key_change_moves_the_failure_too(conn: psycopg.Connection[Any], qvl_db: str,
                                                     fake: FakeService) -> None:
    """A failed row keeps no failure under a key it no longer has: the old key's entry goes, the row is
    queued under its new key (here with its input fixed in the same statement)."""
    conn.execute("CREATE TABLE notes (shelf text, n int, caption text, PRIMARY KEY (shelf, n))")
    vid = vectorize(conn, "notes")
    fake.fake.behave = lambda text: ("INVALID_ARGUMENT", "refused") if text == "bad" else None
    conn.execute("INSERT INTO notes VALUES ('a', 1, 'bad'), ('a', 2, 'fine')")
    drain(qvl_db, fake.target)
    assert failed(conn, vid, "(shelf, n)::text") == ["(a,1)"]

    conn.execute("UPDATE notes SET shelf = 'b', caption = 'mended' WHERE n = 1")
    assert failed(conn, vid, "(shelf, n)::text") == []
    assert queued(conn, vid, "(shelf, n)::text") == ["(b,1)"]
    conn.execute("UPDATE notes SET n = 3 WHERE n = 2")  # the key alone, of a row already embedded
    assert queued(conn, vid, "(shelf, n)::text") == ["(a,3)", "(b,1)"]
    drain(qvl_db, fake.target)
    assert_embeds(conn, "notes", "shelf = 'b' AND n = 1", "mended")
    assert_embeds(conn, "notes", "shelf = 'a' AND n = 3", "fine")
    assert queued(conn, vid, "(shelf, n)::text") == [] and failed(conn, vid, "(shelf, n)::text") == []


def test_keys_swapped_in_one_statement_are_both_queued(conn: psycopg.Connection[Any], qvl_db: str,
                                                       fake: FakeService) -> None:
    """With a deferrable key two rows may trade keys in one statement. Each row's old key is the other's
    new one: every old entry goes before any new one is written, whatever order the rows come in."""
    conn.execute("CREATE TABLE photos (id int, caption text, PRIMARY KEY (id) DEFERRABLE)")
    vid = vectorize(conn, "photos")
    conn.execute("INSERT INTO photos VALUES (1, 'one'), (2, 'two')")
    drain(qvl_db, fake.target)
    conn.execute("UPDATE photos SET caption = 'deux' WHERE id = 2")  # queued as 2
    conn.execute("UPDATE photos SET id = 3 - id")
    assert queued(conn, vid) == [1, 2]
    drain(qvl_db, fake.target)
    assert_embeds(conn, "photos", "id = 1", "deux")
    assert_embeds(conn, "photos", "id = 2", "one")


def test_a_sync_vectorizer_follows_key_changes(conn: psycopg.Connection[Any], qvl_db: str,
                                               fake: FakeService) -> None:
    """Rows a sync vectorizer left to the worker (the backfill) keep their place when their key changes."""
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, caption text)")
    conn.execute("INSERT INTO notes VALUES (1, 'one'), (2, 'two')")
    vid = vectorize(conn, "notes", mode="sync")  # both rows queued for the worker
    conn.execute("UPDATE notes SET id = id + 10")
    assert queued(conn, vid) == [11, 12]
    drain(qvl_db, fake.target)
    assert_embeds(conn, "notes", "id = 11", "one")
    assert_embeds(conn, "notes", "id = 12", "two")


def test_a_row_moved_to_another_partition_is_queued_once(conn: psycopg.Connection[Any], qvl_db: str,
                                                         fake: FakeService) -> None:
    """An UPDATE of the partition key moves the row (a DELETE and an INSERT inside Postgres): its old
    key leaves the queue, its new one is queued."""
    conn.execute("CREATE TABLE events (id int PRIMARY KEY, caption text) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (100)")
    conn.execute("CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (100) TO (200)")
    vid = vectorize(conn, "events")
    conn.execute("INSERT INTO events VALUES (1, 'moving'), (2, 'staying')")
    conn.execute("UPDATE events SET id = 150 WHERE id = 1")
    assert queued(conn, vid) == [2, 150]
    drain(qvl_db, fake.target)
    assert_embeds(conn, "events", "id = 150", "moving")
    assert scalar(conn, "SELECT tableoid::regclass::text FROM events WHERE id = 150") == "events_high"


def test_a_renamed_or_widened_key_still_follows_key_changes(conn: psycopg.Connection[Any], qvl_db: str,
                                                            fake: FakeService) -> None:
    """The key-change triggers name the key columns only through a function qvl rewrites when the schema
    guard follows a rename, so a key may still be renamed and widened (Postgres refuses to retype a
    column a trigger names)."""
    conn.execute("CREATE TABLE photos (id int PRIMARY KEY, caption text)")
    vid = vectorize(conn, "photos")
    conn.execute("ALTER TABLE photos RENAME COLUMN id TO photo_id")
    conn.execute("ALTER TABLE photos ALTER COLUMN photo_id TYPE bigint")
    conn.execute("INSERT INTO photos VALUES (1, 'hello')")
    conn.execute("UPDATE photos SET photo_id = 5000000000")
    assert queued(conn, vid, "photo_id") == [5000000000]
    drain(qvl_db, fake.target)
    assert_embeds(conn, "photos", "photo_id = 5000000000", "hello")


def test_truncate_empties_the_queue_and_copy_queues(conn: psycopg.Connection[Any], qvl_db: str,
                                                   fake: FakeService) -> None:
    """TRUNCATE removes every row without a row trigger: before, their queue and failed entries stayed
    (the worker claimed each to find it gone; the status counted them). COPY fires the row triggers."""
    conn.execute("CREATE TABLE photos (id int PRIMARY KEY, caption text)")
    vid = vectorize(conn, "photos")
    fake.fake.behave = lambda text: ("INVALID_ARGUMENT", "refused") if text == "bad" else None
    conn.execute("INSERT INTO photos VALUES (1, 'bad')")
    drain(qvl_db, fake.target)
    conn.execute("INSERT INTO photos SELECT g, 'caption ' || g FROM generate_series(2, 4) g")
    assert (queued(conn, vid), failed(conn, vid)) == ([2, 3, 4], [1])
    conn.execute("TRUNCATE photos")
    assert (queued(conn, vid), failed(conn, vid)) == ([], [])

    with conn.cursor() as cur, cur.copy("COPY photos (id, caption) FROM STDIN") as copy:
        for row in ((1, "copied 1"), (2, "copied 2")):
            copy.write_row(row)
    assert queued(conn, vid) == [1, 2]
    drain(qvl_db, fake.target)
    assert_embeds(conn, "photos", "id = 1", "copied 1")
    assert_embeds(conn, "photos", "id = 2", "copied 2")


def test_a_table_with_a_generated_column_follows_key_changes(conn: psycopg.Connection[Any], qvl_db: str,
                                                             fake: FakeService) -> None:
    """Postgres refuses the whole new row in a BEFORE trigger's WHEN on a table with a generated column (the
    first version of the key triggers made create_vectorizer fail there): that trigger compares the keys
    in its function instead, and an UPDATE of anything else still queues nothing."""
    conn.execute("CREATE TABLE photos (id int PRIMARY KEY, caption text, note text, "
                 "loud text GENERATED ALWAYS AS (upper(caption)) STORED)")
    vid = int(scalar(conn, "SELECT qvl.create_vectorizer('photos', text_columns => ARRAY['loud'], "
                           f"dimensions => {DIMS})"))
    conn.execute("INSERT INTO photos (id, caption) VALUES (1, 'hello')")
    drain(qvl_db, fake.target)
    conn.execute("UPDATE photos SET note = 'not embedded'")
    assert queued(conn, vid) == []
    conn.execute("UPDATE photos SET id = 2")
    assert queued(conn, vid) == [2]
    drain(qvl_db, fake.target)
    assert_embeds(conn, "photos", "id = 2", "HELLO")
