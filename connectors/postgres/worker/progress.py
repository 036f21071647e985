"""What the worker has done, per vectorizer: the counters, and the periodic progress line."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from connectors.postgres.vectorizers import Vectorizer
from connectors.postgres.worker.judge import Outcome

log = logging.getLogger("qvl.worker")


@dataclass
class Counters:
    embedded: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    batches: int = 0
    resent: int = 0  # streams that finished after being sent again (another replica, or the same one back)


class Progress:
    def __init__(self) -> None:
        self._counters: dict[str, Counters] = {}
        self._lock = threading.Lock()
        self._reported: dict[str, int] = {}  # embedded per vectorizer at the last report
        self._reported_at = time.monotonic()

    def add(self, name: str, outcome: Outcome) -> None:
        """Count one batch."""
        with self._lock:
            c = self._counters.setdefault(name, Counters())
            c.embedded += outcome.written
            c.failed += outcome.failed
            c.retried += outcome.retried
            c.released += outcome.released
            c.batches += 1

    def add_resent(self, name: str, times: int) -> None:
        with self._lock:
            self._counters.setdefault(name, Counters()).resent += times

    def counters(self) -> dict[str, Counters]:
        with self._lock:
            return {name: replace(c) for name, c in self._counters.items()}

    def report(self, vectorizers: list[Vectorizer], conn: psycopg.Connection[Any] | None = None,
               final: bool = False) -> None:
        """One line per vectorizer that moved or has rows pending (every one when ``final``)."""
        now = time.monotonic()
        elapsed = max(now - self._reported_at, 1e-9)
        counts = self.counters()
        for vectorizer in vectorizers:
            c = counts.get(vectorizer.name, Counters())
            pending = _pending(conn, vectorizer) if conn is not None else None
            delta = c.embedded - self._reported.get(vectorizer.name, 0)
            if not final and delta == 0 and not pending:
                continue
            rate = delta / elapsed
            extra: dict[str, Any] = {"vectorizer": vectorizer.name, "embedded": c.embedded, "failed": c.failed,
                                     "pending": pending, "rate_per_s": round(rate, 1), "resent": c.resent,
                                     "released": c.released}
            if pending and rate > 0:
                extra["eta_s"] = round(pending / rate, 1)
            log.info(f"{vectorizer.name}: {c.embedded} embedded, {c.failed} failed"
                     + (f", {pending} pending" if pending is not None else "")
                     + (f" ({rate:.1f}/s)" if not final else " (final)"), extra=extra)
        self._reported = {name: c.embedded for name, c in counts.items()}
        self._reported_at = now


def _pending(conn: psycopg.Connection[Any], vectorizer: Vectorizer) -> int | None:
    try:
        row = conn.execute(vectorizer.pending_sql()).fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None
