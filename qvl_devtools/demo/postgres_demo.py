"""The Postgres half of ``qvl demo``: a temporary Postgres wired to a running qvl service.

``run_postgres_demo(http_url, grpc_target)`` starts a throwaway Postgres, installs qvl, creates
a table of the sample pictures (with captions) and two short videos (as frame arrays), lets the
triggers queue them and a worker embed them (printing progress), prints ``qvl.search`` (text
and image queries) and ``qvl.rerank`` results with the SQL that produced them, stops it all and
returns the printed rows (dicts like the Weaviate demo's: source, kind, query, rank, name,
caption, distance, rerank_score).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from connectors.postgres.installer import install
from connectors.postgres.worker import Worker, WorkerSettings
from qvl_devtools.demo_media import sample_media
from qvl_devtools.launchers.postgres import LocalPostgres, worker_dsn

TEXT_QUERIES = ("circles", "a panoramic view")
RERANK_QUERY = "concentric circles"

SCHEMA = """CREATE TABLE media (
    id      serial PRIMARY KEY,
    name    text NOT NULL,
    caption text,
    image   bytea,      -- a picture file
    frames  bytea[]     -- a video, as its frames
)"""
VECTORIZER = ("SELECT qvl.create_vectorizer('media', text_columns => ARRAY['caption'], "
              "image_columns => ARRAY['image'], video_columns => ARRAY['frames'])")
SEARCH = ("SELECT m.name, m.caption, s.distance, s.score FROM qvl.search('media', %s, k => 3) s "
          "JOIN media m ON m.id = s.pk::int")
RERANK = "SELECT r.index, r.score FROM qvl.rerank(%s, %s::text[]) r"


def _row(kind: str, query: str, rank: int, name: str, caption: str | None, distance: float | None,
         score: float | None) -> dict[str, Any]:
    return {"source": "postgres", "kind": kind, "query": query, "rank": rank, "name": name, "caption": caption,
            "distance": distance, "rerank_score": score}


def _print(rows: Sequence[dict[str, Any]], out: Callable[[str], None]) -> None:
    for r in rows:
        distance = "-" if r["distance"] is None else f"{r['distance']:.4f}"
        score = "-" if r["rerank_score"] is None else f"{r['rerank_score']:.4f}"
        out(f"  {r['rank']}. {r['name']:<22} {r['caption']!r:<30} distance {distance}  rerank {score}")


def _embed_with_progress(dsn: str, grpc_target: str, total: int, out: Callable[[str], None]) -> float:
    worker = Worker(WorkerSettings(dsn=worker_dsn(dsn), service=grpc_target, batch=4, concurrency=2, poll_s=0.5,
                                   log_every_s=3600))
    thread = threading.Thread(target=worker.run, name="qvl-demo-worker", daemon=True)
    started = time.perf_counter()
    thread.start()
    last = -1
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT pending, failed FROM qvl.vectorizer_status WHERE name = 'media'").fetchone()
                pending, failed = (int(row[0]), int(row[1])) if row else (0, 0)
                done = total - pending
                if done != last:
                    out(f"  worker: {done}/{total} rows embedded" + (f", {failed} failed" if failed else ""))
                    last = done
                if pending == 0:
                    break
                if time.perf_counter() - started > 300:
                    raise TimeoutError("the demo worker did not finish in 5 minutes")
                time.sleep(0.2)
    finally:
        worker.stop()
        thread.join(timeout=60)
    return time.perf_counter() - started


def run_postgres_demo(http_url: str, grpc_target: str, *,
                      out: Callable[[str], None] = print) -> list[dict[str, Any]]:
    media = sample_media()
    printed: list[dict[str, Any]] = []
    with LocalPostgres() as pg:
        dsn = pg.create_database("qvl_demo")
        install(dsn, service_url=http_url)
        out(f"  Postgres on 127.0.0.1:{pg.port}; qvl installed; the database calls the service at {http_url}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute(VECTORIZER)
            out("  " + VECTORIZER)
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO media (name, caption, image, frames) VALUES (%s, %s, %s, %s)",
                                [(m["name"], m["caption"], m["image"], m["frames"]) for m in media])
            out(f"  INSERTed {len(media)} rows (pictures with captions, videos as frames): triggers queued them")
            seconds = _embed_with_progress(dsn, grpc_target, len(media), out)
            dims = conn.execute("SELECT vector_dims(embedding) FROM media LIMIT 1").fetchone()
            out(f"  embedded in {seconds:.1f} s ({dims[0] if dims else '?'} dimensions each)")

            for query in TEXT_QUERIES:
                out("")
                out(f"  {SEARCH % repr(query)}")
                rows = conn.execute(SEARCH, (query,)).fetchall()
                found = [_row("search", query, i + 1, n, c, d, s) for i, (n, c, d, s) in enumerate(rows)]
                _print(found, out)
                printed += found

            probe = next(m for m in media if m["image"] is not None)
            out("")
            out(f"  {SEARCH % ('<the bytes of ' + probe['name'] + '>')}   -- an image query")
            rows = conn.execute(SEARCH, (probe["image"],)).fetchall()
            found = [_row("image-search", probe["name"], i + 1, n, c, d, s) for i, (n, c, d, s) in enumerate(rows)]
            _print(found, out)
            printed += found

            captions = [m["caption"] for m in media]
            out("")
            out(f"  SELECT * FROM qvl.rerank({RERANK_QUERY!r}, ARRAY[...{len(captions)} captions...])")
            ranked = conn.execute(RERANK, (RERANK_QUERY, captions)).fetchall()
            found = [_row("rerank", RERANK_QUERY, i + 1, media[index - 1]["name"], captions[index - 1], None, score)
                     for i, (index, score) in enumerate(ranked)]
            _print(found, out)
            printed += found
    return printed
