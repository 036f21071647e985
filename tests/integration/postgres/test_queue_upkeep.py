"""Queue upkeep (issue 10 item 15): the worker's writes take row locks in key order, rows hidden by
row-level security are never taken for deleted, re-queueing keeps lag figures true, failed rows are
pruned, and workers that died are shown as stale. Real Postgres; a fake gRPC service whose answers
the tests hold back to catch the worker mid-batch."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.postgres.conftest import wait_until, worker_thread
from tests.integration.postgres.test_security_and_upgrade import role_dsn
from tests.support.fake_service import FakeService

pytestmark = [pytest.mark.postgres, pytest.mark.service]


@pytest.fixture
def fake() -> Iterator[FakeService]:
    with FakeService() as svc:
        yield svc


def scalar(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def make_items(conn: psycopg.Connection[Any], ids: list[int]) -> int:
    """Table items (id, caption, note) with an async vectorizer on caption; rows queued in the order given,
    one transaction each (so each has its own queued_at)."""
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text, note text)")
    vid = int(scalar(conn, "SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'], "
                           "dimensions => 32)"))
    for i in ids:
        conn.execute("INSERT INTO items (id, caption) VALUES (%s, %s)", (i, f"caption {i}"))
    return vid


def embedded(conn: psycopg.Connection[Any]) -> int:
    return int(scalar(conn, "SELECT count(*) FROM items WHERE embedding IS NOT NULL"))


def waiting_on_a_lock(conn: psycopg.Connection[Any], application_name: str) -> bool:
    return bool(scalar(conn, "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = %s "
                             "AND wait_event_type = 'Lock'", (application_name,)))


def troubles(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() + " " + str(r.__dict__.get("error", "")) for r in caplog.records
            if r.name == "qvl.worker" and r.levelno >= logging.WARNING]


# -- (d) the write locks rows in a fixed order ------------------------------------------------------

def test_the_write_waits_for_a_users_multi_row_update_without_deadlock(conn: psycopg.Connection[Any], qvl_db: str,
                                                                       fake: FakeService,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A user's transaction holds row 1 while the worker writes a batch of rows 3, 2, 1 (claimed in that
    order); then it updates the embedded column of rows 1..3, in key order, which queues them again. The
    worker used to lock the queue rows before the table rows: it held queue row 1 while it waited for
    table row 1, and the user's trigger waited for queue row 1: a deadlock. Now the worker locks the
    table rows first, in key order, then the queue rows: it waits without holding anything the user needs."""
    vid = make_items(conn, [3, 2, 1])  # claimed oldest first: 3, 2, 1
    caplog.set_level(logging.INFO, logger="qvl.worker")
    app = "qvl-worker-lock-order"
    with psycopg.connect(qvl_db) as user:
        user.execute("UPDATE items SET note = 'held by the user' WHERE id = 1")
        with worker_thread(qvl_db, fake.target, application_name=app):
            wait_until(lambda: waiting_on_a_lock(conn, app), timeout=30)  # the worker's write waits for row 1
            user.execute("UPDATE items SET caption = caption || ' (changed)' WHERE id IN (1, 2, 3)")
            user.commit()
            wait_until(lambda: scalar(conn, "SELECT count(*) FROM items WHERE embedding IS NOT NULL "
                                            "AND caption LIKE '%(changed)'") == 3 and
                       scalar(conn, f"SELECT count(*) FROM qvl.queue_{vid}") == 0, timeout=30)
    assert troubles(caplog) == []  # no deadlock: nothing rolled back, nothing retried
    # The stale write (made before the change) was not stored: each row holds its changed caption's vector.
    assert len(fake.fake.sent("caption 1 (changed)")) == 1


