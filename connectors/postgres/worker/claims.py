"""Claims in turn: a vectorizer whose claims fail is held back, alone, while the others go on."""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

from connectors.postgres.vectorizers import Vectorizer
from connectors.postgres.worker.catalog import Catalog
from connectors.postgres.worker.connections import Blocked, connection_lost
from connectors.postgres.worker.holds import Holds
from connectors.postgres.worker.judge import Claimed
from connectors.postgres.worker.metrics import WorkerMetrics
from connectors.postgres.worker.store import BatchStore

log = logging.getLogger("qvl.worker")


class Claims:
    def __init__(self, store: BatchStore, holds: Holds, catalog: Catalog, metrics: WorkerMetrics | None = None) -> None:
        self.store, self.holds, self.catalog = store, holds, catalog
        self.metrics = metrics or WorkerMetrics()
        self._shown: dict[str, str] = {}  # vectorizer name -> the hold reason its gauge shows
        self._lock = threading.Lock()  # lanes share the gauges

    def held(self, vectorizer: Vectorizer) -> bool:
        return self.holds.held(vectorizer)

    def claim(self, conn: psycopg.Connection[Any], vectorizer: Vectorizer, me: str) -> list[Claimed]:
        """The store's claim, except that a failure other than a lost connection holds ``vectorizer`` back (and
        returns nothing): the lane goes on to the next vectorizer instead of retrying this one
        first for ever, and ``vectorizer`` is tried again after its own backoff."""
        try:
            rows = self.store.claim(conn, vectorizer, me)
        except (Blocked, psycopg.errors.ReadOnlySqlTransaction):
            # The worker's rights, or a database that takes no writes (a standby now): not this
            # vectorizer's fault; the lane says why (StatusBoard.block, or waits for writes to come back).
            raise
        except Exception as exc:
            if isinstance(exc, psycopg.Error) and connection_lost(conn, exc):
                raise
            self.hold_back(vectorizer, exc)
            return []
        hold = self.holds.release(vectorizer)
        if hold is not None:
            log.info(f"vectorizer {vectorizer.name}: claims work again", extra={"vectorizer": vectorizer.name,
                                                                       "failures": hold.failures})
        return rows

    def hold_model(self, vectorizer: Vectorizer) -> None:
        """Hold ``vectorizer`` back while the service serves another model than its vectors' (the status
        says why). A new definition (qvl.reembed cleared its model) is tried at once."""
        self.catalog.invalidate()
        self.holds.hold(vectorizer)
        self._show(vectorizer.name, "model")

    def cleared(self, vectorizer: Vectorizer) -> None:
        """``vectorizer``'s turn went through without a hold (its claim and batch, if any, worked): its hold
        gauge drops. Not at the claim itself: a batch refused for its model would make the gauge flicker."""
        with self._lock:  # checked and dropped at once: another lane may be holding it right now
            if vectorizer.name in self._shown and not self.holds.holding(vectorizer):
                self._set(vectorizer.name, None)

    def _show(self, name: str, reason: str) -> None:
        with self._lock:
            self._set(name, reason)

    def _set(self, name: str, reason: str | None) -> None:
        before = self._shown.pop(name, None)
        if before is not None and before != reason:
            self.metrics.held.labels(name, before).set(0)
        if reason is not None:
            self._shown[name] = reason
            self.metrics.held.labels(name, reason).set(1)

    def hold_back(self, vectorizer: Vectorizer, exc: Exception, *, quiet: bool = False, reason: str = "claims") -> None:
        """Hold ``vectorizer`` back on its own backoff (``reason``: "rights" for the worker's role, else "claims")."""
        self.catalog.invalidate()  # the table may have changed: the next try reads the definition again
        hold = self.holds.hold(vectorizer)
        self._show(vectorizer.name, reason)
        error = str(exc).strip() or type(exc).__name__
        extra = {"vectorizer": vectorizer.name, "error": error, "retry_in_s": round(hold.delay_s, 2),
                 "failures": hold.failures}
        if quiet or hold.failures > 1:
            log.debug(f"vectorizer {vectorizer.name}: claiming rows failed again: {error}", extra=extra)
        elif isinstance(exc, psycopg.Error):
            log.warning(f"vectorizer {vectorizer.name} ({vectorizer.source}): claiming rows failed: {error}; "
                        f"the other vectorizers go on, this one is tried again with backoff", extra=extra)
        else:
            log.exception(f"vectorizer {vectorizer.name} ({vectorizer.source}): claiming rows failed: {error}; "
                          f"the other vectorizers go on, this one is tried again with backoff", extra=extra)
