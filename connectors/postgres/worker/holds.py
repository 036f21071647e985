"""Vectorizers held back: one whose claims fail (the worker's role may not read its table, a
definition the table no longer matches) is skipped by every lane until its hold ends, on its own
backoff, so the other vectorizers go on. A new definition of it is tried at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from connectors.postgres.worker.backoff import Backoff


class Definition(Protocol):
    """A vectorizer's definition: its id, and equality that tells a changed definition."""

    @property
    def id(self) -> int: ...


@dataclass
class Hold:
    definition: Definition
    backoff: Backoff
    until: float = 0.0
    failures: int = 0
    delay_s: float = 0.0  # the last wait set


class Holds:
    def __init__(self, backoff: Callable[[], Backoff], clock: Callable[[], float] = time.monotonic) -> None:
        self._backoff, self._clock = backoff, clock
        self._holds: dict[int, Hold] = {}
        self._lock = threading.Lock()

    def held(self, definition: Definition) -> bool:
        with self._lock:
            hold = self._holds.get(definition.id)
            return hold is not None and hold.definition == definition and self._clock() < hold.until

    def hold(self, definition: Definition) -> Hold:
        """Hold ``definition`` back for its next backoff; a copy of its hold (``failures`` 1: the first)."""
        with self._lock:
            hold = self._holds.get(definition.id)
            if hold is None or hold.definition != definition:
                hold = self._holds[definition.id] = Hold(definition, self._backoff())
            hold.delay_s = hold.backoff.next()
            hold.until = self._clock() + hold.delay_s
            hold.failures += 1
            return Hold(hold.definition, hold.backoff, hold.until, hold.failures, hold.delay_s)

    def holding(self, definition: Definition) -> bool:
        """Whether ``definition``'s vectorizer has a hold, over or not (ended only by ``release``)."""
        with self._lock:
            return definition.id in self._holds

    def release(self, definition: Definition) -> Hold | None:
        """End the hold of ``definition``'s vectorizer (its claims work again): the hold it had, if any."""
        with self._lock:
            return self._holds.pop(definition.id, None)
