"""``qvl bench --scenario pg-ingest | pg-insert-overhead | pg-rerank | pg-search`` (``pg-documents``:
pg_document_scenarios.py).

Each starts its own Postgres (qvl_devtools.launchers.postgres) and ``qvl serve`` subprocess and
measures qvl and its baseline on the same inputs, in alternating rounds, reporting medians (one
slow moment on a shared machine then moves one round, not the result).
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.request
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
from qvl_devtools.launchers.postgres import LocalPostgres, worker_dsn
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
        worker = Worker(WorkerSettings(dsn=worker_dsn(dsn), service=svc.grpc_target, batch=64, concurrency=3,
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


# -- pg-search ---------------------------------------------------------------------------------------
SEARCH_FILTERS = {"50%": "bucket < 500", "5%": "bucket < 50", "0.5%": "bucket < 5"}


def _embed_calls(svc: ServiceProcess) -> float:
    """POST /v1/embed calls the service has answered (its /metrics)."""
    with urllib.request.urlopen(svc.http_url + "/metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("qvl_requests_total{")
               and 'endpoint="http /v1/embed"' in line and 'code="200"' in line)


def _ids(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...],
         prepare: bool | None = None) -> tuple[list[int], float]:
    """The first column as ints, and the statement's milliseconds."""
    start = time.perf_counter()
    ids = [int(r[0]) for r in conn.execute(sql, params, prepare=prepare)]
    return ids, 1000 * (time.perf_counter() - start)


def _hnsw_scans(conn: psycopg.Connection[Any]) -> int:
    """Scans of the vector index this backend has not reported yet (they grow within a transaction)."""
    row = conn.execute("SELECT pg_stat_get_xact_numscans('pgs_embedding_hnsw'::regclass)").fetchone()
    return int(row[0]) if row else 0


