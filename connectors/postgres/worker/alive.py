"""The alive file: liveness for a probe that cannot ask the database (the Helm chart's)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("qvl.worker")


class AliveFile:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self._ok = True  # the last touch worked (a failure is said once)

    def touch(self) -> None:
        """The file's age says when the loop that calls this last turned."""
        if not self.path:
            return
        try:
            Path(self.path).touch()
            self._ok = True
        except OSError as exc:
            if self._ok:
                log.warning("cannot touch the alive file: a liveness probe will restart this worker",
                            extra={"path": self.path, "error": str(exc)})
            self._ok = False
