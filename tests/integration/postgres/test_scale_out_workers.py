"""Three `qvl worker` processes against two real service replicas (one gRPC target naming both):
a replica is SIGKILLed mid-backfill with a stream in it, and every row is still embedded exactly
once (a trigger logs every write of the vector column)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from connectors.postgres.installer import install
from tests.integration.postgres.conftest import WorkerProcess, images, new_database, wait_until, write_log
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess, metric, started_together

pytestmark = [pytest.mark.postgres, pytest.mark.service, pytest.mark.slow, pytest.mark.lifecycle]
ROWS = 600


def count(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def final_counts(worker: WorkerProcess) -> dict[str, int]:
    """The worker's own last progress line: embedded, resent (streams carried to the other replica),
    released (rows given back to the queue)."""
    last: dict[str, int] = {}
    for line in worker.log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("vectorizer") == "items" and "embedded" in entry:
                last = {k: int(entry.get(k) or 0) for k in ("embedded", "resent", "released")}
    return last


def test_workers_lose_and_repeat_nothing_when_a_replica_dies_mid_backfill(
        pg_server: PostgresServer, request: pytest.FixtureRequest,
        worker_processes: Callable[..., WorkerProcess]) -> None:
    with started_together(ServiceProcess(), ServiceProcess()) as (a, b):
        dsn = new_database(pg_server, request.node.name)
        install(dsn, service_url=a.http_url)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text, image bytea)")
            conn.execute("SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'], "
                         "image_columns => ARRAY['image'])")
            write_log(conn, "items")
            pics = images(ROWS)
            with conn.cursor() as cur:  # the backlog is there before the workers start
                cur.executemany("INSERT INTO items VALUES (%s, %s, %s)",
                                [(i, f"caption {i}", pics[i]) for i in range(ROWS)])

            target = f"ipv4:{a.grpc_target},{b.grpc_target}"
            workers = [worker_processes(dsn, target, "--batch", "16", "--concurrency", "2",
                                        name=f"qvl-worker-{k}") for k in range(3)]
            wait_until(lambda: count(conn, "SELECT count(*) FROM items_writes") >= ROWS // 4, timeout=180,
                       every=0.05)
            wait_until(lambda: metric(a, "qvl_admitted_items ") > 0, timeout=30, every=0.001)
            a_items = metric(a, 'qvl_items_total{task="embed"}')
            written_at_kill = count(conn, "SELECT count(*) FROM items_writes")
            killed = conn.execute("SELECT clock_timestamp()").fetchone()
            a.kill()  # with a stream in it

            assert conn.execute("SELECT qvl.wait_for_embeddings('items', '300 s')").fetchone() == (True,)
            writes = count(conn, "SELECT count(*) FROM items_writes")
            distinct = count(conn, "SELECT count(DISTINCT id) FROM items_writes")
            missing = count(conn, "SELECT count(*) FROM items WHERE embedding IS NULL")
            assert count(conn, "SELECT count(*) FROM qvl.failed_items('items')") == 0
            # the longest pause in writes once the replica was gone
            row = conn.execute("""
                SELECT coalesce(max(gap), 0) FROM (
                    SELECT extract(epoch FROM at - lag(at) OVER (ORDER BY at)) AS gap
                      FROM (SELECT %s::timestamptz AS at UNION ALL
                            SELECT at FROM items_writes WHERE at > %s) w) g""", (killed[0], killed[0])).fetchone()
            assert row is not None
            stall = float(row[0])
            by_worker = dict(conn.execute("SELECT app, count(*) FROM items_writes GROUP BY app").fetchall())
            for w in workers:
                assert w.stop() == 0
            counts = [final_counts(w) for w in workers]
            b_items = metric(b, 'qvl_items_total{task="embed"}')
            print(f"\n{ROWS} rows, 3 workers x 2 lanes, replica a SIGKILLed after {written_at_kill} writes: "
                  f"items embedded by a (until the kill) {a_items:.0f}, by b {b_items:.0f}; rows lost {missing}, "
                  f"written twice {writes - distinct}; streams carried on {sum(c['resent'] for c in counts)}, "
                  f"rows given back {sum(c['released'] for c in counts)}; longest stall after the kill "
                  f"{stall:.2f} s; writes by worker {by_worker}")
            assert missing == 0 and writes == distinct == ROWS
            assert sum(c["embedded"] for c in counts) == ROWS
            assert a_items > 0 and b_items > 0
            assert stall < 15
