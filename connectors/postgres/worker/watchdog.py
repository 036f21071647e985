"""A stream that makes no progress is abandoned (until the client handles stalls itself)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from connectors.client import Client

log = logging.getLogger("qvl.worker")


class Watchdog:
    """Closes the client's channel (cancelling its call) when a stream makes no progress.

    A gRPC stream opened just as the service went away was seen to wait forever; no lane may.
    """

    def __init__(self, client: Client, stall_s: float, reachable: Callable[[], bool] | None = None,
                 check_s: float = 5.0) -> None:
        self.client, self.stall_s = client, stall_s
        self.reachable = reachable  # asks the service on a fresh channel
        self.check_s = check_s
        self.last = time.monotonic()
        self.checked = self.last
        self.fired = False
        self.unreachable = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="qvl-watchdog", daemon=True)
        self._thread.start()

    def progress(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.stall_s / 4)):
            now = time.monotonic()
            quiet = now - self.last
            if quiet > self.stall_s:
                self.fired = True
                log.warning("the service stream made no progress; abandoning it",
                            extra={"stall_s": self.stall_s})
                self.client.close()
                return
            # A stream opened as the service went away can wait for nothing: when the service does
            # not answer on a new connection either, give the rows back now, not after stall_s.
            if self.reachable is not None and quiet > self.check_s and now - self.checked > self.check_s:
                self.checked = now
                if not self.reachable() and not self._done.is_set():
                    self.fired = self.unreachable = True
                    log.warning("the service went away while a stream was waiting; abandoning it")
                    self.client.close()
                    return
