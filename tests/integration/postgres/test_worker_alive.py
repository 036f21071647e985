"""``qvl worker --alive-file`` (``QVL_WORKER_ALIVE_FILE``; the Helm chart's liveness probe reads it):
the worker touches the file while its loops turn, and also while it waits for a database that is
not up yet (waiting is not being wedged: a restart would not help)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from connectors.postgres.installer import install
from tests.integration.postgres.conftest import WorkerProcess, new_database, wait_until
from tests.support.fake_service import FakeService
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.postgres]


def touched_again(path: Path, worker: WorkerProcess, timeout: float = 60.0) -> None:
    """Wait for the file, then for a newer touch of it; fail with the worker's log if it exits."""

    def alive_and(check: Callable[[], bool]) -> Callable[[], bool]:
        def probe() -> bool:
            assert worker.proc is not None and worker.proc.poll() is None, worker.log()
            return check()
        return probe

    wait_until(alive_and(path.exists), timeout)
    first = path.stat().st_mtime
    wait_until(alive_and(lambda: path.stat().st_mtime > first + 0.5), timeout)


def test_the_worker_touches_its_alive_file_while_it_runs(tmp_path: Path, pg_server: PostgresServer,
                                                         fake: FakeService,
                                                         worker_processes: Callable[..., WorkerProcess]) -> None:
    dsn = new_database(pg_server, "worker_alive")
    install(dsn)
    alive = tmp_path / "alive"
    worker = worker_processes(dsn, fake.target, "--alive-file", str(alive))
    touched_again(alive, worker)
    assert worker.stop() == 0


def test_a_worker_waiting_for_its_database_stays_alive(tmp_path: Path, fake: FakeService,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       worker_processes: Callable[..., WorkerProcess]) -> None:
    alive = tmp_path / "alive"
    monkeypatch.setenv("QVL_WORKER_ALIVE_FILE", str(alive))  # as the chart sets it
    nowhere = f"host=127.0.0.1 port={free_port()} dbname=app user=app"  # no server: no login to make
    worker = worker_processes(nowhere, fake.target)
    touched_again(alive, worker)
    assert "not reachable yet" in worker.log()
    assert worker.stop() == 0
