"""Partitions of a vectorized table (issue 19 item 5).

Postgres gives a partition its parent's row triggers, so rows written after it joins are queued; rows
it held when it was attached were never queued, silently. Now ATTACH PARTITION queues them (and says
how many), DETACH PARTITION takes the partition's rows out of the queue and failed tables, and a
partition may not join a table whose vectorizer writes the column its own vectorizer writes.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration.postgres.conftest import drain
from tests.integration.postgres.test_key_changes import DIMS, assert_embeds, failed, queued, scalar, vectorize
from tests.support.fake_service import FakeService

pytestmark = [pytest.mark.postgres, pytest.mark.service]


def notices_of(conn: psycopg.Connection[Any]) -> list[str]:
    said: list[str] = []
    conn.add_notice_handler(lambda d: said.append(d.message_primary or ""))
    return said


def events(conn: psycopg.Connection[Any]) -> int:
    """events, partitioned by range of id, with one partition (0..100) and a vectorizer of its caption."""
    conn.execute("CREATE TABLE events (id int PRIMARY KEY, caption text) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (100)")
    return vectorize(conn, "events")


def test_the_rows_of_an_attached_partition_are_queued(conn: psycopg.Connection[Any], qvl_db: str,
                                                      fake: FakeService) -> None:
    """The issue's case: rows of a table attached with ATTACH PARTITION were never queued, no warning."""
    vid = events(conn)
    conn.execute("INSERT INTO events VALUES (1, 'low')")
    conn.execute(f"CREATE TABLE events_high (id int PRIMARY KEY, caption text, embedding vector({DIMS}))")
    conn.execute("INSERT INTO events_high SELECT g, 'high ' || g FROM generate_series(100, 102) g")
    said = notices_of(conn)
    conn.execute("ALTER TABLE events ATTACH PARTITION events_high FOR VALUES FROM (100) TO (200)")
    assert queued(conn, vid) == [1, 100, 101, 102]
    assert "qvl: 3 rows of public.events_high, now a partition of public.events, queued for vectorizer events" in said
    drain(qvl_db, fake.target)
    for i in (100, 101, 102):
        assert_embeds(conn, "events", f"id = {i}", f"high {i}")
    assert_embeds(conn, "events", "id = 1", "low")


def test_an_attached_partitioned_table_brings_its_partitions_rows(conn: psycopg.Connection[Any]) -> None:
    """A partition that is itself partitioned: the rows of its own partitions are queued."""
    vid = events(conn)
    conn.execute(f"CREATE TABLE events_mid (id int PRIMARY KEY, caption text, embedding vector({DIMS})) "
                 "PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE events_mid_a PARTITION OF events_mid FOR VALUES FROM (100) TO (150)")
    conn.execute("CREATE TABLE events_mid_b PARTITION OF events_mid FOR VALUES FROM (150) TO (200)")
    conn.execute("INSERT INTO events_mid VALUES (120, 'a'), (170, 'b')")
    conn.execute("ALTER TABLE events ATTACH PARTITION events_mid FOR VALUES FROM (100) TO (200)")
    assert queued(conn, vid) == [120, 170]
    # ... and a partition attached below one level down, by an ALTER TABLE of that level.
    conn.execute("ALTER TABLE events_mid DETACH PARTITION events_mid_b")
    assert queued(conn, vid) == [120]
    conn.execute("ALTER TABLE events_mid ATTACH PARTITION events_mid_b FOR VALUES FROM (150) TO (200)")
    assert queued(conn, vid) == [120, 170]


def test_a_created_partition_is_vectorized(conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService) -> None:
    """CREATE TABLE ... PARTITION OF takes the parent's triggers: its rows are queued as they are written."""
    vid = events(conn)
    conn.execute("CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (100) TO (200)")
    conn.execute("INSERT INTO events VALUES (150, 'routed'), (1, 'low')")
    conn.execute("INSERT INTO events_high VALUES (160, 'direct')")
    assert queued(conn, vid) == [1, 150, 160]
    drain(qvl_db, fake.target)
    assert_embeds(conn, "events", "id = 160", "direct")


