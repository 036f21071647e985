"""The vectorizers this worker serves, as ``qvl.vectorizer`` defines them now.

Read again every ``refresh_s``, and on the next use after ``invalidate()`` (a qvl_config
notification, a table that changed or vanished under a lane, a failed claim or write).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from connectors.postgres.vectorizers import Vectorizer, load_vectorizers

REFRESH_S = 30.0


class Catalog:
    def __init__(self, names: tuple[str, ...], refresh_s: float = REFRESH_S,
                 clock: Callable[[], float] = time.monotonic, *, shadows: bool = False) -> None:
        self.names = names  # empty: all
        self.shadows = shadows  # the blue/green shadows being filled instead (qvl worker --shadow)
        self._refresh_s, self._clock = refresh_s, clock
        self._vectorizers: list[Vectorizer] = []
        self._loaded_at = 0.0
        self._stale = True  # set from any thread without the lock; cleared under it before a read
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        self._stale = True

    def current(self, conn: psycopg.Connection[Any]) -> list[Vectorizer]:
        with self._lock:
            if self._stale or self._clock() - self._loaded_at > self._refresh_s:
                # Cleared before the read: an invalidate() during it makes the next use read again.
                self._stale = False
                try:
                    self._vectorizers = load_vectorizers(conn, self.names, shadows=self.shadows)
                except BaseException:
                    self._stale = True
                    raise
                self._loaded_at = self._clock()
            return self._vectorizers

    def known(self) -> list[Vectorizer]:
        """The vectorizers as last read (no database call)."""
        return list(self._vectorizers)

    def reload(self, conn: psycopg.Connection[Any], vectorizer: Vectorizer) -> Vectorizer | None:
        """``vectorizer`` as the catalog defines it now (None: dropped); the lanes read theirs again too."""
        self.invalidate()
        fresh = load_vectorizers(conn, self.names, shadows=self.shadows)
        return next((v for v in fresh if v.id == vectorizer.id), None)
