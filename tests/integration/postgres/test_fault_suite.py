"""The fault suite: rows with images and video go INSERT -> queue -> worker -> service while everything
around them fails, and nothing accepted is lost.

During one ingest of N rows (QVL_FAULT_ROWS, default 2,000; 1 in 10 with a video): the model process
is SIGKILLed three times, the service is restarted, the worker is SIGKILLed (a new one takes over),
Postgres is restarted (the application retries its chunk, as applications do), two poison rows crash
the model process every time they are tried (test-only QVL_TEST_CRASH_ON_TEXT: no real input crashes
it here), and a burst of oversized requests hits the service. Then every good row is embedded exactly
once, only the poison rows are failed, none is lost, and one line of figures is printed (with each
process's peak resident memory).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from connectors.postgres.installer import install
from tests.integration.postgres.conftest import WorkerProcess, images, wait_until, write_log
from tests.media_factory import video_bytes
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service, pytest.mark.slow, pytest.mark.soak]
N = int(os.environ.get("QVL_FAULT_ROWS", "2000"))
POISON = "POISON-ROW crash the model process"
POISON_IDS = (N // 3, (2 * N) // 3)
MAX_REQUEST = 4 * 1024 * 1024


class PeakRss:
    """Samples the resident memory of the processes it is given, keeping each role's peak."""

    def __init__(self) -> None:
        self.peak: dict[str, int] = {}
        self.pids: dict[str, Callable[[], list[int]]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, role: str, pids: Callable[[], list[int]]) -> None:
        self.pids[role] = pids

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            for role, pids in list(self.pids.items()):
                for pid in pids():
                    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as fh:
                        # A process that is exiting has no VmRSS line any more.
                        rss = next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:")), 0)
                        self.peak[role] = max(self.peak.get(role, 0), rss)

    def mb(self, role: str) -> int:
        return self.peak.get(role, 0) // (1024 * 1024)


def _rows(start: int, stop: int) -> list[tuple[Any, ...]]:
    pics = images(stop - start, offset=start)
    clip = video_bytes(frames=4, fps=2, size=(64, 48))
    out = []
    for k, i in enumerate(range(start, stop)):
        if i in POISON_IDS:
            out.append((i, POISON, None, clip))
        elif i % 10 == 0:
            out.append((i, f"clip {i}", None, clip))
        else:
            out.append((i, f"photo {i}", pics[k], None))
    return out


