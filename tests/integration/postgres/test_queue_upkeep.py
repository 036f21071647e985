"""Queue upkeep (issue 10 item 15): the worker's writes take row locks in key order, rows hidden by
row-level security are never taken for deleted, re-queueing keeps lag figures true, failed rows are
pruned, and workers that died are shown as stale. Real Postgres; a fake gRPC service whose answers
the tests hold back to catch the worker mid-batch."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.postgres.conftest import WorkerProcess, drain, images, running, wait_until
from tests.integration.postgres.test_security_and_upgrade import role_dsn
from tests.support.fake_service import FakeService
from tests.support.service import ServiceProcess

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
        with running(qvl_db, fake.target, application_name=app):
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
    with psycopg.connect(qvl_db) as user, running(qvl_db, fake.target, lease_s=0.6, batch=2):
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
    with running(dsn, fake.target):
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
    with running(dsn, fake.target):
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
    with running(dsn, fake.target):
        wait_until(lambda: scalar(conn, queued) < 6 or "row-level security" in scalar(conn, reason), timeout=30)
        threading.Event().wait(1.0)
        assert scalar(conn, queued) == 6 and embedded(conn) == 0
        assert "NO FORCE ROW LEVEL SECURITY" in scalar(conn, reason)  # Postgres's hint for the owner
    conn.execute("ALTER TABLE items NO FORCE ROW LEVEL SECURITY")
    with running(dsn, fake.target):
        wait_until(lambda: embedded(conn) == 6, timeout=30)


def test_a_worker_that_may_read_but_not_write_gives_the_rows_back_and_says_why(
        conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService, caplog: pytest.LogCaptureFixture) -> None:
    """The role may read the table but not update it: the write fails. It used to end as a "lane error"
    with a traceback on every try, the rows held until their lease ran out; now the batch is given
    back at once (no attempt counted), the log says why once, and so does qvl.worker_status."""
    vid = make_items(conn, [1, 2, 3])
    role = worker_role(conn, vid)
    conn.execute(f"REVOKE UPDATE ON items FROM {role}")
    caplog.set_level(logging.INFO, logger="qvl.worker")
    reason = "SELECT coalesce(string_agg(reason, ' '), '') FROM qvl.worker_status"
    with running(role_dsn(qvl_db, role), fake.target, lease_s=300):
        wait_until(lambda: "permission denied for table items" in scalar(conn, reason), timeout=30)
        wait_until(lambda: len(fake.fake.seen) >= 6, timeout=30)  # tried again: the rows were given back
        assert scalar(conn, f"SELECT count(*) FROM qvl.queue_{vid} WHERE attempts = 0") == 3
    assert embedded(conn) == 0
    assert not any(r.getMessage() == "lane error" for r in caplog.records)
    assert len([r for r in caplog.records if "permission denied" in r.getMessage()]) == 1


def test_reembed_under_row_level_security_refuses_rather_than_queue_only_the_visible_rows(
        conn: psycopg.Connection[Any], qvl_db: str) -> None:
    """qvl.reembed (and the backfill of qvl.create_vectorizer) by a role that row-level security applies
    to used to queue only the rows it could see, and say it had queued them all."""
    vid = make_items(conn, list(range(6)))
    conn.execute(f"DELETE FROM qvl.queue_{vid}")
    role = worker_role(conn, vid)
    conn.execute(f"GRANT EXECUTE ON FUNCTION qvl.reembed(text, int), qvl._vectorizer(text), qvl._queue_all(int), "
                 f"qvl._adopt_served_model(int) TO {role}; ALTER TABLE items OWNER TO {role}; "
                 "ALTER TABLE items ENABLE ROW LEVEL SECURITY; "
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
    with running(qvl_db, fake.target, batch=3):
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
    with running(qvl_db, fake.target, batch=1):
        wait_until(lambda: embedded(conn) == 6, timeout=30)
    assert fake.fake.seen[0][1] == "caption 0 (changed)"  # first in line, as it was


# -- (b) pruning qvl.failed_<id> --------------------------------------------------------------------

def failed_keys(conn: psycopg.Connection[Any], name: str = "items") -> list[str]:
    return [pk for (pk,) in conn.execute("SELECT pk FROM qvl.failed_items(%s) ORDER BY pk::int", (name,))]


def refuse_bad(text: str) -> tuple[str, str] | None:
    return ("INVALID_ARGUMENT", "not a recognised image") if text.startswith("bad") else None


def make_failed(conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService, bad: list[int], good: list[int]) -> int:
    """Table items whose rows ``bad`` the (fake) service refuses: drained, they are in qvl.failed_<id>."""
    fake.fake.behave = refuse_bad
    vid = make_items(conn, [])
    for i in sorted(bad + good):
        conn.execute("INSERT INTO items (id, caption) VALUES (%s, %s)", (i, f"bad {i}" if i in bad else f"caption {i}"))
    with running(qvl_db, fake.target):
        wait_until(lambda: len(failed_keys(conn)) == len(bad) and embedded(conn) == len(good), timeout=30)
    return vid


def test_failed_rows_of_deleted_rows_are_pruned_by_the_worker(conn: psycopg.Connection[Any], qvl_db: str,
                                                             fake: FakeService) -> None:
    """A failed row whose table row was deleted was kept forever (nothing to retry, and qvl.failed_items
    listed it). The worker prunes such rows as it goes; failures of rows that still exist are kept (by
    default as long as they fail: they are the only record of why a row has no vector)."""
    vid = make_failed(conn, qvl_db, fake, bad=[0, 1, 2], good=[3, 4, 5])
    conn.execute("DELETE FROM items WHERE id IN (0, 1)")
    conn.execute(f"UPDATE qvl.failed_{vid} SET failed_at = now() - interval '400 days' WHERE id = 2")
    with running(qvl_db, fake.target, prune_every_s=0.2):
        wait_until(lambda: failed_keys(conn) != ["0", "1", "2"], timeout=30)
    assert failed_keys(conn) == ["2"]  # its row is still there and still fails: kept, however old


def test_prune_failed_with_a_retention(conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService) -> None:
    vid = make_failed(conn, qvl_db, fake, bad=[1, 2, 3, 4], good=[])
    conn.execute(f"UPDATE qvl.failed_{vid} SET failed_at = now() - interval '40 days' WHERE id IN (1, 2)")
    conn.execute("DELETE FROM items WHERE id = 4")
    assert conn.execute("SELECT * FROM qvl.prune_failed()").fetchall() == [("items", 1, 0)]
    assert failed_keys(conn) == ["1", "2", "3"]
    assert conn.execute("SELECT * FROM qvl.prune_failed('items', older_than => '60 days')").fetchall() == [
        ("items", 0, 0)]
    assert scalar(conn, "SELECT qvl.set_failed_retention('30 days')") is not None
    assert conn.execute("SELECT * FROM qvl.prune_failed('items')").fetchall() == [("items", 0, 2)]
    assert failed_keys(conn) == ["3"]
    conn.execute("SELECT qvl.set_failed_retention(NULL)")  # back to: as long as the row fails
    conn.execute(f"UPDATE qvl.failed_{vid} SET failed_at = now() - interval '40 days'")
    assert conn.execute("SELECT * FROM qvl.prune_failed()").fetchall() == [("items", 0, 0)]
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT qvl.set_failed_retention('-1 day')")
    with pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("SELECT * FROM qvl.prune_failed('nope')")


def test_pruning_never_takes_rows_hidden_by_row_level_security_for_deleted(
        conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService) -> None:
    vid = make_failed(conn, qvl_db, fake, bad=[1, 2, 3, 4], good=[])
    role = worker_role(conn, vid)
    conn.execute(f"GRANT EXECUTE ON FUNCTION qvl.prune_failed(text, interval), qvl._vectorizer(text), "
                 f"qvl._failed_retention() TO {role}; GRANT SELECT ON qvl.config TO {role}; "
                 f"ALTER TABLE items ENABLE ROW LEVEL SECURITY; CREATE POLICY evens ON items TO {role} "
                 "USING (id % 2 = 0)")
    with psycopg.connect(role_dsn(qvl_db, role), autocommit=True) as c:
        notices: list[str] = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        assert c.execute("SELECT * FROM qvl.prune_failed()").fetchall() == [("items", None, 0)]
        assert any("row-level security" in n for n in notices), notices
    assert failed_keys(conn) == ["1", "2", "3", "4"]


def test_a_failure_fixed_through_a_sync_trigger_is_forgotten(conn: psycopg.Connection[Any], qvl_db: str,
                                                             service: ServiceProcess) -> None:
    """A sync vectorizer with on_error => 'queue': a row the service refuses goes to the queue, the worker
    fails it. The row is fixed by an UPDATE and the trigger embeds it: its failure used to stay listed
    in qvl.failed_items (and counted in vectorizer_status) forever."""
    conn.execute("CREATE TABLE shots (id int PRIMARY KEY, caption text, image bytea)")
    conn.execute("SELECT qvl.create_vectorizer('shots', text_columns => ARRAY['caption'], "
                 "image_columns => ARRAY['image'], mode => 'sync', on_error => 'queue', dimensions => 32)")
    conn.execute("INSERT INTO shots VALUES (1, 'broken', 'not an image'::bytea), (2, 'fine', NULL)")
    drain(qvl_db, service.grpc_target)
    assert failed_keys(conn, "shots") == ["1"]
    conn.execute("UPDATE shots SET image = %s WHERE id = 1", (images(1)[0],))
    assert scalar(conn, "SELECT embedding IS NOT NULL FROM shots WHERE id = 1")
    assert failed_keys(conn, "shots") == []
    assert scalar(conn, "SELECT failed FROM qvl.vectorizer_status WHERE name = 'shots'") == 0


# -- (f) workers that died without a word -------------------------------------------------------------

def test_a_killed_worker_shows_as_stale_and_is_forgotten(conn: psycopg.Connection[Any], qvl_db: str,
                                                         fake: FakeService,
                                                         worker_processes: Callable[..., WorkerProcess]) -> None:
    """A SIGKILLed worker cannot delete its qvl.worker_status row: it stayed 'running' forever. Workers now
    beat (last_seen); qvl.workers shows one silent for 3 heartbeats as 'stale', and live workers delete
    rows not seen for forget_workers_s (a day by default)."""
    make_items(conn, [1, 2])
    killed = worker_processes(qvl_db, fake.target, "--heartbeat", "0.5")
    assert killed.proc is not None
    name = f"{socket.gethostname()}:{killed.proc.pid}"
    state = "SELECT state FROM qvl.workers WHERE worker = %s"
    beats = "SELECT count(*) FROM qvl.workers WHERE worker = %s AND heartbeat_s = 0.5"
    wait_until(lambda: embedded(conn) == 2 and scalar(conn, beats, (name,)) == 1, timeout=60)
    assert scalar(conn, state, (name,)) == "running"
    killed.kill()
    wait_until(lambda: scalar(conn, state, (name,)) == "stale", timeout=10)
    with running(qvl_db, fake.target, heartbeat_s=0.2, forget_workers_s=4.0) as live:
        wait_until(lambda: scalar(conn, f"SELECT count(*) FROM ({state}) s", (live.ident,)) == 1, timeout=10)
        assert scalar(conn, state, (live.ident,)) == "running"  # an idle worker has its row too
        wait_until(lambda: scalar(conn, "SELECT count(*) FROM qvl.workers WHERE worker = %s", (name,)) == 0,
                   timeout=15)
        assert scalar(conn, state, (live.ident,)) == "running"
    assert scalar(conn, "SELECT count(*) FROM qvl.worker_status") == 0  # a stopped worker deletes its own


# -- a new start forgets the old tries ---------------------------------------------------------------

def test_a_changed_or_reembedded_row_starts_over(conn: psycopg.Connection[Any], qvl_db: str) -> None:
    """A row that failed before, then changed (new input) or queued again by qvl.reembed, kept its count
    of tries and its last error: the new input had fewer tries left and was sent alone as a suspect."""
    vid = make_items(conn, [1, 2, 3])
    conn.execute(f"UPDATE qvl.queue_{vid} SET attempts = 3, last_error = 'model process died', "
                 "not_before = now() + interval '1 hour'")
    conn.execute("UPDATE items SET caption = 'a better caption' WHERE id = 1")
    conn.execute("UPDATE items SET note = 'not an input' WHERE id = 2")  # no re-queue: its tries stay
    state = {r[0]: r[1:] for r in conn.execute(f"SELECT id, attempts, last_error, not_before IS NULL "
                                               f"FROM qvl.queue_{vid}")}
    assert state == {1: (0, None, True), 2: (3, "model process died", False), 3: (3, "model process died", False)}
    assert scalar(conn, "SELECT qvl.reembed('items')") == 3
    assert conn.execute(f"SELECT max(attempts), count(last_error), count(not_before) FROM qvl.queue_{vid}"
                        ).fetchone() == (0, 0, 0)