def test_lease_renewal_skips_rows_a_user_holds(conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """While a batch of rows 1 and 2 is embedded, a user's transaction changes row 2, then row 1 (each
    change queues the row again, locking its queue row). The renewal of the lease used to lock rows 1
    and 2 in turn: it held row 1 while it waited for row 2, and the user waited for row 1: a deadlock,
    which cost the renewal (or the user's transaction). Now it skips the rows a user holds."""
    release = threading.Event()
    def held(text: str) -> None:
        release.wait(30)  # the batch stays in hand until the test lets it go

    fake.fake.behave = held
    make_items(conn, [1, 2])
    caplog.set_level(logging.DEBUG, logger="qvl.worker")
    with psycopg.connect(qvl_db) as user, worker_thread(qvl_db, fake.target, lease_s=0.6, batch=2):
        wait_until(lambda: len(fake.fake.seen) >= 1, timeout=30)
        user.execute("UPDATE items SET caption = 'caption 2 (changed)' WHERE id = 2")
        threading.Event().wait(0.6)  # the renewal (every 0.2 s) meets the held row
        user.execute("UPDATE items SET caption = 'caption 1 (changed)' WHERE id = 1")
        user.commit()
        release.set()
        wait_until(lambda: scalar(conn, "SELECT count(*) FROM items WHERE embedding IS NOT NULL "
                                        "AND caption LIKE '%(changed)'") == 2, timeout=30)
    renewals = [r.getMessage() + str(r.__dict__.get("error")) for r in caplog.records
                if "could not renew" in r.getMessage()]
    assert renewals == []
    assert troubles(caplog) == []


# -- (a) rows hidden by row-level security ------------------------------------------------------------

def worker_role(conn: psycopg.Connection[Any], vid: int) -> str:
    """A login role with the rights the worker needs on table items and vectorizer ``vid`` (no attributes)."""
    role = f"qvl_worker_{uuid.uuid4().hex[:8]}"
    conn.execute(f"""
        CREATE ROLE {role} LOGIN;
        GRANT USAGE ON SCHEMA qvl TO {role};
        GRANT SELECT ON qvl.vectorizer TO {role};
        GRANT EXECUTE ON FUNCTION qvl._vector_schema() TO {role};
        GRANT SELECT, INSERT, UPDATE, DELETE ON qvl.queue_{vid}, qvl.failed_{vid}, qvl.worker_status TO {role};
        GRANT SELECT, UPDATE ON items TO {role};
    """)
    return role


def test_rows_hidden_by_row_level_security_stay_queued(conn: psycopg.Connection[Any], qvl_db: str,
                                                       fake: FakeService, caplog: pytest.LogCaptureFixture) -> None:
    """The worker's role sees only the even rows of a table with row-level security. It used to take the
    odd ones for deleted and drop them from the queue (they never got a vector). Now it refuses to work
    on a table it cannot see whole: every row stays queued, its log and qvl.worker_status say why and what
    to do, and once the role may bypass row-level security every row is embedded."""
    vid = make_items(conn, list(range(10)))
    role = worker_role(conn, vid)
    conn.execute("ALTER TABLE items ENABLE ROW LEVEL SECURITY; "
                 f"CREATE POLICY evens ON items TO {role} USING (id % 2 = 0)")
    dsn = role_dsn(qvl_db, role)
    queued = f"SELECT count(*) FROM qvl.queue_{vid}"
    reason = "SELECT coalesce(string_agg(reason, ' '), '') FROM qvl.worker_status"
    caplog.set_level(logging.INFO, logger="qvl.worker")
    with worker_thread(dsn, fake.target):
        wait_until(lambda: scalar(conn, queued) < 10 or "row-level security" in scalar(conn, reason), timeout=30)
        threading.Event().wait(1.0)  # several passes of the lane
        assert scalar(conn, queued) == 10, "rows the worker could not see were dropped from the queue"
        assert embedded(conn) == 0
        status = scalar(conn, reason)
        assert "vectorizer items" in status and "row-level security" in status and "BYPASSRLS" in status
    warnings = [r.getMessage() for r in caplog.records if "row-level security" in r.getMessage()]
    assert len(warnings) == 1 and "stay queued" in warnings[0]  # said once, not every pass
    assert fake.fake.seen == []

    conn.execute(f"ALTER ROLE {role} BYPASSRLS")
    with worker_thread(dsn, fake.target):
        wait_until(lambda: embedded(conn) == 10, timeout=30)
        wait_until(lambda: scalar(conn, reason) == "", timeout=10)
    assert scalar(conn, queued) == 0


def test_the_tables_owner_under_forced_row_level_security_leaves_rows_queued(
        conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService) -> None:
    """The same for a worker that runs as the table's owner when the table FORCEs row-level security."""
    vid = make_items(conn, list(range(6)))
    role = worker_role(conn, vid)
    conn.execute(f"ALTER TABLE items OWNER TO {role}; ALTER TABLE items ENABLE ROW LEVEL SECURITY; "
                 "ALTER TABLE items FORCE ROW LEVEL SECURITY; CREATE POLICY none_odd ON items USING (id % 2 = 0)")
    dsn = role_dsn(qvl_db, role)
    queued = f"SELECT count(*) FROM qvl.queue_{vid}"
    reason = "SELECT coalesce(string_agg(reason, ' '), '') FROM qvl.worker_status"
    with worker_thread(dsn, fake.target):
        wait_until(lambda: scalar(conn, queued) < 6 or "row-level security" in scalar(conn, reason), timeout=30)
        threading.Event().wait(1.0)
        assert scalar(conn, queued) == 6 and embedded(conn) == 0
        assert "NO FORCE ROW LEVEL SECURITY" in scalar(conn, reason)  # Postgres's hint for the owner
    conn.execute("ALTER TABLE items NO FORCE ROW LEVEL SECURITY")
    with worker_thread(dsn, fake.target):
        wait_until(lambda: embedded(conn) == 6, timeout=30)


def test_reembed_under_row_level_security_refuses_rather_than_queue_only_the_visible_rows(
        conn: psycopg.Connection[Any], qvl_db: str) -> None:
    """qvl.reembed (and the backfill of qvl.create_vectorizer) by a role that row-level security applies
    to used to queue only the rows it could see, and say it had queued them all."""
    vid = make_items(conn, list(range(6)))
    conn.execute(f"DELETE FROM qvl.queue_{vid}")
    role = worker_role(conn, vid)
    conn.execute(f"GRANT EXECUTE ON FUNCTION qvl.reembed(text, int), qvl._vectorizer(text), qvl._queue_all(int) "
                 f"TO {role}; ALTER TABLE items OWNER TO {role}; ALTER TABLE items ENABLE ROW LEVEL SECURITY; "
                 "ALTER TABLE items FORCE ROW LEVEL SECURITY; CREATE POLICY evens ON items USING (id % 2 = 0)")
    with psycopg.connect(role_dsn(qvl_db, role), autocommit=True) as owner:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            owner.execute("SELECT qvl.reembed('items')")
        assert scalar(conn, f"SELECT count(*) FROM qvl.queue_{vid}") == 0
        conn.execute("ALTER TABLE items NO FORCE ROW LEVEL SECURITY")
        assert scalar(owner, "SELECT qvl.reembed('items')") == 6


# -- (c) queued_at on re-queueing -------------------------------------------------------------------

def test_a_requeue_of_rows_being_embedded_keeps_their_wait(conn: psycopg.Connection[Any], qvl_db: str,
                                                           fake: FakeService) -> None:
    """The finding said re-queueing should refresh queued_at "so lag figures are true". They are true as
    they are: queued_at is when the row began to wait for a vector, and a re-queue writes none. Here
    qvl.reembed comes while a worker embeds the batch: the worker stores none of it (the claim no longer
    holds the rows, the re-queue does), so the rows still wait since they were first queued, and
    oldest_pending_age says so."""
    first, second = threading.Event(), threading.Event()
    rounds: list[str] = []

    def held(text: str) -> None:  # each batch's first item waits for the test
        if text == "caption 1":
            rounds.append(text)
            (first if len(rounds) == 1 else second).wait(30)

    fake.fake.behave = held
    vid = make_items(conn, [1, 2, 3])
    queued_at = scalar(conn, f"SELECT max(queued_at) FROM qvl.queue_{vid}")
    with worker_thread(qvl_db, fake.target, batch=3):
        wait_until(lambda: len(fake.fake.seen) == 1, timeout=30)  # the batch is in hand (its first item held)
        assert scalar(conn, "SELECT qvl.reembed('items')") == 3
        first.set()  # the batch comes back; the worker claims the re-queued rows and holds them
        wait_until(lambda: len(fake.fake.seen) == 4, timeout=30)
        assert embedded(conn) == 0  # nothing was written since the rows were queued...
        assert scalar(conn, f"SELECT max(queued_at) FROM qvl.queue_{vid}") == queued_at  # ...so their wait goes on
        assert scalar(conn, "SELECT oldest_pending_age >= now() - %s FROM qvl.vectorizer_status", (queued_at,))
        second.set()
        wait_until(lambda: scalar(conn, f"SELECT count(*) FROM qvl.queue_{vid}") == 0, timeout=30)
    assert embedded(conn) == 3


def test_a_change_of_a_waiting_row_keeps_its_place_and_its_wait(conn: psycopg.Connection[Any], qvl_db: str,
                                                               fake: FakeService) -> None:
    """Not refreshed on purpose: a row changed again while it still waits (no worker has taken it) keeps
    its queued_at, so oldest_pending_age says how long its vector has been out of date, and it keeps its
    place: a row changed more often than the backlog drains would otherwise never be embedded."""
    vid = make_items(conn, list(range(6)))
    queued_at = f"SELECT queued_at FROM qvl.queue_{vid} WHERE id = 0"
    before = scalar(conn, queued_at)
    conn.execute("UPDATE items SET caption = 'caption 0 (changed)' WHERE id = 0")
    assert scalar(conn, queued_at) == before
    with worker_thread(qvl_db, fake.target, batch=1):
        wait_until(lambda: embedded(conn) == 6, timeout=30)
    assert fake.fake.seen[0][1] == "caption 0 (changed)"  # first in line, as it was
