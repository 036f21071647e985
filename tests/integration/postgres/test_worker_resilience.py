"""The worker as a real process: a service outage loses nothing, SIGKILL mid-batch loses and
duplicates nothing, SIGTERM finishes the batch in hand, two workers share one queue."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from connectors.postgres.installer import install
from tests.integration.postgres.conftest import WorkerProcess, images, new_database, wait_until, write_log
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service, pytest.mark.slow]


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

            svc.start()
            assert conn.execute("SELECT qvl.wait_for_embeddings('items', '120 s')").fetchone() == (True,)
            assert embedded(conn) == 200
            assert conn.execute("SELECT pending, failed FROM qvl.vectorizer_status").fetchone() == (0, 0)
            assert worker.stop() == 0
            log = worker.log()
            assert "the service is unavailable" in log and "the service is back" in log


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
    assert conn.execute("SELECT qvl.wait_for_embeddings('items', '120 s')").fetchone() == (True,)
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
    assert conn.execute("SELECT qvl.wait_for_embeddings('items', '120 s')").fetchone() == (True,)
    assert embedded(conn) == 900
    assert count(conn, "SELECT count(*) FROM items_writes") == 900
    assert two.stop() == 0