def test_a_detached_partition_leaves_the_queue(conn: psycopg.Connection[Any], qvl_db: str,
                                               fake: FakeService) -> None:
    """DETACH PARTITION: the rows it takes along leave the queue and failed tables at once (before, they
    stayed until a worker claimed each to find it gone; the status counted them), and rows written to
    it afterwards are not queued (Postgres removes the triggers it had from its parent)."""
    vid = events(conn)
    conn.execute("CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (100) TO (200)")
    fake.fake.behave = lambda text: ("INVALID_ARGUMENT", "refused") if text == "bad" else None
    conn.execute("INSERT INTO events VALUES (150, 'bad')")
    drain(qvl_db, fake.target)
    conn.execute("INSERT INTO events VALUES (1, 'low'), (100, 'high'), (101, 'high too')")
    assert (queued(conn, vid), failed(conn, vid)) == ([1, 100, 101], [150])
    said = notices_of(conn)
    conn.execute("ALTER TABLE events DETACH PARTITION events_high")
    assert (queued(conn, vid), failed(conn, vid)) == ([1], [])
    assert ("qvl: public.events_high is no longer a partition of public.events: its 2 queued and 1 failed rows "
            "left vectorizer events") in said
    conn.execute("INSERT INTO events_high VALUES (102, 'after')")
    assert queued(conn, vid) == [1]
    drain(qvl_db, fake.target)
    assert scalar(conn, "SELECT count(*) FROM events_high WHERE embedding IS NOT NULL") == 0
    assert_embeds(conn, "events", "id = 1", "low")


def test_a_partition_may_not_bring_a_second_writer_of_the_column(conn: psycopg.Connection[Any]) -> None:
    """A table whose own vectorizer writes the column the parent's vectorizer writes would have two
    vectorizers overwrite each other's vectors (qvl.create_vectorizer refuses that): refused, with how."""
    events(conn)
    conn.execute("CREATE TABLE events_high (id int PRIMARY KEY, caption text)")
    own = vectorize(conn, "events_high")
    with pytest.raises(psycopg.errors.DuplicateObject) as caught:
        conn.execute("ALTER TABLE events ATTACH PARTITION events_high FOR VALUES FROM (100) TO (200)")
    assert caught.value.diag.message_primary == (
        "qvl: column embedding of public.events_high is written by vectorizer events_high, and would be by "
        "vectorizer events of public.events too")
    assert "SELECT qvl.drop_vectorizer('events_high')" in (caught.value.diag.message_hint or "")
    assert scalar(conn, "SELECT count(*) FROM pg_inherits WHERE inhrelid = 'events_high'::regclass") == 0
    assert scalar(conn, "SELECT id FROM qvl.vectorizer WHERE name = 'events_high'") == own
    # A vectorizer of another column may stay.
    conn.execute("SELECT qvl.drop_vectorizer('events_high', drop_column => true)")
    conn.execute(f"ALTER TABLE events ADD COLUMN other vector({DIMS})")
    conn.execute(f"CREATE TABLE events_mid (id int PRIMARY KEY, caption text, embedding vector({DIMS}), "
                 f"other vector({DIMS}))")
    conn.execute("SELECT qvl.create_vectorizer('events_mid', text_columns => ARRAY['caption'], "
                 f"destination => 'other', dimensions => {DIMS})")
    conn.execute("ALTER TABLE events ATTACH PARTITION events_mid FOR VALUES FROM (200) TO (300)")


def test_disabling_a_partitions_trigger_is_said(conn: psycopg.Connection[Any]) -> None:
    """A partition's copy of a vectorizer trigger may be disabled on the partition alone: warned, as the
    parent's is."""
    vid = events(conn)
    warnings: list[str] = []
    conn.add_notice_handler(lambda d: warnings.append(d.message_primary or "")
                            if d.severity_nonlocalized == "WARNING" else None)
    conn.execute(f"ALTER TABLE events_low DISABLE TRIGGER qvl_{vid}_insert")
    assert warnings == [f"qvl: trigger qvl_{vid}_insert of vectorizer events on public.events_low is disabled: "
                        "rows written while it does not fire are not queued"]
