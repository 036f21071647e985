"""What the throwaway local servers (qvl serve, Postgres, Weaviate) share: a log and `with`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any, Self


def remove_detached(path: Path) -> None:
    """Delete a stopped server's data directory in an ``rm -rf`` that runs on after the caller
    returns (and exits): a test session's Postgres leaves gigabytes in tens of thousands of files,
    and deleting them took 5-15 s at the end of each pytest worker (measured), for nothing anyone
    waits on. ``sh`` puts ``rm`` in the background and exits at once, so no child is left to reap."""
    subprocess.run(["sh", "-c", 'rm -rf -- "$1" </dev/null >/dev/null 2>&1 &', "sh", str(path)],
                   check=True, start_new_session=True)


class LocalProcess:
    log_path: Path

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> Any:
        raise NotImplementedError

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, RuntimeError):
            return "(no server log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class LocalDataServer(LocalProcess):
    """A local server whose data lives in ``base_dir`` until ``stop(remove=True)``."""

    base_dir: Path | None

    def stop(self, *, remove: bool = True) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """The same server on the same data and ports."""
        self.stop(remove=False)
        self.start()

    def _base(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError("the server has not been started")
        return self.base_dir
