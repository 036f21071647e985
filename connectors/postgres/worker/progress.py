"""What the worker has done, per vectorizer: the counters (also its Prometheus metrics), and the
periodic progress line.

Two kinds of number: what this worker did (``Counters``: events since it started) and what the
database holds now (``Backlog``: rows queued, rows failed, as ``qvl.vectorizer_status`` says). The
line's ``failed`` is the second kind: a row refused, re-queued by ``qvl.retry_failed`` and refused
again is one failed row (it said 2 when it counted moves).

``released`` counts rows *given back* to the queue unwritten, no attempt counted: the service
stopped answering in the middle of a batch (down, restarting, a stream that stalled), a model
change held the vectorizer, or ``qvl.reembed`` changed the column under the write. They are
claimed again at once; a few around an outage are normal, a number that keeps growing while
nothing is written means the service keeps failing mid-batch (the log says why).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from connectors.postgres.vectorizers import Vectorizer
from connectors.postgres.worker.judge import Outcome
from connectors.postgres.worker.metrics import WorkerMetrics

log = logging.getLogger("qvl.worker")


@dataclass
class Counters:
    embedded: int = 0
    failed: int = 0  # moves to the failed table (a row failed again after qvl.retry_failed counts again)
    retried: int = 0
    released: int = 0
    batches: int = 0
    resent: int = 0  # streams that finished after being sent again (another replica, or the same one back)
    stalls: int = 0  # streams abandoned (no progress, or the service went away): their rows were given back
    cut: int = 0  # rows written from text the service cut to its maximum length (qvl.cut_rows)


@dataclass(frozen=True)
class Backlog:
    """A vectorizer's rows in the database now."""

    pending: int  # queued: waiting, or claimed by a worker
    failed: int  # in the failed table


class Progress:
    def __init__(self, metrics: WorkerMetrics | None = None) -> None:
        self.metrics = metrics or WorkerMetrics()
        self._counters: dict[str, Counters] = {}
        self._lock = threading.Lock()
        self._reported: dict[str, int] = {}  # embedded per vectorizer at the last report
        self._reported_at = time.monotonic()

    def add(self, name: str, outcome: Outcome, seconds: float) -> None:
        """Count one batch (``seconds`` from its claim to its write)."""
        with self._lock:
            c = self._counters.setdefault(name, Counters())
            c.embedded += outcome.written
            c.failed += outcome.failed
            c.retried += outcome.retried
            c.released += outcome.released
            c.cut += outcome.cut
            c.batches += 1
        m = self.metrics
        m.batches.labels(name).inc()
        m.batch_seconds.labels(name).observe(seconds)
        m.embedded.labels(name).inc(outcome.written)
        m.failed.labels(name).inc(outcome.failed)
        m.retried.labels(name).inc(outcome.retried)
        m.released.labels(name).inc(outcome.released)
        m.cut.labels(name).inc(outcome.cut)

    def add_resent(self, name: str, times: int) -> None:
        with self._lock:
            self._counters.setdefault(name, Counters()).resent += times
        self.metrics.resent.labels(name).inc(times)

    def add_stall(self, name: str) -> None:
        with self._lock:
            self._counters.setdefault(name, Counters()).stalls += 1
        self.metrics.stalls.labels(name).inc()

    def observe(self, vectorizers: list[Vectorizer], conn: psycopg.Connection[Any] | None) -> dict[str, Backlog]:
        """Each vectorizer's backlog, read now (and set on the gauges); one that cannot be read is left out."""
        out = {}
        for vectorizer in vectorizers:
            got = backlog(conn, vectorizer) if conn is not None else None
            if got is not None:
                out[vectorizer.name] = got
                self.metrics.queue_depth.labels(vectorizer.name).set(got.pending)
                self.metrics.failed_rows.labels(vectorizer.name).set(got.failed)
        return out

    def counters(self) -> dict[str, Counters]:
        with self._lock:
            return {name: replace(c) for name, c in self._counters.items()}

    def report(self, vectorizers: list[Vectorizer], conn: psycopg.Connection[Any] | None = None,
               final: bool = False) -> None:
        """One line per vectorizer that moved or has rows pending (every one when ``final``)."""
        now = time.monotonic()
        elapsed = max(now - self._reported_at, 1e-9)
        counts = self.counters()
        backlogs = self.observe(vectorizers, conn)
        for vectorizer in vectorizers:
            c = counts.get(vectorizer.name, Counters())
            held = backlogs.get(vectorizer.name)
            pending, failed = (held.pending, held.failed) if held is not None else (None, None)
            delta = c.embedded - self._reported.get(vectorizer.name, 0)
            if not final and delta == 0 and not pending:
                continue
            rate = delta / elapsed
            # failed: rows in the failed table now; moved_to_failed: this worker's moves there.
            extra: dict[str, Any] = {"vectorizer": vectorizer.name, "embedded": c.embedded, "failed": failed,
                                     "pending": pending, "rate_per_s": round(rate, 1), "resent": c.resent,
                                     "released": c.released, "moved_to_failed": c.failed, "stalls": c.stalls,
                                     "cut": c.cut}
            if pending and rate > 0:
                extra["eta_s"] = round(pending / rate, 1)
            log.info(f"{vectorizer.name}: {c.embedded} embedded"
                     + (f", {failed} failed" if failed is not None else "")
                     + (f", {pending} pending" if pending is not None else "")
                     + (f", {c.released} given back to the queue unwritten" if c.released else "")
                     + (f" ({rate:.1f}/s)" if not final else " (final)"), extra=extra)
        self._reported = {name: c.embedded for name, c in counts.items()}
        self._reported_at = now


def backlog(conn: psycopg.Connection[Any], vectorizer: Vectorizer) -> Backlog | None:
    """Rows queued and rows failed now (None: not readable, e.g. the vectorizer was dropped)."""
    try:
        row = conn.execute(f"SELECT (SELECT count(*) FROM {vectorizer.queue}), "
                           f"(SELECT count(*) FROM {vectorizer.failed})").fetchone()
    except psycopg.Error:
        return None
    return Backlog(int(row[0]), int(row[1])) if row else None
