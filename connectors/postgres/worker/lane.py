"""A lane: one connection and one service channel, claiming a batch from each vectorizer in turn and
embedding it; an outage pauses it (rows stay queued, no attempt counted) until the service is back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from connectors.postgres.vectorizers import Vectorizer
from connectors.postgres.worker.backoff import Backoff
from connectors.postgres.worker.batch import BatchRunner
from connectors.postgres.worker.catalog import Catalog
from connectors.postgres.worker.claims import Claims
from connectors.postgres.worker.connections import Blocked, LaneLink
from connectors.postgres.worker.errors import ModelMismatch, ServiceDown, Unservable
from connectors.postgres.worker.service import ServiceCalls
from connectors.postgres.worker.settings import WorkerSettings
from connectors.postgres.worker.startup import READ_ONLY, STANDBY_RECHECK_S
from connectors.postgres.worker.status import StatusBoard

log = logging.getLogger("qvl.worker")


@dataclass
class LaneParts:
    """What every lane of a worker shares."""

    settings: WorkerSettings
    stopping: threading.Event
    connect: Callable[[], psycopg.Connection[Any]]
    catalog: Catalog
    claims: Claims
    status: StatusBoard
    batches: BatchRunner
    service: ServiceCalls


class Lane:
    def __init__(self, n: int, me: str, parts: LaneParts) -> None:
        self.n, self.parts = n, parts
        self.link = LaneLink(me)
        self.wake = threading.Event()
        self.idle = False  # found nothing to claim on its last turn
        self.backoff = Backoff(parts.settings.backoff_base_s, parts.settings.backoff_cap_s)
        self.turn = n  # lanes start at different vectorizers
        self.down_since: float | None = None
        self.read_only = False  # said that the database refuses writes (said once until it takes them again)
        self.last: Vectorizer | None = None  # the vectorizer whose options the readiness probe uses

    def run(self) -> None:
        p = self.parts
        while not p.stopping.is_set():
            try:
                self._connect()
                if self._pass():
                    self._worked()
                    continue
                self.idle = True
                self.wake.wait(p.settings.poll_s)
            except ServiceDown as exc:
                self._service_down(exc)
            except psycopg.OperationalError as exc:
                log.warning("lost the database connection; reconnecting",
                            extra={"lane": self.n, "error": str(exc).strip()})
                self.link.close_conn()
                p.stopping.wait(self.backoff.next())
            except psycopg.errors.UndefinedTable:
                p.catalog.invalidate()  # a vectorizer was dropped under us
            except psycopg.errors.ReadOnlySqlTransaction:
                self._read_only()
            except Exception:
                log.exception("lane error", extra={"lane": self.n})
                p.catalog.invalidate()
                p.stopping.wait(self.backoff.next())
        self.link.close()

    def _connect(self) -> None:
        if self.link.conn is None or self.link.conn.closed:
            self.link.conn = self.parts.connect()
        if self.link.client is None:
            self.link.client = self.parts.service.client()

    def _pass(self) -> bool:
        """One turn over the vectorizers from where the last one ended: True when a batch was done."""
        p = self.parts
        assert self.link.conn is not None
        vectorizers = p.catalog.current(self.link.conn)
        self.wake.clear()
        worked = False
        for i in range(len(vectorizers)):
            vectorizer = vectorizers[(self.turn + i) % len(vectorizers)]
            if p.claims.held(vectorizer):
                continue
            unservable = vectorizer.schema_drift() or p.service.dimensions_refusal(vectorizer)
            if unservable is not None:
                # Not any row's fault: the rows stay queued, uncounted, the reason is shown, and the
                # vectorizer is read and tried again after its own backoff; the others go on.
                p.claims.hold_back(vectorizer, Unservable(unservable), quiet=True)
                p.status.block(self.link.conn, vectorizer, unservable)
                continue
            try:
                rows = p.claims.claim(self.link.conn, vectorizer, self.link.me)  # type: ignore[arg-type]
                if rows:
                    self.idle = False
                    self.turn = (self.turn + i + 1) % len(vectorizers)
                    self.last = vectorizer
                    p.batches.process(self.link, vectorizer, rows)
                    worked = True
            except ModelMismatch as exc:
                # The service serves another model than the one this vectorizer's vectors came from:
                # its rows stay queued, uncounted, until that model is served again or qvl.reembed
                # adopts the served one; the other vectorizers go on.
                p.claims.hold_model(vectorizer)
                p.status.block(self.link.conn, vectorizer, str(exc))
                continue
            except Blocked as exc:
                # The worker's role may not see or write these rows: they stay queued, the reason
                # is shown, and the vectorizer waits its own backoff before the next try.
                p.claims.hold_back(vectorizer, exc, quiet=True, reason="rights")
                p.status.block(self.link.conn, vectorizer, str(exc))
                continue
            p.status.block(self.link.conn, vectorizer, None)
            p.claims.cleared(vectorizer)
            if worked:
                break
        if self.read_only:
            log.info("the database takes writes again", extra={"lane": self.n})
            self.read_only = False
        return worked

    def _worked(self) -> None:
        if self.down_since is not None:
            log.info("the service is back", extra={"down_s": round(time.monotonic() - self.down_since, 1)})
            self.down_since = None
        self.parts.status.set_paused(self.link.conn, None)
        self.backoff.reset()

    def _service_down(self, exc: ServiceDown) -> None:
        delay = self.backoff.next()
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("the service cannot embed now; pausing (rows stay queued, no attempt is counted)",
                        extra={"lane": self.n, "reason": str(exc)})
        else:
            log.debug("service still unavailable", extra={"lane": self.n, "retry_in_s": round(delay, 2),
                                                           "reason": str(exc)})
        self.parts.status.set_paused(self.link.conn, str(exc))
        self.link.close_client()  # a fresh channel reconnects at once instead of after gRPC's backoff
        self._await_service(delay)

    def _await_service(self, delay: float) -> None:
        """Wait up to ``delay``, asking the service every second: back to work as soon as it can
        embed again (rows move within seconds of the service coming back, whatever the backoff)."""
        deadline = time.monotonic() + delay
        while not self.parts.stopping.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return
            if self.last is not None and self.parts.service.probe_once(self.last) is None:
                return

    def _read_only(self) -> None:
        # The node became a standby (a failover demoted it, or --dsn now reaches another):
        # nothing can be claimed or written here; the rows wait on the primary.
        if not self.read_only:
            log.warning(f"{READ_ONLY}; waiting", extra={"lane": self.n, "standby": True})
            self.read_only = True
        self.link.close_conn()
        self.parts.stopping.wait(STANDBY_RECHECK_S)
