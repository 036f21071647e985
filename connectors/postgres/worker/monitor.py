"""The worker's upkeep loop: the alive file, the heartbeat, pruning failed rows, the progress line,
and ``--exit-when-idle``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from connectors.postgres.worker.alive import AliveFile
from connectors.postgres.worker.catalog import Catalog
from connectors.postgres.worker.progress import Progress
from connectors.postgres.worker.settings import WorkerSettings
from connectors.postgres.worker.status import StatusBoard

log = logging.getLogger("qvl.worker")
Conn = psycopg.Connection[Any]


class Monitor:
    def __init__(self, settings: WorkerSettings, connect: Callable[[], Conn], stopping: threading.Event, *,
                 catalog: Catalog, status: StatusBoard, progress: Progress, alive: AliveFile,
                 idle: Callable[[], bool]) -> None:
        self.settings, self.connect, self.stopping = settings, connect, stopping
        self.catalog, self.status, self.progress, self.alive = catalog, status, progress, alive
        self.idle = idle  # every lane found nothing to claim on its last turn
        features = status.features
        self.beats = features.heartbeats
        self.prunes = settings.prune_every_s > 0 and features.prune_failed
        if not features.heartbeats:
            log.info("no heartbeats: the database's qvl schema is older than version 9 (qvl pg install upgrades it)")
        if settings.prune_every_s > 0 and not features.prune_failed:
            log.info("no pruning of failed rows: the database's qvl schema is older than version 9")
        self._conn: Conn | None = None
        self._last_report = time.monotonic()
        self._last_gauges = float("-inf")
        self._last_beat = self._last_prune = float("-inf")  # both at once on start

    def run(self) -> None:
        """Until the worker stops, or (``--exit-when-idle``) its queues are empty."""
        pause = 0.0  # the first heartbeat at once: the worker's row is there as it starts
        try:
            while not self.stopping.is_set():
                self.stopping.wait(pause)
                self.alive.touch()
                pause = min(0.25 if self.settings.exit_when_idle else 1.0, self.settings.heartbeat_s,
                            self.settings.metrics_every_s)
                try:
                    if self._turn(time.monotonic()):
                        log.info("queues empty; exiting (--exit-when-idle)")
                        return
                except psycopg.Error:
                    self._close()
        finally:
            self._close()

    def _turn(self, now: float) -> bool:
        """What is due now; True when the worker is to exit (idle, its queues empty)."""
        settings = self.settings
        if self.beats and now - self._last_beat >= settings.heartbeat_s:
            self.beats = self.status.heartbeat(self._db())
            self._last_beat = now
        if self.prunes and now - self._last_prune >= settings.prune_every_s:
            self.prunes = prune_failed(self._db(), settings.vectorizers, self.catalog)
            self._last_prune = now
        if settings.exit_when_idle and self.idle() and self._pending(self._db()) == 0:
            return True
        if now - self._last_report >= settings.log_every_s:
            self.progress.report(self.catalog.known(), self._db())  # sets the gauges too
            self._last_report = self._last_gauges = now
        elif settings.metrics_port is not None and now - self._last_gauges >= settings.metrics_every_s:
            self.progress.observe(self.catalog.current(self._db()), self._db())
            self._last_gauges = now
        return False

    def _db(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _pending(self, conn: Conn) -> int:
        total = 0
        for vectorizer in self.catalog.current(conn):
            try:
                row = conn.execute(vectorizer.pending_sql()).fetchone()
            except psycopg.errors.UndefinedTable:
                self.catalog.invalidate()  # dropped meanwhile
                continue
            total += int(row[0]) if row else 0
        return total


def prune_failed(conn: Conn, names: tuple[str, ...], catalog: Catalog) -> bool:
    """qvl.prune_failed for this worker's vectorizers (all, or those it was told to serve). False: no
    more pruning (the worker's role may not call it)."""
    try:
        rows = [r for name in names or (None,) for r in conn.execute(
            "SELECT vectorizer, gone, expired FROM qvl.prune_failed(%s)", (name,)).fetchall()]
    except psycopg.errors.InsufficientPrivilege as exc:
        log.warning("no pruning of failed rows: the worker's role may not call qvl.prune_failed "
                    "(grant its login qvl_worker, or call qvl.prune_failed from a job)",
                    extra={"error": str(exc).strip()})
        return False
    except psycopg.errors.UndefinedObject:
        catalog.invalidate()  # a vectorizer it serves was dropped
        return True
    for name, gone, expired in rows:
        if gone or expired:
            log.info(f"{name}: pruned {gone or 0} failed rows whose table row is gone, {expired} older than "
                     "the retention", extra={"vectorizer": name, "gone": gone, "expired": expired})
    return True