def _insert_all(dsn: str, done: threading.Event, retried: list[int]) -> None:
    """The application: chunks of 50 rows, each chunk retried until its transaction commits. It
    stays about 300 rows ahead of the worker, so it is still writing when Postgres restarts."""
    backlog = "SELECT count(*) FROM items WHERE embedding IS NULL"
    for start in range(0, N, 50):
        while _count(dsn, backlog) > 300:
            time.sleep(0.2)
        chunk = _rows(start, min(start + 50, N))
        while True:
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn, conn.transaction():
                    conn.cursor().executemany("INSERT INTO items VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                                              chunk)
                break
            except psycopg.OperationalError:
                retried.append(start)  # Postgres restarting: try the chunk again
                time.sleep(0.5)
    done.set()


def _count(dsn: str, sql: str) -> int:
    for _ in range(100):  # Postgres may be restarting
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute(sql).fetchone()
                assert row is not None
                return int(row[0])
        except psycopg.OperationalError:
            time.sleep(0.3)
    raise TimeoutError("Postgres did not come back")


def _oversized_burst(svc: ServiceProcess) -> int:
    """Bodies over the request limit, all at once: each must be refused (413), none may hurt the rest."""
    body = b'{"items": ["' + b"x" * (MAX_REQUEST + 1024) + b'"]}'
    refused = 0
    threads = []
    lock = threading.Lock()

    def one() -> None:
        nonlocal refused
        with contextlib.suppress(httpx.HTTPError):
            status = httpx.post(svc.http_url + "/v1/embed", content=body, timeout=60).status_code
            if status == 413:
                with lock:
                    refused += 1

    for _ in range(24):
        threads.append(threading.Thread(target=one))
        threads[-1].start()
    for t in threads:
        t.join()
    return refused


def test_nothing_is_lost_whatever_fails() -> None:
    started = time.monotonic()
    figures: dict[str, Any] = {"rows": N, "model_kills": 0}
    env = {"QVL_TEST_CRASH_ON_TEXT": POISON, "QVL_MAX_REQUEST_BYTES": str(MAX_REQUEST)}
    rss = PeakRss()
    workers: list[WorkerProcess] = []
    with PostgresServer() as pg, ServiceProcess(env=env) as svc:
        dsn = pg.create_database("faults")
        install(dsn, service_url=svc.http_url)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text, image bytea, video bytea)")
            conn.execute("SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'], "
                         "image_columns => ARRAY['image'], video_columns => ARRAY['video'], dimensions => 64)")
            write_log(conn, "items")

        def worker(name: str) -> WorkerProcess:
            w = WorkerProcess(dsn, svc.grpc_target, "--batch", "32", "--max-attempts", "3", "--lease", "5",
                              name=name).start()
            workers.append(w)
            return w

        rss.watch("request", lambda: [svc.proc.pid] if svc.proc else [])
        rss.watch("model", lambda: [p for p in [svc.model_pid()] if p])
        rss.watch("worker", lambda: [w.proc.pid for w in workers if w.proc and w.proc.poll() is None])
        rss.thread.start()
        first = worker("qvl-fault-worker-1")
        inserted, retried = threading.Event(), []
        app = threading.Thread(target=_insert_all, args=(dsn, inserted, retried), daemon=True)
        app.start()
        embedded = "SELECT count(*) FROM items WHERE embedding IS NOT NULL"

        def at(share: float) -> None:
            wait_until(lambda: _count(dsn, embedded) >= share * N, timeout=900, every=0.2)

        def kill_model() -> None:
            """SIGKILL the model process (waiting for one: it may be restarting after a poison row)."""
            wait_until(lambda: svc.model_pid() is not None, timeout=300, every=0.2)
            pid = svc.model_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            figures["model_kills"] += 1

        at(0.10)
        kill_model()
        at(0.20)
        figures["oversized_refused"] = _oversized_burst(svc)
        at(0.25)
        kill_model()
        at(0.35)
        first.kill()  # SIGKILL mid-batch: its claims run out (lease) and another worker takes them
        worker("qvl-fault-worker-2")
        at(0.45)
        svc.stop()
        time.sleep(2)
        svc.start()
        at(0.55)
        pg.restart()  # the worker and the application reconnect
        at(0.65)
        kill_model()
        assert inserted.wait(timeout=900)
        queue = "SELECT pending + in_progress FROM qvl.vectorizer_status WHERE name = 'items'"
        wait_until(lambda: _count(dsn, queue) == 0, timeout=900, every=0.5)

        with psycopg.connect(dsn, autocommit=True) as conn:
            def one(sql: str) -> int:
                row = conn.execute(sql).fetchone()
                assert row is not None
                return int(row[0])

            total = one("SELECT count(*) FROM items")
            done = one(embedded)
            writes = one("SELECT count(*) FROM items_writes")
            distinct = one("SELECT count(DISTINCT id) FROM items_writes")
            failed = one("SELECT failed FROM qvl.vectorizer_status WHERE name = 'items'")
            failed_poison = one("SELECT count(*) FROM items i JOIN qvl.failed_items('items') f ON "
                                f"f.pk = i.id::text WHERE i.caption = '{POISON}'")
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.stop()
        rss.stop.set()
        figures.update(embedded_once=distinct if writes == distinct else f"{distinct} ({writes} writes)",
                       failed=failed, failed_poison=failed_poison, lost=total - done - failed,
                       app_retried_chunks=len(set(retried)), seconds=round(time.monotonic() - started, 1),
                       peak_rss_mb={r: rss.mb(r) for r in ("request", "model", "worker")})
        print("\nfault suite: " + " ".join(f"{k}={v}" for k, v in figures.items()))
        assert total == N
        assert writes == distinct == N - len(POISON_IDS), figures  # every good row written exactly once
        assert failed == failed_poison == len(POISON_IDS), figures  # only the poison rows failed
        assert total - done - failed == 0, figures  # nothing lost
        assert figures["oversized_refused"] == 24 and figures["model_kills"] == 3
