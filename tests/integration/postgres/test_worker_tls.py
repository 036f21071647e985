"""The worker reaches a TLS-only service (gRPC verified against the CA file it is given)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from connectors.client import Client
from connectors.postgres.installer import install
from tests.integration.postgres.conftest import WorkerProcess, cosines, drain, new_database, vec
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess
from tests.support.tls import TlsFiles

pytestmark = [pytest.mark.postgres, pytest.mark.service]


def test_worker_embeds_through_a_tls_service(tls_service: ServiceProcess, tls_files: TlsFiles,
                                             pg_server: PostgresServer) -> None:
    cert = tls_files.cert
    with contextlib.nullcontext(tls_service) as svc:
        dsn = new_database(pg_server, "worker_tls")
        install(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            conn.execute("INSERT INTO notes SELECT i, 'secret note ' || i FROM generate_series(1, 12) i")
            conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => ARRAY['body'], dimensions => 64)")
        target = f"localhost:{svc.grpc_port}"
        drain(dsn, target, ca_file=str(cert))
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows: list[Any] = conn.execute("SELECT body, embedding::text FROM notes ORDER BY id").fetchall()
        with Client(target, root_certificates=cert.read_bytes()) as client:
            expected = client.embed([r[0] for r in rows])
        assert cosines(expected, [vec(r[1]) for r in rows]).min() > 0.9999


def test_worker_verifies_against_the_system_roots_with_only_qvl_service_tls(
        tls_service: ServiceProcess, tls_files: TlsFiles, pg_server: PostgresServer,
        monkeypatch: pytest.MonkeyPatch, worker_processes: Callable[..., WorkerProcess]) -> None:
    """What the Helm chart gives a worker with a plain kubernetes.io/tls Secret: QVL_SERVICE_TLS=true
    and no CA file. gRPC then checks the server against its default roots; here the test's CA is
    made the default (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH) as a cluster's CA would be in the image."""
    cert = tls_files.cert
    with contextlib.nullcontext(tls_service) as svc:
        dsn = new_database(pg_server, "worker_tls_roots")
        install(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            conn.execute("INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 6) i")
            conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => ARRAY['body'], dimensions => 64)")
        monkeypatch.setenv("QVL_SERVICE_TLS", "true")
        monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", str(cert))
        monkeypatch.delenv("QVL_SERVICE_CA_FILE", raising=False)
        worker = worker_processes(dsn, f"localhost:{svc.grpc_port}", "--exit-when-idle")
        assert worker.proc is not None and worker.proc.wait(timeout=120) == 0, worker.log()
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM notes WHERE embedding IS NOT NULL").fetchone() == (6,)
