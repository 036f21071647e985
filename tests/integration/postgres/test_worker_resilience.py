"""The worker as a real process: a service outage loses nothing, SIGKILL mid-batch loses and
duplicates nothing, SIGTERM finishes the batch in hand, two workers share one queue."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from connectors.postgres.installer import install
from tests.integration.postgres.conftest import (
    WorkerProcess,
    images,
    new_database,
    stuck_report,
    wait_until,
    write_log,
)
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service, pytest.mark.slow, pytest.mark.lifecycle]


def make_items(conn: psycopg.Connection[Any]) -> int:
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text, image bytea)")
    row = conn.execute("SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'], "
                       "image_columns => ARRAY['image'])").fetchone()
    assert row is not None
    return int(row[0])


def insert(conn: psycopg.Connection[Any], ids: range, chunk: int = 50) -> None:
    pics = images(len(ids), offset=ids.start)
    rows = [(i, f"caption {i}", pics[k]) for k, i in enumerate(ids)]
    for s in range(0, len(rows), chunk):  # one transaction per chunk, like an application
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany("INSERT INTO items VALUES (%s, %s, %s)", rows[s:s + chunk])


def count(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def embedded(conn: psycopg.Connection[Any]) -> int:
    return count(conn, "SELECT count(*) FROM items WHERE embedding IS NOT NULL")


def test_service_outage_loses_nothing(pg_server: PostgresServer, request: pytest.FixtureRequest,
                                      worker_processes: Callable[..., WorkerProcess]) -> None:
    with ServiceProcess() as svc:
        dsn = new_database(pg_server, request.node.name)
        install(dsn, service_url=svc.http_url)
        with psycopg.connect(dsn, autocommit=True) as conn:
            make_items(conn)
            worker = worker_processes(dsn, svc.grpc_target, "--batch", "32")
            insert(conn, range(50))
            assert conn.execute("SELECT qvl.wait_for_embeddings('items', '60 s')").fetchone() == (True,)

            svc.stop()
            insert(conn, range(50, 200))  # the application keeps writing while the model is down
            time.sleep(2.0)  # the worker tries, fails, backs off
            assert embedded(conn) == 50
            assert conn.execute("SELECT pending, failed FROM qvl.vectorizer_status").fetchone() == (150, 0)

            outage = worker.log()
            svc.start()
            assert conn.execute("SELECT qvl.wait_for_embeddings('items', '120 s')").fetchone() == (True,)
            assert embedded(conn) == 200
            assert conn.execute("SELECT pending, failed FROM qvl.vectorizer_status").fetchone() == (0, 0)
            assert worker.stop() == 0
            log = worker.log()
            assert "the service cannot embed now; pausing" in log and "the service is back" in log
            # One replica, down: its failed resends are the outage, not streams carried on. (Once it
            # is started again, a stream sent while it was still loading and answered when it was
            # ready is carried on, by the counter's own meaning: "the same one back".)
            assert "carried on" not in outage
            assert all(json.loads(line).get("resent", 0) == 0 for line in outage.splitlines() if line.startswith("{"))


def test_sigkill_mid_batch_loses_and_repeats_nothing(conn: psycopg.Connection[Any], qvl_db: str,
                                                    service: ServiceProcess,
                                                    worker_processes: Callable[..., WorkerProcess]) -> None:
    vid = make_items(conn)
    write_log(conn, "items")
    insert(conn, range(400))
    first = worker_processes(qvl_db, service.grpc_target, "--batch", "40", "--concurrency", "1", "--lease", "2",
                             name="qvl-worker-killed")
    claimed = f"SELECT count(*) FROM qvl.queue_{vid} WHERE claimed_by IS NOT NULL AND claimed_until > now()"
    wait_until(lambda: embedded(conn) >= 40, timeout=120)
    for _ in range(200):  # freeze it; kill it only while it holds a claimed batch
        first.signal(signal.SIGSTOP)
        if count(conn, claimed) > 0:
            break
        first.signal(signal.SIGCONT)
        time.sleep(0.01)
    first.kill()  # SIGKILL: no chance to finish or release anything
    in_flight = count(conn, claimed)
    assert in_flight > 0  # it died holding a batch
    done_before = embedded(conn)
    assert done_before < 400

    second = worker_processes(qvl_db, service.grpc_target, "--batch", "40", "--lease", "2",
                              name="qvl-worker-second")
    assert conn.execute("SELECT qvl.wait_for_embeddings('items', '120 s')").fetchone() == (True,)
    assert embedded(conn) == 400
    assert count(conn, "SELECT count(*) FROM items_writes") == 400  # each row written exactly once
    assert count(conn, "SELECT count(DISTINCT id) FROM items_writes") == 400
    assert count(conn, "SELECT count(*) FROM items_writes WHERE app = 'qvl-worker-killed'") == done_before
    assert second.stop() == 0


def test_a_row_an_application_keeps_locked_holds_up_only_itself(
        conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess,
        worker_processes: Callable[..., WorkerProcess]) -> None:
    """An application transaction holds one row of the worker's batch (SELECT ... FOR UPDATE) and
    stays open: the write waits --write-lock-wait for it, then writes the other rows; the held row
    is embedded once the transaction ends. (The write used to wait as long as the transaction.)"""
    vid = make_items(conn)
    insert(conn, range(20))
    with psycopg.connect(qvl_db) as holder:
        holder.execute("SELECT 1 FROM items WHERE id = 7 FOR UPDATE")
        worker = worker_processes(qvl_db, service.grpc_target, "--batch", "40", "--concurrency", "1",
                                  "--write-lock-wait", "1", "--retry-delay", "0.5")
        wait_until(lambda: embedded(conn) == 19, timeout=60)
        time.sleep(3.0)  # tried again meanwhile, never written under the lock, never counted an attempt
        assert count(conn, "SELECT count(*) FROM items WHERE id = 7 AND embedding IS NULL") == 1
        assert conn.execute("SELECT pending, failed FROM qvl.vectorizer_status").fetchone() == (1, 0)
        assert count(conn, f"SELECT attempts FROM qvl.queue_{vid}") == 0
        holder.rollback()  # the application's transaction ends
    assert conn.execute("SELECT qvl.wait_for_embeddings('items', '60 s')").fetchone() == (True,)
    assert embedded(conn) == 20
    assert worker.stop() == 0
    assert "rows stayed locked by other transactions" in worker.log()


def test_two_workers_share_the_queue_and_sigterm_finishes_the_batch(
        conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess,
        worker_processes: Callable[..., WorkerProcess]) -> None:
    vid = make_items(conn)
    write_log(conn, "items")
    one = worker_processes(qvl_db, service.grpc_target, "--batch", "16", name="qvl-worker-one")
    two = worker_processes(qvl_db, service.grpc_target, "--batch", "16", name="qvl-worker-two")
    listening = ("SELECT count(DISTINCT application_name) FROM pg_stat_activity WHERE application_name IN "
                 "('qvl-worker-one', 'qvl-worker-two') AND query = 'LISTEN qvl_config'")
    wait_until(lambda: count(conn, listening) == 2, timeout=60)  # both up before the first row arrives
    insert(conn, range(600), chunk=25)
    # 25 rows once stayed claimed by a worker that crashed at start-up (grpcio, two lanes starting
    # streams at once: connectors.client._STREAM_START). Should rows stay queued again, the report
    # says who holds them, what each worker's sessions wait on, and each worker's threads and log.
    done = conn.execute("SELECT qvl.wait_for_embeddings('items', '120 s')").fetchone() == (True,)
    assert done, stuck_report(conn, vid, one, two)
    assert count(conn, "SELECT count(*) FROM items_writes") == 600
    assert count(conn, "SELECT count(DISTINCT id) FROM items_writes") == 600
    by_worker = dict(conn.execute("SELECT app, count(*) FROM items_writes GROUP BY app").fetchall())
    assert set(by_worker) == {"qvl-worker-one", "qvl-worker-two"}, by_worker

    # SIGTERM while work is in hand: the worker writes (or gives back) what it claimed, then exits 0.
    insert(conn, range(600, 900), chunk=300)
    wait_until(lambda: count(conn, f"SELECT count(*) FROM qvl.queue_{vid} WHERE claimed_by LIKE "
                                   f"'%:{one.proc.pid}:%'") > 0, timeout=60)  # type: ignore[union-attr]
    one.signal(15)
    assert one.proc.wait(timeout=60) == 0  # type: ignore[union-attr]
    assert count(conn, f"SELECT count(*) FROM qvl.queue_{vid} WHERE claimed_by LIKE "
                       f"'%:{one.proc.pid}:%'") == 0  # type: ignore[union-attr]
    done = conn.execute("SELECT qvl.wait_for_embeddings('items', '120 s')").fetchone() == (True,)
    assert done, stuck_report(conn, vid, one, two)
    assert embedded(conn) == 900
    assert count(conn, "SELECT count(*) FROM items_writes") == 900
    assert two.stop() == 0


def test_rows_move_within_seconds_of_the_service_coming_back(pg_server: PostgresServer,
                                                             request: pytest.FixtureRequest,
                                                             worker_processes: Callable[..., WorkerProcess]) -> None:
    """Issue 11 item 3: service stopped, rows inserted, service back 25 s later: the rows must move
    within seconds of the service being ready, not after the 120 s stall timeout."""
    with ServiceProcess() as svc:
        dsn = new_database(pg_server, request.node.name)
        install(dsn, service_url=svc.http_url)
        with psycopg.connect(dsn, autocommit=True) as conn:
            make_items(conn)
            worker = worker_processes(dsn, svc.grpc_target, "--batch", "32", "--stall-timeout", "120",
                                      "--max-backoff", "30")
            insert(conn, range(10))
            assert conn.execute("SELECT qvl.wait_for_embeddings('items', '60 s')").fetchone() == (True,)

            svc.stop()
            insert(conn, range(10, 30))
            time.sleep(25)
            svc.start()  # returns once /.well-known/ready answers
            ready = time.monotonic()
            wait_until(lambda: embedded(conn) == 30, timeout=240, every=0.1)
            moved_s = time.monotonic() - ready
            print(f"rows moved {moved_s:.1f} s after the service was ready again")
            assert moved_s < 10, f"rows waited {moved_s:.1f} s after the service was back"
            assert conn.execute("SELECT pending, failed FROM qvl.vectorizer_status").fetchone() == (0, 0)
            assert worker.stop() == 0


def test_a_row_that_kills_the_model_process_is_isolated_and_failed(
        pg_server: PostgresServer, request: pytest.FixtureRequest,
        worker_processes: Callable[..., WorkerProcess]) -> None:
    """Issue 10 item 1: a row whose input kills the model process (here the test-only hook
    QVL_TEST_CRASH_ON_TEXT: the model process exits on an item with that text) is tried alone after
    its batch died, failed after --max-attempts tries, and its neighbours are embedded; the service
    is not kept in a crash loop."""
    marker = "qvl-test: crash the model process"
    with ServiceProcess(env={"QVL_TEST_CRASH_ON_TEXT": marker}) as svc:
        dsn = new_database(pg_server, request.node.name)
        install(dsn, service_url=svc.http_url)
        with psycopg.connect(dsn, autocommit=True) as conn:
            make_items(conn)
            pics = images(24, offset=500)
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO items VALUES (%s, %s, %s)",
                                [(i, marker if i == 13 else f"caption {i}", pics[i]) for i in range(24)])
            started = time.monotonic()
            worker = worker_processes(dsn, svc.grpc_target, "--batch", "8", "--concurrency", "1",
                                      "--max-attempts", "3", "--retry-delay", "0.5")
            wait_until(lambda: count(conn, "SELECT count(*) FROM qvl.failed_items('items')") == 1
                       and embedded(conn) == 23, timeout=300, every=0.2)
            print(f"poison row failed and its neighbours embedded in {time.monotonic() - started:.1f} s")
            row = conn.execute("SELECT pk, code, attempts, error FROM qvl.failed_items('items')").fetchone()
            assert row is not None and row[0] == "13" and row[1] == "UNAVAILABLE" and row[2] == 3, row
            assert "row 13 of public.items" in row[3]
            assert conn.execute("SELECT pending FROM qvl.vectorizer_status").fetchone() == (0,)
            assert worker.stop() == 0
        crashes = svc.log_path.read_text().count("the model process exited; starting it again")
        assert crashes == 3, f"{crashes} model process restarts for a row tried 3 times"
