"""What the worker counts (issue 24.4, "Smaller:"): its Prometheus endpoint scraped while a real
``qvl worker`` process embeds rows of a real database through the real service, and the progress
line's ``failed`` after ``qvl.retry_failed``."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.postgres.conftest import WorkerProcess, images, wait_until
from tests.support.ports import free_port
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]


def scalar(conn: psycopg.Connection[Any], sql: str, *args: Any) -> Any:
    row = conn.execute(sql, args).fetchone()
    assert row is not None
    return row[0]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the worker's endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def make_items(conn: psycopg.Connection[Any], good: int, bad: list[int]) -> None:
    """``good`` rows with a caption and an image, where the rows numbered in ``bad`` hold bytes that are
    no image (the service refuses them: bad input, failed at once)."""
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text, image bytea)")
    conn.execute("SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'], "
                 "image_columns => ARRAY['image'])")
    pics = images(good)
    for i in bad:
        pics[i] = b"this is not an image"
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO items VALUES (%s, %s, %s)", [(i, f"caption {i}", p) for i, p in enumerate(pics)])


def progress_lines(worker: WorkerProcess, vectorizer: str) -> list[dict[str, Any]]:
    out = []
    for line in worker.log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("vectorizer") == vectorizer and "embedded" in entry and "pending" in entry:
                out.append(entry)
    return out


def test_the_metrics_endpoint_counts_real_work(conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess,
                                               worker_processes: Callable[..., WorkerProcess]) -> None:
    """Rows embedded equal the vectors written, a refused row counts once, the queue depth and the
    failed rows are read from the database, and a vectorizer whose table the worker's role may not
    read shows as held (reason rights) with its rows queued."""
    make_items(conn, 12, bad=[5])
    conn.execute("CREATE TABLE hidden (id int PRIMARY KEY, body text)")
    conn.execute("SELECT qvl.create_vectorizer('hidden', text_columns => ARRAY['body'])")
    conn.execute("INSERT INTO hidden SELECT g, 'note ' || g FROM generate_series(1, 4) g")
    # No policy and no BYPASSRLS for the worker's login: it may not read the table whole.
    conn.execute("ALTER TABLE hidden ENABLE ROW LEVEL SECURITY")
    port = free_port()
    worker = worker_processes(qvl_db, service.grpc_target, "--metrics-port", str(port), "--metrics-every", "0.5")

    def settled() -> bool:
        try:
            got = scrape(port)
        except OSError:
            return False
        return (sample(got, "qvl_worker_queue_depth", vectorizer="items") == 0
                and sample(got, "qvl_worker_held", vectorizer="hidden", reason="rights") == 1)

    wait_until(settled, timeout=90, every=0.2)
    # A second worker asked for the same port says so and exits 2 (no traceback), claiming nothing.
    second = worker_processes(qvl_db, service.grpc_target, "--metrics-port", str(port), name="qvl-worker-second")
    assert second.proc is not None and second.proc.wait(timeout=60) == 2
    assert f"cannot serve metrics on 0.0.0.0:{port}" in second.log() and "Traceback" not in second.log()
    got = scrape(port)
    written = scalar(conn, "SELECT count(*) FROM items WHERE embedding IS NOT NULL")
    assert written == 11
    assert sample(got, "qvl_worker_rows_embedded_total", vectorizer="items") == written
    assert sample(got, "qvl_worker_rows_failed_total", vectorizer="items") == 1
    assert sample(got, "qvl_worker_failed_rows", vectorizer="items") == 1
    assert sample(got, "qvl_worker_rows_retried_total", vectorizer="items") == 0
    batches = sample(got, "qvl_worker_batches_total", vectorizer="items")
    assert batches is not None and batches >= 1
    assert sample(got, "qvl_worker_batch_seconds_count", vectorizer="items") == batches
    assert sample(got, "qvl_worker_queue_depth", vectorizer="hidden") == 4
    assert sample(got, "qvl_worker_rows_embedded_total", vectorizer="hidden") is None  # nothing claimed there
    assert sample(got, "qvl_worker_paused_lanes") == 0
    assert scalar(conn, "SELECT count(*) FROM hidden WHERE embedding IS NOT NULL") == 0

    # The hold ends once the role may read the table: the gauge drops, the rows are embedded.
    conn.execute("ALTER TABLE hidden DISABLE ROW LEVEL SECURITY")
    wait_until(lambda: sample(scrape(port), "qvl_worker_rows_embedded_total", vectorizer="hidden") == 4,
               timeout=60, every=0.2)
    assert sample(scrape(port), "qvl_worker_held", vectorizer="hidden", reason="rights") == 0
    assert worker.stop() == 0


def test_a_row_failed_again_after_retry_failed_counts_once(conn: psycopg.Connection[Any], qvl_db: str,
                                                           service: ServiceProcess,
                                                           worker_processes: Callable[..., WorkerProcess]) -> None:
    """A refused row, re-queued by qvl.retry_failed and refused again, is one failed row: in
    qvl.vectorizer_status, and in the worker's progress line (which said 2 before)."""
    make_items(conn, 6, bad=[2])
    worker = worker_processes(qvl_db, service.grpc_target)
    failed_at = "SELECT max(failed_at) FROM qvl.failed_items('items')"
    wait_until(lambda: scalar(conn, "SELECT count(*) FROM items WHERE embedding IS NOT NULL") == 5
               and scalar(conn, failed_at) is not None, timeout=60, every=0.1)
    first = scalar(conn, failed_at)
    assert scalar(conn, "SELECT qvl.retry_failed('items')") == 1
    wait_until(lambda: (scalar(conn, failed_at) or first) > first, timeout=60, every=0.1)
    assert scalar(conn, "SELECT failed FROM qvl.vectorizer_status WHERE name = 'items'") == 1
    assert worker.log().count("moved to the failed table") == 2  # it was refused twice
    assert worker.stop() == 0
    last = progress_lines(worker, "items")[-1]  # the final line, said on the way out
    assert last["failed"] == 1, last
    assert last["embedded"] == 5, last
