"""Progress of long jobs (ingests, backfills, benchmarks, JSON-lines runs) as rate-limited log lines."""

from __future__ import annotations

import logging
import time


class Progress:
    """Rate-limited progress lines on stderr for long jobs (a line at most every ``every`` seconds)."""

    def __init__(self, what: str, total: int | None = None, every: float = 2.0,
                 logger: logging.Logger | None = None) -> None:
        self.what, self.total, self.every = what, total, every
        self.logger = logger or logging.getLogger("qvl.progress")
        self.done = 0
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._emit(now)

    def finish(self) -> None:
        self._emit(time.monotonic(), final=True)

    def _emit(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        self.logger.info(
            f"{self.what}: {self.done}{'/' + str(self.total) if self.total else ''}"
            f"{' done' if final else ''}",
            extra={"done": self.done, "total": self.total, "rate_per_s": round(self.done / elapsed, 2),
                   "elapsed_s": round(elapsed, 2)},
        )
