"""LISTEN for queued rows and changed vectorizers: lanes wake at once instead of at their next poll."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from connectors.postgres.worker.backoff import Backoff
from connectors.postgres.worker.startup import STANDBY_RECHECK_S

log = logging.getLogger("qvl.worker")


def listen(connect: Callable[[], psycopg.Connection[Any]], backoff: Backoff, stopping: threading.Event, *,
           poll_s: float, on_config: Callable[[], None], wake_all: Callable[[], None]) -> None:
    while not stopping.is_set():
        try:
            with connect() as conn:
                conn.execute("LISTEN qvl_queue")
                conn.execute("LISTEN qvl_config")
                backoff.reset()
                wake_all()  # rows may have come while we were not listening
                while not stopping.is_set():
                    for note in conn.notifies(timeout=0.5):
                        if note.channel == "qvl_config":
                            on_config()
                        wake_all()
        except psycopg.OperationalError as exc:
            log.warning("listen connection lost; polling every %.0f s until it is back", poll_s,
                        extra={"error": str(exc).strip()})
            stopping.wait(backoff.next())
        except psycopg.errors.ReadOnlySqlTransaction:  # LISTEN on a node that became a standby
            stopping.wait(STANDBY_RECHECK_S)