def _p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pg_search(args: Any) -> dict[str, Any]:
    """Filtered search on >= 10,000 rows, every one embedded for real (INSERT, triggers, queue, worker,
    service): recall@10 of qvl.search (rerank => false) against exact search of the filtered rows for
    filters keeping 50 %, 5 % and 0.5 % of them; the same for pgvector's own idiom (ORDER BY
    embedding <=> qvl.query_embedding(...) with an iterative scan); p50 latencies of qvl.search,
    qvl.hybrid_search and the idiom; service calls per statement (the service's /metrics)."""
    n = getattr(args, "items", None) or 10_000
    seed = getattr(args, "seed", 0)
    queries = workloads.texts(30, 2, 5, seed + 1)
    reranked = queries[:8]  # the reranker on CPU costs most: fewer queries
    progress = Progress("bench pg-search", total=2 + len(SEARCH_FILTERS) + 3, every=0)
    recall: dict[str, dict[str, float]] = {}
    latency: dict[str, float] = {}
    with _stack(args) as (svc, dsn), psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE pgs (id bigint PRIMARY KEY, bucket int NOT NULL, caption text)")
        conn.execute("CREATE INDEX ON pgs (bucket)")
        conn.execute("SELECT qvl.create_vectorizer('pgs', text_columns => ARRAY['caption'], fulltext => 'english')")
        captions = workloads.texts(n, 6, 16, seed)
        rows = [(i, (i * 7919) % 1000, captions[i]) for i in range(n)]  # bucket: 0..999, each n/1000 times
        worker = Worker(WorkerSettings(dsn=worker_dsn(dsn), service=svc.grpc_target, batch=64, concurrency=3,
                                       poll_s=1.0, log_every_s=3600))
        thread = threading.Thread(target=worker.run, name="qvl-bench-worker", daemon=True)
        thread.start()
        try:
            start = time.perf_counter()
            for s in range(0, n, 1000):
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany("INSERT INTO pgs VALUES (%s, %s, %s)", rows[s:s + 1000])
            done = conn.execute("SELECT qvl.wait_for_embeddings('pgs', '1800 s')").fetchone()
            embed_seconds = time.perf_counter() - start
        finally:
            worker.stop()
            thread.join(timeout=60)
        if not done or not done[0]:
            raise RuntimeError("pg-search: the rows were not embedded in time")
        conn.execute("ANALYZE pgs")
        progress.advance()
        for q in queries[:3]:  # warm: plans, the PL/Python library, connections
            conn.execute("SELECT * FROM qvl.search('pgs', %s, rerank => false, filter => 'bucket < 500')", (q,))
            conn.execute("SELECT * FROM qvl.hybrid_search('pgs', %s, rerank => false)", (q,))
        progress.advance()

        paths: dict[str, str] = {}
        for label, where in SEARCH_FILTERS.items():
            got_search, got_idiom, ms_search, ms_idiom, index_used = [], [], [], [], 0
            for q in queries:
                qvec = conn.execute("SELECT qvl.query_embedding('pgs', %s)::text", (q,)).fetchone()[0]  # type: ignore[index]
                exact, _ = _ids(conn, f"SELECT id FROM (SELECT id, embedding FROM pgs WHERE {where} OFFSET 0) s "
                                      "ORDER BY embedding <=> %s::vector LIMIT 10", (qvec,))
                with conn.transaction():
                    before = _hnsw_scans(conn)
                    ids, ms = _ids(conn, "SELECT pk FROM qvl.search('pgs', %s, k => 10, rerank => false, "
                                         "filter => %s)", (q, where))
                    index_used += _hnsw_scans(conn) > before
                got_search.append(len(set(ids) & set(exact)) / max(1, len(exact)))
                ms_search.append(ms)
                with conn.transaction():
                    conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                    ids, ms = _ids(conn, f"SELECT id FROM pgs WHERE {where} ORDER BY embedding <=> "
                                         "qvl.query_embedding('pgs', %s) LIMIT 10", (q,))
                got_idiom.append(len(set(ids) & set(exact)) / max(1, len(exact)))
                ms_idiom.append(ms)
            recall[label] = {"qvl_search": statistics.mean(got_search),
                             "idiom_iterative_scan": statistics.mean(got_idiom)}
            latency[f"search_no_rerank_{label}"] = _p50(ms_search)
            latency[f"idiom_{label}"] = _p50(ms_idiom)
            paths[label] = "hnsw iterative scan" if index_used > len(queries) // 2 else "exact (few rows pass)"
            progress.advance()

        timings: dict[str, list[float]] = {"search": [], "search_filtered_5%": [], "hybrid": [],
                                           "hybrid_no_rerank": [], "idiom": []}
        for q in reranked:
            timings["search"].append(_ids(conn, "SELECT pk FROM qvl.search('pgs', %s)", (q,))[1])
            timings["search_filtered_5%"].append(_ids(conn, "SELECT pk FROM qvl.search('pgs', %s, filter => %s)",
                                                 (q, SEARCH_FILTERS["5%"]))[1])
            timings["hybrid"].append(_ids(conn, "SELECT pk FROM qvl.hybrid_search('pgs', %s)", (q,))[1])
        hybrid_sql = "SELECT pk FROM qvl.hybrid_search('pgs', %s, rerank => false)"
        idiom_sql = "SELECT id FROM pgs ORDER BY embedding <=> qvl.query_embedding('pgs', %s) LIMIT 10"
        for q in queries:
            timings["hybrid_no_rerank"].append(_ids(conn, hybrid_sql, (q,))[1])
            timings["idiom"].append(_ids(conn, idiom_sql, (q,))[1])
        latency.update({name: _p50(values) for name, values in timings.items()})
        progress.advance()

        # Service calls per statement, and what each further row of a plan costs.
        statements = {
            "idiom_index_limit_10": "SELECT id FROM pgs ORDER BY embedding <=> qvl.query_embedding('pgs', %s) LIMIT 10",
            "idiom_seq_scan_all_rows": "SELECT id FROM pgs ORDER BY embedding <=> qvl.query_embedding('pgs', %s) "
                                       "LIMIT 10",
            "initplan_seq_scan_all_rows": "SELECT id FROM pgs ORDER BY embedding <=> "
                                          "(SELECT qvl.query_embedding('pgs', %s)) LIMIT 10",
        }
        calls: dict[str, float] = {}
        seconds: dict[str, float] = {}
        for name, sql in statements.items():
            before, spent = _embed_calls(svc), 0.0
            for i, q in enumerate(queries[:10]):
                with conn.transaction():
                    if "seq_scan" in name:  # every row through the sort: the function runs once per row
                        conn.execute("SET LOCAL enable_indexscan = off")
                    # Not prepared: a plan kept from an earlier execution would ignore the setting.
                    spent += _ids(conn, sql, (f"{q} {name} {i}",), prepare=False)[1]
            calls[name] = (_embed_calls(svc) - before) / 10
            seconds[name] = spent / 10
        per_row_us = 1000 * (seconds["idiom_seq_scan_all_rows"] - seconds["initplan_seq_scan_all_rows"]) / n
        progress.advance()
        before = _embed_calls(svc)
        for q in queries[:10]:
            conn.execute("SELECT pk FROM qvl.search('pgs', %s, rerank => false)", (q,)).fetchall()
        calls["qvl_search"] = (_embed_calls(svc) - before) / 10
        progress.advance()
    progress.finish()
    recall_min = min(r["qvl_search"] for r in recall.values())
    return {"items": n, "rows": n, "queries": len(queries), "k": 10, "candidates": 100,
            "row": "id bigint, bucket int (filter column, B-tree index), caption (6-16 words); vector(64), HNSW",
            "embedding": f"all {n} rows embedded for real: INSERT, trigger, queue, worker, service "
                         f"({embed_seconds:.1f} s); the query path is the real one",
            "filters": SEARCH_FILTERS, "qvl_search_path": paths,
            "recall_at_10": recall, "recall_min": recall_min,
            "latency_p50_ms": latency,
            "latency_note": "search/hybrid: k 10, candidates 100, reranked unless *_no_rerank; idiom: ORDER BY "
                            "embedding <=> qvl.query_embedding(...) LIMIT 10",
            "embed_calls_per_statement": calls,
            "query_embedding_per_row_us": per_row_us,
            "ms_per_statement": seconds}


SCENARIOS = {"pg-ingest": pg_ingest, "pg-insert-overhead": pg_insert_overhead, "pg-rerank": pg_rerank,
             "pg-search": pg_search}


def run_postgres_scenario(args: Any) -> dict[str, Any]:
    if args.scenario == "pg-documents":  # issue 21: chunked vectorizers (qvl_devtools/bench/pg_document_scenarios.py)
        from qvl_devtools.bench.pg_document_scenarios import pg_documents
        return pg_documents(args)
    return SCENARIOS[args.scenario](args)
