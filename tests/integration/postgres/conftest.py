"""Real Postgres (pgvector + plpython3u) with qvl installed, the real service, workers."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from connectors.client import Client
from connectors.postgres.installer import install
from connectors.postgres.worker import Worker, WorkerSettings
from qvl_devtools.launchers.postgres import worker_dsn as launcher_worker_dsn
from qvl_devtools.tiny_model import build_checkpoint
from tests.media_factory import image_bytes
from tests.support.fake_service import FakeService
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

ROOT = Path(__file__).parents[3]


def worker_dsn(dsn: str) -> str:
    """What a worker connects with: a DSN of the installing superuser becomes one of a login granted
    qvl_worker and nothing else (the worker refuses a superuser; docs/postgres.md, "The worker's role").
    A test's own role is kept."""
    return launcher_worker_dsn(dsn) if "user=postgres" in dsn.split() else dsn


def git_history(commit: str, *args: str) -> bytes:
    """``git -C <project> *args`` on the project's history, for a test that installs what ``commit``
    shipped (upgrade tests); the test skips in a clone without that history (a shallow one)."""
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"needs the git history of commit {commit} (a full clone)")


def new_database(pg_server: PostgresServer, hint: str) -> str:
    name = "q_" + re.sub(r"\W+", "_", hint.lower())[:40] + "_" + uuid.uuid4().hex[:6]
    return pg_server.create_database(name)


@pytest.fixture
def qvl_db(pg_server: PostgresServer, service: ServiceProcess, request: pytest.FixtureRequest) -> str:
    """A fresh database with qvl installed and pointed at the shared service."""
    dsn = new_database(pg_server, request.node.name)
    install(dsn, service_url=service.http_url)
    return dsn


@pytest.fixture
def conn(qvl_db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(qvl_db, autocommit=True) as c:
        yield c


def images(n: int, offset: int = 0) -> list[bytes]:
    return [image_bytes("PNG", (64, 48), seed=offset + i) for i in range(n)]


def vec(text: str | None) -> np.ndarray:
    assert text is not None
    return np.array([float(x) for x in text.strip("[]").split(",")], dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def drain(dsn: str, service: str, **kwargs: Any) -> Worker:
    """Run a worker in this process until every queue is empty."""
    settings = WorkerSettings(dsn=worker_dsn(dsn), service=service, exit_when_idle=True, poll_s=0.5, log_every_s=60,
                              backoff_cap_s=2.0, **kwargs)
    worker = Worker(settings)
    worker.run()
    return worker


@pytest.fixture
def fake() -> Iterator[FakeService]:
    """A gRPC service that answers as the test tells it (good vectors by default)."""
    with FakeService() as svc:
        yield svc


@contextlib.contextmanager
def running(dsn: str, target: str, **kwargs: Any) -> Iterator[Worker]:
    """A worker in a thread of this process for the duration of the block."""
    defaults: dict[str, Any] = dict(poll_s=0.2, log_every_s=60, backoff_base_s=0.2, backoff_cap_s=1.0,
                                    retry_delay_s=0.4, concurrency=1, batch=8, stall_s=10)
    worker = Worker(WorkerSettings(dsn=worker_dsn(dsn), service=target, **{**defaults, **kwargs}))
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(30)
        assert not thread.is_alive()


def role_dsn(dsn: str, role: str) -> str:
    return dsn.replace("user=postgres", f"user={role}")


def wait_until(check: Callable[[], bool], timeout: float = 60.0, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(every)


class WorkerProcess:
    """``qvl worker`` as a real subprocess (to SIGKILL it, run two, or outlive a service outage)."""

    def __init__(self, dsn: str, service: str, *args: str, name: str = "qvl-worker-test") -> None:
        self.name = name
        self.command = [sys.executable, "-m", "qvl_cli", "--log-format", "json", "worker",
                        "--dsn", worker_dsn(dsn), "--service", service, "--application-name", name, "--poll", "0.5",
                        "--max-backoff", "1", "--log-every", "1", "--stall-timeout", "5", *args]
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keeps each phase's report on the test item, so a fixture's teardown knows the test failed."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def worker_processes(request: pytest.FixtureRequest) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def make(*args: Any, **kwargs: Any) -> WorkerProcess:
        w = WorkerProcess(*args, **kwargs).start()
        started.append(w)
        return w

    yield make
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:  # a failed test shows what its workers said (and if one died)
        for w in started:
            print(f"--- {w.name} (exit {w.proc.poll() if w.proc else None}) ---\n{w.log()[-8000:]}")
    for w in started:
        if w.proc is not None and w.proc.poll() is None:
            w.kill()


def stuck_report(conn: psycopg.Connection[Any], vid: int, *workers: WorkerProcess) -> str:
    """What to read when rows stay queued: who holds the queue's rows, what each worker's sessions wait
    on, and each worker's threads (SIGUSR1: the worker's faulthandler dump) and log tail."""
    for w in workers:
        if w.proc is not None and w.proc.poll() is None:
            w.signal(signal.SIGUSR1)
    time.sleep(1)
    claims = conn.execute(f"SELECT claimed_by, count(*), max(attempts), min(claimed_until) - now() "
                          f"FROM qvl.queue_{vid} GROUP BY 1").fetchall()
    sessions = conn.execute("SELECT application_name, state, wait_event_type, wait_event, left(query, 160) "
                            "FROM pg_stat_activity WHERE application_name LIKE 'qvl-worker%' ORDER BY 1").fetchall()
    logs = "\n".join(f"--- {w.name} (exit {w.proc.poll() if w.proc else None}) ---\n{w.log()[-8000:]}"
                     for w in workers)
    return f"rows stay queued\nclaims: {claims}\nsessions: {sessions}\n{logs}"


def write_log(conn: psycopg.Connection[Any], table: str, column: str = "embedding") -> None:
    """Record every write of the vector column (who wrote it), to prove nothing is embedded twice."""
    conn.execute(f"""
        CREATE TABLE {table}_writes (id int, app text, at timestamptz DEFAULT clock_timestamp());
        CREATE FUNCTION {table}_log_write() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO {table}_writes (id, app) VALUES (NEW.id, current_setting('application_name'));
            RETURN NULL;
        END $$;
        -- The worker's write fires it with the worker's rights.
        GRANT INSERT ON {table}_writes TO qvl_worker;
        CREATE TRIGGER {table}_log_write AFTER UPDATE OF {column} ON {table}
            FOR EACH ROW EXECUTE FUNCTION {table}_log_write();
    """)


@pytest.fixture(scope="module")
def new_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A blue/green test's new model: the tiny shape with another seed, under the same directory name
    (the model name each service reports)."""
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("new-model") / "tiny-qwen3-vl", seed=1)
    with ServiceProcess(embedding_model=str(checkpoint), reranker_model=str(checkpoint)) as svc:
        yield svc


def served(svc: ServiceProcess) -> str:
    """The fingerprint of the embedding model ``svc`` serves."""
    with Client(svc.grpc_target) as client:
        return next(m.fingerprint for m in client.info().models if m.task == "embed")
