"""``qvl bench --scenario pg-documents``: PDF pages embedded through a chunked vectorizer against the
direct stream.

Rows of (id, title, pdf) go into a table with a chunked vectorizer (``qvl.chunk_pages()``); the time
from the first INSERT until every page is a row of the chunk table (triggers, queue, the worker's
``EmbedStream`` with ``chunking: pages``, the chunk writes) is compared with ``EmbedStream`` of the
same items straight from a client, in alternating rounds (medians). Same PDFs as ``documents``
(letter pages with text and a picture). Goal (issue 21): ratio >= 0.9.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import psycopg

from connectors.client import Client
from connectors.postgres.worker import Worker, WorkerSettings
from connectors.progress import Progress
from qvl_devtools.bench.document_scenarios import make_pdf
from qvl_devtools.bench.postgres_scenarios import _stack
from qvl_devtools.launchers.postgres import worker_dsn

ROUNDS = 3
PAGES_PER_DOCUMENT = 8
WORKER = {"batch": 4, "concurrency": 3}  # rows (documents) per batch, batches in flight


def _documents(n: int, seed: int) -> list[tuple[int, str, bytes]]:
    return [(i, f"crane manual {i}", make_pdf(PAGES_PER_DOCUMENT, seed=seed + i)[0]) for i in range(n)]


def _new_table(conn: psycopg.Connection[Any], table: str) -> None:
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, title text, pdf bytea)")
    conn.execute("SELECT qvl.create_vectorizer(%s, text_columns => '{title}', document_columns => '{pdf}', "
                 "chunking => qvl.chunk_pages(), destination => %s)", (table, f"{table}_pages"))


def _through_worker(conn: psycopg.Connection[Any], table: str, docs: list[tuple[int, str, bytes]]) -> float:
    _new_table(conn, table)
    start = time.perf_counter()
    for row in docs:  # one transaction per document, as an application uploading files would
        conn.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", row)
    done = conn.execute("SELECT qvl.wait_for_embeddings(%s, '900 s')", (table,)).fetchone()
    seconds = time.perf_counter() - start
    pages = conn.execute(f"SELECT count(*) FROM {table}_pages").fetchone()
    failed = conn.execute("SELECT count(*) FROM qvl.failed_items(%s)", (table,)).fetchone()
    if not done or not done[0] or not pages or pages[0] != len(docs) * PAGES_PER_DOCUMENT or (failed and failed[0]):
        raise RuntimeError(f"pg-documents: {table} ended with {pages} pages and {failed} failed rows")
    conn.execute("SELECT qvl.drop_vectorizer(%s, drop_column => true)", (table,))
    return seconds


def _stream(client: Client, docs: list[tuple[int, str, bytes]]) -> float:
    start = time.perf_counter()
    results = list(client.embed_stream([{"document": pdf, "text": title} for _, title, pdf in docs],
                                       chunking={"type": "pages"}, max_in_flight=256))
    seconds = time.perf_counter() - start
    if sum(len(r) for r in results if isinstance(r, list)) != len(docs) * PAGES_PER_DOCUMENT:
        raise RuntimeError("pg-documents: the direct stream did not answer every page")
    return seconds


def pg_documents(args: Any) -> dict[str, Any]:
    n = getattr(args, "items", None) or 16
    docs = _documents(n, getattr(args, "seed", 0))
    pages = n * PAGES_PER_DOCUMENT
    progress = Progress("bench pg-documents", total=1 + ROUNDS, every=0)
    t_pg: list[float] = []
    t_stream: list[float] = []
    with _stack(args) as (svc, dsn), Client(svc.grpc_target) as client, \
            psycopg.connect(dsn, autocommit=True) as conn:
        worker = Worker(WorkerSettings(dsn=worker_dsn(dsn), service=svc.grpc_target, poll_s=1.0, log_every_s=3600,
                                       **WORKER))
        thread = threading.Thread(target=worker.run, name="qvl-bench-worker", daemon=True)
        thread.start()
        try:
            _through_worker(conn, "warm", docs[:2])  # renderers started, model warm, plans cached
            _stream(client, docs[:2])
            progress.advance()
            for r in range(ROUNDS):
                t_pg.append(_through_worker(conn, f"manuals_{r}", docs))
                t_stream.append(_stream(client, docs))
                progress.advance()
        finally:
            worker.stop()
            thread.join(timeout=60)
    progress.finish()
    pg_rate, stream_rate = pages / statistics.median(t_pg), pages / statistics.median(t_stream)
    return {"documents": n, "pages": pages, "item": f"{PAGES_PER_DOCUMENT}-page letter PDF + title, chunking pages",
            "rounds": ROUNDS, "pages_per_s": pg_rate, "baseline_pages_per_s": stream_rate,
            "ratio": pg_rate / stream_rate, "seconds_pg": t_pg, "seconds_stream": t_stream, "worker": WORKER}
