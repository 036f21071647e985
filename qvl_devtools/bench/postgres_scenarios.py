"""``qvl bench --scenario pg-ingest | pg-insert-overhead | pg-rerank``.

Each starts its own Postgres (qvl_devtools.launchers.postgres) and ``qvl serve`` subprocess and
measures qvl and its baseline on the same inputs, in alternating rounds, reporting medians (one
slow moment on a shared machine then moves one round, not the result).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from connectors.client import Client
from connectors.postgres.installer import install
from connectors.postgres.worker import Worker, WorkerSettings
from connectors.progress import Progress
from qvl_devtools.bench import workloads
from qvl_devtools.bench.models import TINY_DIR
from qvl_devtools.launchers.postgres import LocalPostgres
from qvl_devtools.launchers.service import ServiceProcess

ROUNDS = 3


def _service(args: Any) -> ServiceProcess:
    model = getattr(args, "model", None) or str(TINY_DIR)
    if not getattr(args, "model", None):
        from qvl_devtools.tiny_model import build_checkpoint
        build_checkpoint(TINY_DIR)
    env = {"QVL_DEVICE": getattr(args, "device", None) or "cpu", "QVL_LOG_LEVEL": "WARNING"}
    if getattr(args, "batch_tokens", None):
        env["QVL_BATCH_TOKENS"] = str(args.batch_tokens)
    return ServiceProcess(embedding_model=model, reranker_model=model, env=env)


@contextmanager
def _stack(args: Any) -> Iterator[tuple[ServiceProcess, str]]:
    """The service and a fresh database with qvl installed and pointed at it."""
    with _service(args) as svc, LocalPostgres() as pg:
        dsn = pg.create_database("qvl_bench")
        install(dsn, service_url=svc.http_url)
        yield svc, dsn


def _rows(n: int, seed: int) -> list[tuple[int, str, bytes]]:
    captions = workloads.texts(n, 8, 24, seed)
    pics = workloads.jpeg_images(n, 320, 240, seed)
    return [(i, captions[i], pics[i]) for i in range(n)]


def _insert(conn: psycopg.Connection[Any], table: str, rows: list[tuple[int, str, bytes]], chunk: int = 64) -> None:
    for s in range(0, len(rows), chunk):  # one transaction per chunk, as an application would write
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} (id, caption, image) VALUES (%s, %s, %s)", rows[s:s + chunk])


def _new_table(conn: psycopg.Connection[Any], table: str, vectorize: bool) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, caption text, image bytea)")
    if vectorize:
        conn.execute("SELECT qvl.create_vectorizer(%s, text_columns => ARRAY['caption'], "
                     "image_columns => ARRAY['image'])", (table,))


def _drop_vectorizer(conn: psycopg.Connection[Any], table: str) -> None:
    conn.execute("SELECT qvl.drop_vectorizer(%s)", (table,))


def _stream(client: Client, rows: list[tuple[int, str, bytes]]) -> float:
    start = time.perf_counter()
    got = sum(1 for _ in client.embed_stream([{"image": img, "text": cap} for _, cap, img in rows],
                                             max_in_flight=256))
    assert got == len(rows)
    return time.perf_counter() - start


def pg_ingest(args: Any) -> dict[str, Any]:
    """Rows/s from the first INSERT until every row holds its vector (triggers, queue, worker),
    against EmbedStream of the same items straight from a client."""
    n = getattr(args, "items", None) or 512
    rows = _rows(n, getattr(args, "seed", 0))
    warm = [(i + n, cap, img) for i, cap, img in rows[:64]]
    progress = Progress("bench pg-ingest", total=1 + ROUNDS, every=0)
    t_pg: list[float] = []
    t_stream: list[float] = []
    with _stack(args) as (svc, dsn), Client(svc.grpc_target) as client, \
            psycopg.connect(dsn, autocommit=True) as conn:
        worker = Worker(WorkerSettings(dsn=dsn, service=svc.grpc_target, batch=64, concurrency=3,
                                       poll_s=1.0, log_every_s=3600))
        thread = threading.Thread(target=worker.run, name="qvl-bench-worker", daemon=True)
        thread.start()
        try:
            _new_table(conn, "warm", vectorize=True)
            _insert(conn, "warm", warm)
            conn.execute("SELECT qvl.wait_for_embeddings('warm', '300 s')")
            _stream(client, warm)
            progress.advance()
            for r in range(ROUNDS):
                table = f"ingest_{r}"
                _new_table(conn, table, vectorize=True)
                start = time.perf_counter()
                _insert(conn, table, rows)
                done = conn.execute("SELECT qvl.wait_for_embeddings(%s, '600 s')", (table,)).fetchone()
                t_pg.append(time.perf_counter() - start)
                if not done or not done[0]:
                    raise RuntimeError(f"pg-ingest: round {r} did not finish")
                missing = conn.execute(f"SELECT count(*) FROM {table} WHERE embedding IS NULL").fetchone()
                if missing and missing[0]:
                    raise RuntimeError(f"pg-ingest: {missing[0]} rows without a vector")
                _drop_vectorizer(conn, table)
                t_stream.append(_stream(client, rows))
                progress.advance()
        finally:
            worker.stop()
            thread.join(timeout=60)
    progress.finish()
    pg_rate, stream_rate = n / statistics.median(t_pg), n / statistics.median(t_stream)
    return {"items": n, "item": "320x240 JPEG + caption (one joint item per row)", "rounds": ROUNDS,
            "items_per_s": pg_rate, "baseline_items_per_s": stream_rate, "ratio": pg_rate / stream_rate,
            "seconds_pg": t_pg, "seconds_stream": t_stream, "worker": {"batch": 64, "concurrency": 3},
            "insert_chunk_rows": 64}


def _time_inserts(conn: psycopg.Connection[Any], rows: list[tuple[int, str, bytes | None]],
                  progress: Progress) -> tuple[list[float], list[float]]:
    """Alternating rounds of the same INSERTs into a fresh table without, then with, a vectorizer."""
    t_with: list[float] = []
    t_without: list[float] = []
    for r in range(ROUNDS):
        for vectorize, times in ((False, t_without), (True, t_with)):
            table = f"t_{'with' if vectorize else 'without'}_{r}"
            _new_table(conn, table, vectorize=vectorize)
            conn.execute("CHECKPOINT")
            start = time.perf_counter()
            _insert(conn, table, rows, chunk=50)  # type: ignore[arg-type]
            times.append(time.perf_counter() - start)
            if vectorize:
                _drop_vectorizer(conn, table)
            conn.execute(f"DROP TABLE {table}")
            progress.advance()
    return t_with, t_without


def pg_insert_overhead(args: Any) -> dict[str, Any]:
    """INSERT rows/s into a table with an async vectorizer (a queue row and a NOTIFY per row, no
    worker running) against the same table without one. Rows hold a caption and a JPEG; the same
    run also reports caption-only rows, where a trigger costs the most relative to the row."""
    n = getattr(args, "items", None) or 2000
    base = _rows(min(n, 256), getattr(args, "seed", 0))
    rows = [(i, base[i % len(base)][1], base[i % len(base)][2]) for i in range(n)]
    text_rows: list[tuple[int, str, bytes | None]] = [(i, cap, None) for i, cap, _ in rows]
    progress = Progress("bench pg-insert-overhead", total=4 * ROUNDS, every=0)
    with _stack(args) as (_svc, dsn), psycopg.connect(dsn, autocommit=True) as conn:
        _new_table(conn, "warm", vectorize=True)
        _insert(conn, "warm", rows[:200], chunk=50)
        t_with, t_without = _time_inserts(conn, rows, progress)  # type: ignore[arg-type]
        tt_with, tt_without = _time_inserts(conn, text_rows, progress)
    progress.finish()
    with_rate, without_rate = n / statistics.median(t_with), n / statistics.median(t_without)
    text_with, text_without = n / statistics.median(tt_with), n / statistics.median(tt_without)
    return {"items": n, "row": "id, caption, 320x240 JPEG (bytea)", "rows_per_transaction": 50, "rounds": ROUNDS,
            "items_per_s": with_rate, "baseline_items_per_s": without_rate, "ratio": with_rate / without_rate,
            "seconds_with_vectorizer": t_with, "seconds_without": t_without,
            "caption_only": {"items_per_s": text_with, "baseline_items_per_s": text_without,
                             "ratio": text_with / text_without}}


def pg_rerank(args: Any) -> dict[str, Any]:
    """p50 latency of SELECT * FROM qvl.rerank(query, 20 documents) from a client, against the
    gRPC Rerank p50 on the same input."""
    calls = getattr(args, "items", None) or 60
    seed = getattr(args, "seed", 0)
    docs = workloads.texts(20, 8, 24, seed)
    query = workloads.texts(1, 4, 8, seed + 1)[0]
    progress = Progress("bench pg-rerank", total=2 * ROUNDS, every=0)
    sql_ms: list[float] = []
    grpc_ms: list[float] = []
    with _stack(args) as (svc, dsn), Client(svc.grpc_target) as client, \
            psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        statement = "SELECT index, score FROM qvl.rerank(%s, %s::text[])"
        for _ in range(5):  # warm both paths (connections, plans, the PL/Python library)
            conn.execute(statement, (query, docs)).fetchall()
            client.rerank(query, docs)
        sql_rows = conn.execute(statement, (query, docs)).fetchall()
        want = client.rerank(query, docs)
        if [i - 1 for i, _ in sql_rows] != [i for i, _ in want.ranking]:
            raise RuntimeError("pg-rerank: qvl.rerank and gRPC Rerank disagree")
        per_round = max(1, calls // ROUNDS)
        for _ in range(ROUNDS):
            for _ in range(per_round):
                start = time.perf_counter()
                conn.execute(statement, (query, docs)).fetchall()
                sql_ms.append(1000 * (time.perf_counter() - start))
            progress.advance()
            for _ in range(per_round):
                start = time.perf_counter()
                client.rerank(query, docs)
                grpc_ms.append(1000 * (time.perf_counter() - start))
            progress.advance()
    progress.finish()
    p50_sql, p50_grpc = statistics.median(sql_ms), statistics.median(grpc_ms)
    return {"items": 20, "calls": len(sql_ms), "documents": "20 texts of 8-24 words",
            "p50_ms": p50_sql, "baseline_p50_ms": p50_grpc, "overhead_ms": p50_sql - p50_grpc,
            "p90_ms": statistics.quantiles(sql_ms, n=10)[-1],
            "baseline_p90_ms": statistics.quantiles(grpc_ms, n=10)[-1],
            "items_per_s": 20 * 1000 / p50_sql, "baseline_items_per_s": 20 * 1000 / p50_grpc}


SCENARIOS = {"pg-ingest": pg_ingest, "pg-insert-overhead": pg_insert_overhead, "pg-rerank": pg_rerank}


def run_postgres_scenario(args: Any) -> dict[str, Any]:
    return SCENARIOS[args.scenario](args)
