"""What the throwaway local servers (qvl serve, Postgres, Weaviate) share: a log and `with`."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, Self


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
