"""What this worker says about itself in ``qvl.worker_status``: running, or paused while the service
cannot embed, with the vectorizers whose rows stay queued because of the worker's role; and its
heartbeat."""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

from connectors.postgres.vectorizers import Vectorizer
from connectors.postgres.worker.features import Features

log = logging.getLogger("qvl.worker")
Conn = psycopg.Connection[Any]

SET_SQL = """
INSERT INTO qvl.worker_status AS w (worker, service, state, reason) VALUES (%s, %s, %s, %s)
ON CONFLICT (worker) DO UPDATE SET service = EXCLUDED.service, state = EXCLUDED.state,
       reason = EXCLUDED.reason, updated_at = now(),
       since = CASE WHEN w.state = EXCLUDED.state THEN w.since ELSE now() END"""
BEAT_SQL = """
INSERT INTO qvl.worker_status AS w (worker, service, state, reason, last_seen, heartbeat_s)
VALUES (%s, %s, %s, %s, now(), %s)
ON CONFLICT (worker) DO UPDATE SET last_seen = now(), heartbeat_s = EXCLUDED.heartbeat_s"""
FORGET_OTHERS_SQL = """
DELETE FROM qvl.worker_status WHERE last_seen < now() - make_interval(secs => %s) AND worker <> %s"""


class StatusBoard:
    def __init__(self, ident: str, service: str, heartbeat_s: float, forget_workers_s: float) -> None:
        self.ident, self.service = ident, service
        self.heartbeat_s, self.forget_workers_s = heartbeat_s, forget_workers_s
        self.features = Features()  # set by the worker once it has asked the database
        self._paused: str | None = None  # why the service cannot embed now (None: it can)
        self._blocked: dict[str, str] = {}  # vectorizer name -> why its rows stay queued (Blocked)
        self._written: tuple[str, str | None] | None = None
        self._lock = threading.Lock()

    def _state(self) -> tuple[str, str | None]:
        """(state, reason): paused while the service cannot embed; the reason also names each vectorizer
        whose rows stay queued because of the worker's role."""
        notes = [f"vectorizer {name}: {why}" for name, why in sorted(self._blocked.items())]
        if self._paused:
            return "paused", "; ".join([self._paused, *notes])
        return "running", "; ".join(notes) or None

    def set_paused(self, conn: Conn | None, reason: str | None) -> None:
        """Record 'paused' with the reason, or 'running', when it changes (cheap: one row per worker)."""
        with self._lock:
            self._paused = reason
            self._write(conn)

    def block(self, conn: Conn | None, vectorizer: Vectorizer, reason: str | None) -> None:
        """Note that a vectorizer's rows stay queued (reason: the worker's role, or a service serving another
        model than its vectors'), or no longer."""
        with self._lock:
            if self._blocked.get(vectorizer.name) == reason:
                return
            if reason is None:
                del self._blocked[vectorizer.name]
                log.info(f"{vectorizer.name}: the worker may work on its rows again",
                         extra={"vectorizer": vectorizer.name})
            else:
                self._blocked[vectorizer.name] = reason
                log.warning(f"{vectorizer.name}: {reason}",
                            extra={"vectorizer": vectorizer.name, "source": vectorizer.source})
            self._write(conn)

    def _write(self, conn: Conn | None) -> None:
        state = self._state()
        if state == self._written or conn is None:
            return
        if not self.features.worker_status:
            self._written = state  # a database older than version 6: nowhere to say it
            return
        try:
            conn.execute(SET_SQL, (self.ident, self.service, *state))
            self._written = state
        except psycopg.Error as exc:
            log.debug("could not record the worker's status", extra={"error": str(exc).strip()})

    def heartbeat(self, conn: Conn) -> bool:
        """Say this worker is alive (qvl.worker_status.last_seen; the row is made if there is none yet),
        and delete the rows of workers not seen for forget_workers_s (killed ones never delete their own).
        False: no more heartbeats (the worker's role may not write them)."""
        with self._lock:
            state, reason = self._state()
        try:
            conn.execute(BEAT_SQL, (self.ident, self.service, state, reason, self.heartbeat_s))
            gone = conn.execute(FORGET_OTHERS_SQL, (self.forget_workers_s, self.ident)).rowcount
        except psycopg.errors.InsufficientPrivilege as exc:
            log.warning("no heartbeats: the worker's role may not write qvl.worker_status",
                        extra={"error": str(exc).strip()})
            return False
        if gone:
            log.info(f"forgot {gone} workers not seen for {self.forget_workers_s:g} s (qvl.worker_status)")
        return True

    def forget(self, conn: Conn) -> None:
        """Delete this worker's row (it stops)."""
        conn.execute("DELETE FROM qvl.worker_status WHERE worker = %s", (self.ident,))
